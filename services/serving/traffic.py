"""Which model answers a request: production, or the canary for a deterministic share of keys;
and the shadow that every answered request is mirrored to.

* The canary gets a request when `bucket(key) < weight`, where `bucket` maps the request
  key to [0, 1) by a stable hash (blake2b, not Python's salted `hash`), so one caller
  (one key) always gets the same variant, in every serving process, across restarts.
  Raising the weight only moves keys from production to the canary, never back.
* The canary and the shadow are aliases like production (`canary`, `shadow`), each with
  its own `ModelManager`; an alias that points nowhere, or at the version production
  already serves, is no variant at all. Moving an alias back is a rollback: the
  manager swaps to the old version (from its cache when it was served recently).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from .models import ModelManager
from .onnx_model import LoadedModel

PRODUCTION = "production"
CANARY = "canary"
SHADOW = "shadow"

_SCALE = float(1 << 64)


def bucket(key: str) -> float:
    """A stable position in [0, 1) for a request key.

    >>> bucket("caller-7") == bucket("caller-7")
    True
    >>> 0.0 <= bucket("") < 1.0
    True
    """
    digest = hashlib.blake2b(key.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / _SCALE


@dataclass(frozen=True, slots=True)
class Route:
    variant: str
    model: LoadedModel


class Router:
    def __init__(self, production: ModelManager, canary: ModelManager | None = None,
                 shadow: ModelManager | None = None, canary_weight: float = 0.0) -> None:
        if not 0.0 <= canary_weight <= 1.0:
            raise ValueError(f"the canary weight is a share of requests, 0..1; not {canary_weight}")
        self.production = production
        self.canary = canary
        self.shadow = shadow
        self.canary_weight = canary_weight

    @property
    def current(self) -> LoadedModel | None:
        """The production model (None: nothing loaded yet)."""
        return self.production.current

    def canary_model(self) -> LoadedModel | None:
        """The canary, when it is one: loaded, weighted, and not the version production serves."""
        if self.canary is None or self.canary_weight <= 0.0:
            return None
        canary, production = self.canary.current, self.production.current
        if canary is None or production is None or canary.version == production.version:
            return None
        return canary

    def route(self, key: str) -> Route | None:
        """The variant and model for a request with this key (None: no model loaded yet).

        The references are read once here; the request keeps them to its end, whatever swaps meanwhile."""
        production = self.production.current
        if production is None:
            return None
        canary = self.canary_model()
        if canary is not None and bucket(key) < self.canary_weight:
            return Route(CANARY, canary)
        return Route(PRODUCTION, production)

    def by_version(self, version: str) -> Route | None:
        """The variant serving an explicitly asked version (production first), if any."""
        production = self.production.current
        if production is not None and version == str(production.version):
            return Route(PRODUCTION, production)
        canary = self.canary_model()
        if canary is not None and version == str(canary.version):
            return Route(CANARY, canary)
        return None

    def shadow_for(self, answered: LoadedModel) -> LoadedModel | None:
        """The model to mirror a request to, unless it is the version that just answered."""
        shadow = self.shadow.current if self.shadow is not None else None
        if shadow is None or shadow.version == answered.version:
            return None
        return shadow

    def served_versions(self) -> list[LoadedModel]:
        """Production first, then the canary if there is one."""
        models = [m for m in (self.production.current,) if m is not None]
        canary = self.canary_model()
        if canary is not None:
            models.append(canary)
        return models
