"""The outcome of scoring one input: a probability of fake and a label, or why the input could not be used."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal


@dataclass(frozen=True)
class Detection:
    """One input's outcome: a probability and label, or the reason it could not be used."""

    name: str
    fake_probability: float | None = None
    label: Literal["fake", "real"] | None = None
    crops: int = 0  # backbone passes averaged (1 for the centre crop)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "fake_probability": self.fake_probability,
            "label": self.label,
            "crops": self.crops,
            "error": self.error,
        }
