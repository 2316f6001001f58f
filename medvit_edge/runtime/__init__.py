"""What an integrator embeds: the ``Classifier`` (onnxruntime or OpenVINO), the preprocessing
spec, the self-describing metadata, the decision policy and the integrity checks of model files.

Imports nothing outside ``medvit_edge.runtime`` but the foundation modules (``errors``,
``files``, ``system``, ``timing``, ``options``, ``lazy``): a test enforces it."""
