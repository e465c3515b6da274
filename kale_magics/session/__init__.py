"""Kernel state: one notebook in one kernel (:class:`NotebookSession`) and the cells it ran."""
