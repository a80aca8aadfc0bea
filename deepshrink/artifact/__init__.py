"""Pickle-free model artifacts: ``save(model, path)`` and ``load(path)``."""

from deepshrink.artifact.model_io import SaveReport, StoragePolicy, TensorReport, encode_model, load, save

__all__ = ["SaveReport", "StoragePolicy", "TensorReport", "encode_model", "load", "save"]
