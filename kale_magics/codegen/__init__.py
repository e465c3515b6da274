"""Code generation: the KFP DSL module and its compiled IR YAML."""
