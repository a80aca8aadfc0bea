"""Low-rank factorization, compact-block substitution, parameter sharing and recovery.

Every substitution is recorded in the model's arch record (``transforms``) and replayed by
``replay_transforms`` when an artifact is loaded, so factorized models save and load pickle-free.
"""

from deepshrink.factorize.blocks import (
    ChannelShuffle,
    PointwiseConv2d,
    max_multiplier,
    to_depthwise_separable,
    to_grouped_pointwise,
)
from deepshrink.factorize.deploy import channels_last, find_conv_bn_pairs, fold_bn
from deepshrink.factorize.lowrank import (
    FactorSpec,
    choose_svd_rank,
    choose_tucker_ranks,
    factorize,
    factorize_layer,
    rank_for_energy,
    svd_params,
)
from deepshrink.factorize.recover import kd_loss, recover, recover_features
from deepshrink.factorize.sensitivity import ScanResult, sensitivity_scan
from deepshrink.factorize.sharing import HashedLinear, Tied, hash_layer, share_codebook, tie_layers
from deepshrink.factorize.transforms import replay_transforms, transforms_of

__all__ = [
    "ChannelShuffle",
    "FactorSpec",
    "HashedLinear",
    "PointwiseConv2d",
    "ScanResult",
    "Tied",
    "channels_last",
    "choose_svd_rank",
    "choose_tucker_ranks",
    "factorize",
    "factorize_layer",
    "find_conv_bn_pairs",
    "fold_bn",
    "hash_layer",
    "kd_loss",
    "max_multiplier",
    "rank_for_energy",
    "recover",
    "recover_features",
    "replay_transforms",
    "sensitivity_scan",
    "share_codebook",
    "svd_params",
    "tie_layers",
    "to_depthwise_separable",
    "to_grouped_pointwise",
    "transforms_of",
]
