"""A rollout's progress as the store keeps it (`Record`, `detail`), and its states. Pure: the store's row
is read back by `record_from`."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from fnctl.manifest.model import Strategy


class State(StrEnum):
    PROGRESSING = "progressing"
    PAUSED = "paused"  # at a gate: waits for `fnctl promote`
    COMPLETED = "completed"  # the winner takes 100%; the others stay warm at 0% until the scale-down
    ABORTED = "aborted"  # all traffic back on stable


ACTIVE = (State.PROGRESSING.value, State.PAUSED.value)


@dataclass(frozen=True)
class Record:
    """A rollout's progress, as the store keeps it (`detail` holds all but the first six fields)."""

    id: int
    function: str
    stable: int
    canary: int
    strategy: Strategy
    state: State
    step: int  # the stage under way (== len(stages) once they are all done)
    started_at: float
    step_started: float
    weights: dict[int, int]
    variants: dict[str, int] = field(default_factory=dict)  # abTest: variant name → revision
    failures: int = 0  # consecutive failed measurements of the analysis under way
    next_measure: float | None = None
    handled: int = 0  # the last request event acted on
    winner: int | None = None
    scale_down_at: float | None = None
    scaled_down: bool = False
    reason: str = ""

    @property
    def done(self) -> bool:
        """Nothing left to do: aborted, or completed with the others stopped."""
        return self.state is State.ABORTED or (self.state is State.COMPLETED and self.scaled_down)

    def detail(self) -> dict[str, Any]:
        """The store's form of the progress (rollouts.detail), read back by `record_from`. Its keys are frozen:
        a store keeps them across upgrades, so a change needs a store migration (tests/golden/store/)."""
        return {
            "startedAt": self.started_at,
            "stepStarted": self.step_started,
            "weights": {str(r): w for r, w in self.weights.items()},
            "variants": self.variants,
            "failures": self.failures,
            "nextMeasure": self.next_measure,
            "handled": self.handled,
            "winner": self.winner,
            "scaleDownAt": self.scale_down_at,
            "scaledDown": self.scaled_down,
            "reason": self.reason,
        }


def record_from(
    id: int,
    function: str,
    stable: int | None,
    canary: int,
    strategy: str,
    step: int,
    state: str,
    detail: Mapping[str, Any],
    started_at: float,
) -> Record:
    return Record(
        id,
        function,
        stable if stable is not None else canary,
        canary,
        Strategy(strategy),
        State(state),
        step,
        float(detail.get("startedAt", started_at)),
        float(detail.get("stepStarted", started_at)),
        {int(r): int(w) for r, w in (detail.get("weights") or {}).items()},
        {str(k): int(v) for k, v in (detail.get("variants") or {}).items()},
        int(detail.get("failures", 0)),
        detail.get("nextMeasure"),
        int(detail.get("handled", 0)),
        detail.get("winner"),
        detail.get("scaleDownAt"),
        bool(detail.get("scaledDown", False)),
        str(detail.get("reason", "")),
    )


# ---- transitions ---------------------------------------------------------------------------------
