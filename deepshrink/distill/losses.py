"""Distillation losses as plain functions of tensors, usable from any training loop.

- ``kd_loss``: Hinton et al. 2015, ``alpha * T^2 * KL(p_T(teacher) || p_T(student)) + (1 - alpha) * CE``,
  or with ``soft="logit_mse"`` the logit regression of Ba & Caruana 2014 in place of the KL term.
- ``logit_matching_loss``: ``||z - v||^2 / (2C)`` between student and teacher logits (pre-softmax).
- ``feature_loss``: FitNets-style hint loss (MSE) or cosine distance between matched features.
- ``attention_transfer_loss``: Zagoruyko & Komodakis 2017, squared distance of normalized spatial maps.
- ``hidden_state_loss`` / ``attention_matrix_loss``: TinyBERT (MSE) and MiniLM (KL) transformer losses.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F

from deepshrink.core.errors import ConfigError, ModelError


def _check_temperature_alpha(temperature: float, alpha: float) -> None:
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not (math.isfinite(temperature) and temperature > 0):
        raise ConfigError(f"kd_loss: temperature must be a finite number > 0, got {temperature!r}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"kd_loss: alpha must be in [0, 1], got {alpha!r}")


def _same_shape(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    if a.shape != b.shape:
        raise ModelError(f"{what}: student shape {tuple(a.shape)} does not match teacher shape {tuple(b.shape)}")


def soft_target_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor,
                     temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(t/T) || softmax(s/T))`` averaged over samples (all leading dims are samples).

    The ``T^2`` keeps the gradient magnitude of the soft term roughly independent of ``T``
    (its gradients scale as ``1/T^2``), so ``alpha`` means the same at every temperature.
    """
    _same_shape(student_logits, teacher_logits, "kd_loss logits")
    classes = student_logits.shape[-1]
    s = F.log_softmax(student_logits.reshape(-1, classes) / temperature, dim=-1)
    t = F.log_softmax(teacher_logits.detach().reshape(-1, classes).to(s.dtype) / temperature, dim=-1)
    return F.kl_div(s, t, reduction="batchmean", log_target=True) * (temperature * temperature)


def logit_matching_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
    """``sum_c (z_c - v_c)^2 / (2C)`` per sample (``C`` classes), averaged over samples (leading dims).

    Regression on the teacher's logits (Ba & Caruana 2014). The ``1/(2C)`` scale makes it the
    high-temperature limit of ``T^2 * KL`` for zero-mean logits (Hinton et al. 2015), so ``alpha``
    weighs it like the KL term. Logits keep the teacher's margins where its softmax is saturated.
    """
    _same_shape(student_logits, teacher_logits, "logit matching")
    classes = student_logits.shape[-1]
    diff = student_logits.reshape(-1, classes) - teacher_logits.detach().reshape(-1, classes).to(
        student_logits.dtype)
    return diff.pow(2).sum(-1).mean() / (2 * classes)


SOFT_LOSSES = ("kl", "logit_mse")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor | None,
            temperature: float, alpha: float, soft: str = "kl", label_smoothing: float = 0.0) -> torch.Tensor:
    """Hinton's distillation loss: ``alpha * T^2 * KL(soft teacher || soft student) + (1 - alpha) * CE``.

    ``soft="logit_mse"`` uses ``logit_matching_loss`` as the teacher term instead (``temperature`` is then
    unused). ``targets`` may be None (no labels: pure soft-target loss, as if ``alpha == 1``). The teacher
    logits are detached, so gradients reach only the student. ``label_smoothing`` applies to the hard term
    (the training config's, as in plain training).
    """
    _check_temperature_alpha(temperature, alpha)
    if soft == "kl":
        soft_term = soft_target_loss(student_logits, teacher_logits, temperature)
    elif soft == "logit_mse":
        soft_term = logit_matching_loss(student_logits, teacher_logits)
    else:
        raise ConfigError(f"kd_loss: soft must be one of {', '.join(SOFT_LOSSES)}, got {soft!r}")
    if targets is None or alpha == 1.0:
        return soft_term
    classes = student_logits.shape[-1]
    hard = F.cross_entropy(student_logits.reshape(-1, classes), targets.reshape(-1), label_smoothing=label_smoothing)
    return alpha * soft_term + (1.0 - alpha) * hard


def feature_loss(student: torch.Tensor, teacher: torch.Tensor, kind: str = "mse") -> torch.Tensor:
    """Distance between an (adapted) student feature and the teacher's: ``mse`` or ``cosine``.

    ``cosine`` is ``1 - cos`` between the per-sample flattened features, averaged over the batch.
    """
    _same_shape(student, teacher, f"{kind} feature loss")
    teacher = teacher.detach().to(student.dtype)
    if kind == "mse":
        return F.mse_loss(student, teacher)
    if kind == "cosine":
        return (1.0 - F.cosine_similarity(student.flatten(1), teacher.flatten(1), dim=1, eps=1e-8)).mean()
    raise ConfigError(f"feature loss must be 'mse' or 'cosine', got {kind!r}")


