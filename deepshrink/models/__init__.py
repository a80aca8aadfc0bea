"""Model zoo with a registry: ``deepshrink.models.create(name)``."""

from deepshrink.models import compact, vision  # noqa: F401  (register their models)
from deepshrink.models.zoo import MODELS, arch_spec, create


def available() -> list[str]:
    return MODELS.names()


__all__ = ["MODELS", "arch_spec", "available", "create"]
