"""The names of the run arguments a step registering models (``--register``) gets (``codegen.components``,
``codegen.pipeline``, ``runner.registry``); a module of their own so ``codegen.naming`` can refuse
them as names without importing the components."""

#: The pipeline parameter (and component argument) holding the Model Registry's address for
#: steps that ``--register`` models: the notebook's ``--model-registry`` by default, given at run
#: time by the run target otherwise (``runner.registry``); never a token.
REGISTRY_PARAMETER = "kale_model_registry"
#: Component arguments of a registering step: KFP's run ID and run name placeholders.
RUN_ID_ARGUMENT = "kale_run_id"
RUN_NAME_ARGUMENT = "kale_run_name"
REGISTRATION_ARGUMENTS = (REGISTRY_PARAMETER, RUN_ID_ARGUMENT, RUN_NAME_ARGUMENT)
