"""Label-preserving image augmentation applied to training batches: random shifts and horizontal flips.

Retraining a pruned or quantized model on a few thousand images overfits them; moving each image by a
pixel or two (zero fill, the "pad and random crop" of CIFAR training) gives the model new views of the
same digits. The spec is a comma-separated list: ``"shift:2"`` (move each image by up to 2 pixels along
each axis), ``"hflip"`` (mirror each image with probability 1/2; not for digits or text), or both,
``"shift:4,hflip"``.

Batches are augmented on their own device, with offsets drawn from a seeded generator, so a run
repeats exactly. Inputs must be images, ``[N, H, W]`` or ``[N, C, H, W]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from deepshrink.core.errors import ConfigError, DataError

KINDS = ("shift", "hflip")
MAX_SHIFT = 64


@dataclass(frozen=True)
class Augment:
    """A parsed augmentation spec: ``shift`` pixels (0 = none) and ``hflip``."""

    shift: int = 0
    hflip: bool = False

    def check(self, shape: tuple[int, ...], dtype: torch.dtype) -> None:
        """DataError unless a batch of ``shape`` / ``dtype`` is float images big enough for the shift."""
        if len(shape) not in (3, 4) or not dtype.is_floating_point:
            raise DataError(f"augment {self.spec!r} works on float image batches [N, H, W] or [N, C, H, W]; "
                            f"the training inputs are {tuple(shape)} ({dtype})")
        if self.shift and min(shape[-2:]) < 2 * self.shift + 1:
            raise DataError(f"augment {self.spec!r} moves images by up to {self.shift} pixels, which needs at "
                            f"least {2 * self.shift + 1} x {2 * self.shift + 1} pixels; the training images are "
                            f"{shape[-2]} x {shape[-1]}")

    def __call__(self, x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """A new batch: each image moved and/or mirrored at random (``x`` is not changed)."""
        self.check(tuple(x.shape), x.dtype)
        if x.shape[0] == 0:
            return x
        if self.shift:
            x = random_shift(x, self.shift, generator)
        if self.hflip:
            flip = torch.rand(x.shape[0], generator=generator) < 0.5
            x = torch.where(flip.to(x.device).view(-1, *([1] * (x.dim() - 1))), x.flip(-1), x)
        return x

    @property
    def spec(self) -> str:
        parts = ([f"shift:{self.shift}"] if self.shift else []) + (["hflip"] if self.hflip else [])
        return ",".join(parts)


def parse_augment(spec: str) -> Augment:
    """``"shift:2"``, ``"hflip"``, ``"shift:4,hflip"`` as an :class:`Augment` (ConfigError naming the bad part)."""
    if not isinstance(spec, str) or not spec.strip():
        raise ConfigError(f"augment must be a spec like 'shift:2' or 'shift:4,hflip', got {spec!r}")
    shift, hflip = 0, False
    for part in (p.strip() for p in spec.split(",")):
        kind, _, arg = part.partition(":")
        if kind not in KINDS:
            raise ConfigError(f"augment: unknown augmentation {kind!r} in {spec!r} (known: shift:N, hflip)")
        if kind == "hflip":
            if arg or hflip:
                raise ConfigError(f"augment: 'hflip' takes no value and appears once, in {spec!r}")
            hflip = True
            continue
        if shift or not (arg.isascii() and arg.isdigit()) or not 1 <= int(arg) <= MAX_SHIFT:
            raise ConfigError(f"augment: 'shift' needs a pixel count 1..{MAX_SHIFT} given once, e.g. 'shift:2', "
                              f"in {spec!r}")
        shift = int(arg)
    return Augment(shift=shift, hflip=hflip)


def random_shift(x: torch.Tensor, pixels: int, generator: torch.Generator) -> torch.Tensor:
    """Each image of ``x`` moved by its own offsets in ``-pixels..pixels`` (rows and columns), zeros filling in.

    One gather per axis over the zero-padded batch: ``out[i, j] = x[i - dy, j - dx]``.
    """
    n, h, w = x.shape[0], x.shape[-2], x.shape[-1]
    offsets = torch.randint(-pixels, pixels + 1, (2, n), generator=generator)
    images = x.reshape(n, -1, h, w)
    padded = F.pad(images, (pixels, pixels, pixels, pixels))
    channels, width = images.shape[1], w + 2 * pixels
    rows = (torch.arange(h) + pixels - offsets[0, :, None]).to(x.device)  # [n, h]
    cols = (torch.arange(w) + pixels - offsets[1, :, None]).to(x.device)  # [n, w]
    out = padded.gather(2, rows[:, None, :, None].expand(n, channels, h, width))
    out = out.gather(3, cols[:, None, None, :].expand(n, channels, h, w))
    return out.reshape(x.shape)
