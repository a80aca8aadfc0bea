"""Layer dropping and distillation recovery for BERT-family sentence encoders.

``drop_layers(encoder, keep)`` keeps the listed transformer layers (config updated). ``distill`` then
trains the student to match the fp32 teacher on unlabeled sentences with

    loss = sum_i MSE(h_s[i], h_t[map(i)]) + w_emb * (1 - cos(e_s, e_t)) + w_att * sum_i KL(A_t[map(i)] || A_s[i])

where ``h`` are hidden states after each kept layer, ``e`` the pooled sentence embeddings and ``A`` the
attention probabilities (TinyBERT / MiniLM-style; attention terms need equal head counts and eager
attention). ``map(i)`` is the teacher layer the student's i-th layer came from.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from deepshrink.core.devices import handed_back
from deepshrink.core.errors import ConfigError, ModelError
from deepshrink.core.progress import track


def drop_layers(encoder: nn.Module, keep: Sequence[int]) -> list[int]:
    """Keep only the transformer layers ``keep`` (sorted, distinct), in place; returns them."""
    from deepshrink.transformers.model import bert_layers

    layers = bert_layers(encoder)
    idx = sorted(set(int(i) for i in keep))
    if not idx or idx[0] < 0 or idx[-1] >= len(layers):
        raise ConfigError(f"layers to keep must be distinct indices in 0..{len(layers) - 1}, got {list(keep)}")
    bert = getattr(encoder, "bert", encoder)
    bert.encoder.layer = nn.ModuleList([layers[i] for i in idx])
    for new_i, layer in enumerate(bert.encoder.layer):
        att = layer.attention.self
        if hasattr(att, "layer_idx"):
            att.layer_idx = new_i
    bert.config.num_hidden_layers = len(idx)
    return idx


@dataclass(frozen=True)
class DistillConfig:
    """Settings of a distillation run (defaults: a short recovery on CPU)."""

    steps: int = 200
    batch_size: int = 32
    lr: float = 5e-5
    max_length: int = 128
    hidden_weight: float = 1.0
    embedding_weight: float = 10.0
    attention_weight: float = 0.0
    seed: int = 0

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size", "max_length"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ConfigError(f"distill {name} must be a positive integer, got {v!r}")
        if not self.lr > 0:
            raise ConfigError(f"distill lr must be > 0, got {self.lr}")
        for name in ("hidden_weight", "embedding_weight", "attention_weight"):
            if not getattr(self, name) >= 0:
                raise ConfigError(f"distill {name} must be >= 0, got {getattr(self, name)}")


def _masked_mse(a: torch.Tensor, b: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    m = mask.unsqueeze(-1).to(a.dtype)
    return ((a - b) ** 2 * m).sum() / (m.sum() * a.shape[-1]).clamp(min=1)


def distill(student: nn.Module, teacher: nn.Module, tokenizer: object, sentences: list[str],
            layer_map: Sequence[int] | None = None, config: DistillConfig | None = None) -> list[float]:
    """Train ``student`` (in place) towards ``teacher`` on ``sentences``; returns the loss per step.

    ``layer_map[i]`` is the teacher layer matched by student layer ``i`` (default: the teacher's last
    layers, evenly spaced). The teacher is frozen; both run on ``default_device()``, and the student is returned
    to the device it was on.
    """
    from deepshrink.train.trainer import default_device
    from deepshrink.transformers.model import bert_layers

    cfg = config or DistillConfig()
    if len(sentences) < 2:
        raise ConfigError("distillation needs at least 2 sentences")
    s_layers, t_layers = bert_layers(student), bert_layers(teacher)
    if layer_map is None:
        n_s, n_t = len(s_layers), len(t_layers)
        layer_map = [round((i + 1) * n_t / n_s) - 1 for i in range(n_s)]
    layer_map = [int(i) for i in layer_map]
    if len(layer_map) != len(s_layers) or not all(0 <= i < len(t_layers) for i in layer_map):
        raise ConfigError(f"layer_map needs {len(s_layers)} teacher indices in 0..{len(t_layers) - 1}, got {layer_map}")
    if not any(p.requires_grad for p in student.parameters()):
        raise ModelError(f"{type(student).__name__} has no trainable parameters (int8 Linear layers hold codes, "
                         "not weights): distill the float model, then quantize it")
    if cfg.attention_weight > 0:
        for who, model in (("student", student), ("teacher", teacher)):
            impl = getattr(getattr(getattr(model, "bert", None), "config", None), "_attn_implementation", None)
            if impl not in (None, "eager"):
                raise ConfigError(f"attention distillation reads attention maps, which the {who}'s {impl!r} "
                                  "attention does not return: load both with attn_implementation='eager'")
        for i, j in enumerate(layer_map):
            hs = s_layers[i].attention.self.query.out_features // s_layers[i].attention.self.attention_head_size
            ht = t_layers[j].attention.self.query.out_features // t_layers[j].attention.self.attention_head_size
            if hs != ht:
                raise ModelError(f"attention distillation needs equal head counts: student layer {i} has {hs}, "
                                 f"teacher layer {j} {ht}")
    with handed_back(student):
        return _distill_steps(student, teacher, tokenizer, sentences, layer_map, cfg, default_device())


def _distill_steps(student: nn.Module, teacher: nn.Module, tokenizer: object, sentences: list[str],
                   layer_map: list[int], cfg: DistillConfig, device: torch.device) -> list[float]:
    from deepshrink.transformers.model import mean_pool, tokenize

    teacher = copy.deepcopy(teacher).to(device).eval()
    student.to(device).train()
    for module in student.modules():  # no dropout: recovery, not regularisation
        if isinstance(module, nn.Dropout):
            module.p = 0.0
    opt = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=cfg.lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / max(1, cfg.steps // 10))
                                              * max(0.0, 1 - s / cfg.steps))
    rng = random.Random(cfg.seed)
    want_att = cfg.attention_weight > 0
    losses = []
    for _ in track(range(cfg.steps), "distilling", total=cfg.steps):
        batch = rng.sample(sentences, min(cfg.batch_size, len(sentences)))
        ids, mask = (t.to(device) for t in tokenize(tokenizer, batch, cfg.max_length))
        with torch.no_grad():
            t_out = teacher.hidden_states(ids, mask, output_attentions=want_att)
        s_out = student.hidden_states(ids, mask, output_attentions=want_att)
        loss = cfg.hidden_weight * sum(_masked_mse(s_out.hidden_states[i + 1], t_out.hidden_states[j + 1], mask)
                                       for i, j in enumerate(layer_map))
        e_s = mean_pool(s_out.last_hidden_state, mask, True)
        e_t = mean_pool(t_out.last_hidden_state, mask, True)
        loss = loss + cfg.embedding_weight * (1 - (e_s * e_t).sum(-1)).mean()
        if want_att:
            for i, j in enumerate(layer_map):
                a_s, a_t = s_out.attentions[i], t_out.attentions[j]
                loss = loss + cfg.attention_weight * nn.functional.kl_div(
                    a_s.clamp(min=1e-9).log(), a_t, reduction="batchmean") / a_s.shape[1]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        losses.append(float(loss.detach()))
    student.eval()
    return losses
