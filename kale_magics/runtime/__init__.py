"""Code that runs inside a pipeline step: imports only the stdlib (cloudpickle, dill, numpy, pandas and pyarrow lazily, when a value needs them)."""
