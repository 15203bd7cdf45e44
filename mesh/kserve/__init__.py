"""KServe resources on the mesh: InferenceService, ServingRuntime, ClusterServingRuntime.

``resources`` parses and validates manifests, ``translate`` turns one into the
registry writes that realise it (a pure function, shared with a future Kubernetes
controller), ``placement`` says which runtimes a ServingRuntime lets host a model,
and ``status`` maps the mesh's state back to KServe's status shape.
"""
