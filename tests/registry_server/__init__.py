"""A stand-in Kubeflow Model Registry: the REST API subset the ``model-registry`` client uses."""
