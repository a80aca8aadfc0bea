"""Per-layer sensitivity: validation accuracy of the model with one layer pruned, shared or factorized.

``scan(model, score)`` gives, for every weight layer alone, the score versus kept fraction
(magnitude pruning), versus weight bits (k-means sharing, as Deep Compression stores them) and,
optionally, versus rank (SVD, reusing ``deepshrink.factorize.sensitivity_scan``). No retraining:
these curves rank layers by how much compression they tolerate, which is what ``deepshrink auto``
needs to decide where to spend an accuracy budget.
"""

from deepshrink.sensitivity.scan import (
    DEFAULT_BITS,
    DEFAULT_KEEPS,
    LayerCurves,
    SensitivityResult,
    load_sensitivity,
    scan,
    write_sensitivity,
)

__all__ = ["DEFAULT_BITS", "DEFAULT_KEEPS", "LayerCurves", "SensitivityResult", "load_sensitivity", "scan",
           "write_sensitivity"]
