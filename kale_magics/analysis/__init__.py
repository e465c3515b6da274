"""Static analysis: names each cell reads and writes, and the pipeline plan."""