def attention_map(features: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Zagoruyko's activation-based spatial attention: ``mean_c |A_c|^p`` flattened and L2-normalized.

    ``features`` is ``N x C x *spatial`` (Conv1d/2d/3d activations); returns ``N x prod(spatial)``.
    """
    if features.dim() < 3:
        raise ModelError(f"attention transfer needs N x C x spatial activations, got shape {tuple(features.shape)}")
    return F.normalize(features.abs().pow(p).mean(1).flatten(1), dim=1)


def _pool_to(maps: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    pool = {1: F.adaptive_avg_pool1d, 2: F.adaptive_avg_pool2d, 3: F.adaptive_avg_pool3d}[len(size)]
    return pool(maps.unsqueeze(1), size).squeeze(1)


def attention_transfer_loss(student: torch.Tensor, teacher: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """``mean((Q_s/|Q_s| - Q_t/|Q_t|)^2)`` of the attention maps (Zagoruyko & Komodakis 2017).

    Channel counts may differ (the maps pool over channels). When the spatial sizes differ, the larger
    map is average-pooled to the smaller. The paper weights the sum over layer pairs by beta/2 = 500.
    """
    if student.dim() != teacher.dim() or student.shape[0] != teacher.shape[0] or student.dim() < 3:
        raise ModelError(f"attention transfer: student activations {tuple(student.shape)} and teacher "
                         f"activations {tuple(teacher.shape)} must both be N x C x spatial with the same N")
    s_maps = student.abs().pow(p).mean(1)
    t_maps = teacher.detach().to(student.dtype).abs().pow(p).mean(1)
    s_size, t_size = tuple(s_maps.shape[1:]), tuple(t_maps.shape[1:])
    if s_size != t_size:
        small = tuple(min(a, b) for a, b in zip(s_size, t_size))
        s_maps = _pool_to(s_maps, small) if s_size != small else s_maps
        t_maps = _pool_to(t_maps, small) if t_size != small else t_maps
    diff = F.normalize(s_maps.flatten(1), dim=1) - F.normalize(t_maps.flatten(1), dim=1)
    return diff.pow(2).mean()


def hidden_state_loss(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor,
                      projection: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """TinyBERT hidden-state (or embedding) loss: ``MSE(H_s W_h, H_t)`` over ``N x L x d`` states.

    ``projection`` (e.g. an ``nn.Linear(d_s, d_t)``) maps the student width to the teacher's.
    """
    h = projection(student_hidden) if projection is not None else student_hidden
    _same_shape(h, teacher_hidden, "hidden_state_loss (project the student with a Linear when widths differ)")
    return F.mse_loss(h, teacher_hidden.detach().to(h.dtype))


def attention_matrix_loss(student_attn: torch.Tensor, teacher_attn: torch.Tensor, *, kind: str = "mse",
                          mask: torch.Tensor | None = None) -> torch.Tensor:
    """Attention distillation over ``N x heads x L x L`` matrices.

    ``kind="mse"`` (TinyBERT): MSE of the attention *scores* (pre-softmax); masked scores (-inf or very
    negative) count as 0. ``kind="kl"`` (MiniLM): ``KL(teacher || student)`` of each query's attention
    *distribution* (post-softmax), averaged over heads and queries. ``mask`` (``N x L``, 1 = real token)
    restricts both to real query/key pairs.
    """
    _same_shape(student_attn, teacher_attn, "attention_matrix_loss (heads and sequence length must match)")
    if student_attn.dim() != 4:
        raise ModelError(f"attention_matrix_loss: expected N x heads x L x L, got {tuple(student_attn.shape)}")
    teacher_attn = teacher_attn.detach().to(student_attn.dtype)
    n, heads, length, _ = student_attn.shape
    if mask is not None:
        if tuple(mask.shape) != (n, length):
            raise ModelError(f"attention_matrix_loss: mask shape {tuple(mask.shape)} must be {(n, length)}")
        keep = mask.to(device=student_attn.device, dtype=torch.bool)
    else:
        keep = torch.ones(n, length, dtype=torch.bool, device=student_attn.device)
    pair = (keep[:, None, :, None] & keep[:, None, None, :]).to(student_attn.dtype).expand_as(student_attn)
    queries = keep[:, None, :].to(student_attn.dtype).expand(n, heads, length)
    if kind == "mse":
        s = torch.where(torch.isfinite(student_attn) & (student_attn > -1e4), student_attn, 0.0)
        t = torch.where(torch.isfinite(teacher_attn) & (teacher_attn > -1e4), teacher_attn, 0.0)
        return ((s - t).pow(2) * pair).sum() / pair.sum().clamp_min(1.0)
    if kind == "kl":
        eps = 1e-12
        kl = teacher_attn * (torch.log(teacher_attn.clamp_min(eps)) - torch.log(student_attn.clamp_min(eps)))
        return (kl * pair).sum() / queries.sum().clamp_min(1.0)
    raise ConfigError(f"attention_matrix_loss: kind must be 'mse' or 'kl', got {kind!r}")
