"""Running a model over many inputs: the engine (decode, batch, classify: ``engine``), the typed
prediction rows and their writers, and the ``infer`` command with its options (overlays, Ray,
Parquet)."""
