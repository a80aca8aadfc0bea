"""Budget-driven automatic compression: per-layer kept fractions and weight bits chosen from sensitivity
data, pruned, retrained, shared, fine-tuned and stored as Deep Compression, within a wall-time budget."""

from deepshrink.auto.config import AutoConfig
from deepshrink.auto.run import auto_compress, pareto_front, split_train
from deepshrink.auto.search import AutoResult

__all__ = ["AutoConfig", "AutoResult", "auto_compress", "pareto_front", "split_train"]
