"""Pipeline runners (local through kfp.local) and the run status model."""
