"""The effective-sandbox report (docs/architecture.md, "The report"): what was asked for, what is
really in force.

``enforced.X`` is true only when layer X was requested and every control in it is enforced on
this run; anything requested but missing is a *downgrade* (fatal under ``on_unavailable:
fail``); anything accepted but worth knowing is a *note* (never fatal).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Any, Literal

from .errors import SandboxUnavailable

__all__ = ["LAYERS", "LayerState", "Downgrade", "Note", "EffectiveSandbox", "SandboxUnavailable"]

LAYERS = ("filesystem", "network", "resources", "privilege", "env", "seccomp")
LayerStateName = Literal["enforced", "degraded", "not-requested"]


@dataclass
class LayerState:
    state: LayerStateName
    mechanism: str | None = None
    detail: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"state": self.state, "mechanism": self.mechanism, **self.detail}


@dataclass(frozen=True)
class Downgrade:
    layer: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"layer": self.layer, "reason": self.reason}


@dataclass(frozen=True)
class Note:
    layer: str
    note: str

    def to_dict(self) -> dict[str, str]:
        return {"layer": self.layer, "note": self.note}


@dataclass
class EffectiveSandbox:
    scope: Literal["kernel", "cell"]
    requested: dict[str, Any]
    layers: dict[str, LayerState]
    downgrades: list[Downgrade] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    platform: str = sys.platform
    outcome: dict[str, Any] | None = None

    @property
    def enforced(self) -> dict[str, bool]:
        return {name: layer.state == "enforced" for name, layer in self.layers.items()}

    def to_dict(self) -> dict[str, Any]:
        out = {
            "version": 1,
            "scope": self.scope,
            "platform": "linux" if self.platform.startswith("linux") else self.platform,
            "requested": self.requested,
            "enforced": self.enforced,
            "layers": {name: layer.to_dict() for name, layer in self.layers.items()},
            "downgrades": [d.to_dict() for d in self.downgrades],
            "notes": [n.to_dict() for n in self.notes],
        }
        if self.outcome is not None:
            out["outcome"] = self.outcome
        return out

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), sort_keys=True)
