"""deepshrink: make trained PyTorch models smaller and faster, for real.

``deepshrink.save(model, path)`` writes a pickle-free artifact atomically and
``deepshrink.load(path)`` rebuilds a plain ``nn.Module`` from it.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = ["__version__", "compress", "load", "save"]

from deepshrink.api import compress  # noqa: E402  (the one-call API: model + recipe -> Result)


def save(model: Any, path: Any, policy: Any = None, info: Any = None) -> Any:
    """Write ``model`` as a pickle-free artifact (see ``deepshrink.artifact.save``)."""
    from deepshrink.artifact import save as _save

    return _save(model, path, policy, info)


def load(path: Any, model: Any = None) -> Any:
    """Rebuild a plain ``nn.Module`` from an artifact (see ``deepshrink.artifact.load``); a model of your own
    loads into ``model``, a fresh instance you build (no code named in a file is ever imported)."""
    from deepshrink.artifact import load as _load

    return _load(path, model)
