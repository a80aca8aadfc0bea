"""Pruning: masks, unstructured criteria/scopes/schedules, N:M, and structured channel removal."""

# Load the ``unstructured`` / ``structured`` submodules first so that the functions of the same name,
# bound below, stay the package attributes (``deepshrink.prune.unstructured(model, ...)``).
from deepshrink.prune import structured as _structured_module  # noqa: F401
from deepshrink.prune import unstructured as _unstructured_module  # noqa: F401
from deepshrink.prune.engine import PruneReport, nm_mask, sensitivity_scan, unstructured
from deepshrink.prune.importance import CRITERIA, Importance, get_importance
from deepshrink.prune.masks import Mask, get_mask, remove_masks, set_mask
from deepshrink.prune.schedules import SCHEDULES, Schedule, get_schedule
from deepshrink.prune.structured import StructuredReport, structured

__all__ = ["CRITERIA", "SCHEDULES", "Importance", "Mask", "PruneReport", "Schedule", "StructuredReport",
           "get_importance", "get_mask", "get_schedule", "nm_mask", "remove_masks", "sensitivity_scan",
           "set_mask", "structured", "unstructured"]
