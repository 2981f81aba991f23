"""Turning per-frame recognitions into door decisions: pure logic, no clock, no I/O.

One frame is weak evidence (a blurred frame can match the wrong person), so a person must be
recognized in K of the last N analysed frames, all within T seconds, before anything happens.
After an unlock (or a denial) that person is ignored for a cooldown, so one visit gives one event.
Unknown faces never unlock; they give a rate-limited "unknown" event after the same voting.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dtime
from typing import Literal

from edge.config import WEEKDAYS, DecisionConfig, ScheduleWindow, parse_time

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class Observation:
    """One face in one analysed frame: who it is (None = not enrolled) and how close."""

    name: str | None
    distance: float
    box: Box


@dataclass(frozen=True)
class Decision:
    """What to do about a person: 'unlock', 'denied' (enrolled but outside schedule) or 'unknown'."""

    action: Literal["unlock", "denied", "unknown"]
    name: str | None
    distance: float
    box: Box
    votes: int
    frames: int
    required: int


@dataclass(frozen=True)
class Window:
    """A weekly access window; `end` None means midnight, end <= start runs past midnight."""

    days: frozenset[int]
    start: dtime
    end: dtime | None

    @classmethod
    def from_config(cls, window: ScheduleWindow, key: str = "schedule") -> Window:
        start = parse_time(window.start, f"{key}.start")
        assert start is not None
        return cls(frozenset(WEEKDAYS.index(d) for d in window.days), start, parse_time(window.end, f"{key}.end"))

    def allows(self, when: datetime) -> bool:
        """True when the local time `when` falls in this window."""
        t = when.time().replace(tzinfo=None)
        day = when.weekday()
        if self.end is None or self.end > self.start:
            return day in self.days and t >= self.start and (self.end is None or t < self.end)
        # Past midnight: the evening part on a listed day, the morning part on the day after.
        if day in self.days and t >= self.start:
            return True
        yesterday = (when - timedelta(days=1)).weekday()
        return yesterday in self.days and t < self.end


@dataclass
class _Frame:
    at: float
    best: dict[str, Observation]  # enrolled name -> closest face of that person in the frame
    unknown: Observation | None  # the largest unknown face


@dataclass
class DecisionEngine:
    """K-of-N-within-T voting, per-person cooldown, schedules, unknown rate limit."""

    k: int = 2
    n: int = 3
    window_s: float = 2.0
    cooldown_s: float = 10.0
    unknown_interval_s: float = 30.0
    default_access: Literal["always", "never"] = "always"
    schedules: dict[str, list[Window]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not 1 <= self.k <= self.n:
            raise ValueError(f"need 1 <= k <= n, got k={self.k} n={self.n}")
        self._frames: deque[_Frame] = deque(maxlen=self.n)
        self._last_action: dict[str, float] = {}
        self._last_unknown: float | None = None

    @classmethod
    def from_config(cls, config: DecisionConfig) -> DecisionEngine:
        schedules = {
            person: [Window.from_config(w, f"decision.schedules.{person}[{i}]") for i, w in enumerate(windows)]
            for person, windows in config.schedules.items()
        }
        return cls(config.votes_k, config.votes_n, config.window_s, config.cooldown_s, config.unknown_interval_s,
                   config.default_access, schedules)

    def allowed(self, name: str, when: datetime) -> bool:
        """Whether the schedule lets `name` in at local time `when`."""
        windows = self.schedules.get(name)
        if windows is None:
            return self.default_access == "always"
        return any(w.allows(when) for w in windows)

    def reset(self) -> None:
        """Forget the votes (the gallery changed, so old names may mean something else)."""
        self._frames.clear()

    def forget(self, name: str) -> None:
        """Lift `name`'s cooldown: an unlock decision that was held back (liveness) never happened."""
        self._last_action.pop(name, None)

    def update(self, now: float, when: datetime, observations: list[Observation]) -> list[Decision]:
        """Add one analysed frame (monotonic time `now`, local wall time `when`); return the decisions."""
        best: dict[str, Observation] = {}
        unknown: Observation | None = None
        for obs in observations:
            if obs.name is None:
                if unknown is None or obs.box[2] * obs.box[3] > unknown.box[2] * unknown.box[3]:
                    unknown = obs
            elif obs.name not in best or obs.distance < best[obs.name].distance:
                best[obs.name] = obs
        self._frames.append(_Frame(now, best, unknown))
        recent = [f for f in self._frames if now - f.at <= self.window_s]
        decisions = []
        for name, obs in sorted(best.items(), key=lambda item: item[1].distance):
            votes = sum(1 for f in recent if name in f.best)
            if votes < self.k:
                continue
            last = self._last_action.get(name)
            if last is not None and now - last < self.cooldown_s:
                continue
            self._last_action[name] = now
            action: Literal["unlock", "denied"] = "unlock" if self.allowed(name, when) else "denied"
            decisions.append(Decision(action, name, obs.distance, obs.box, votes, len(recent), self.k))
        if unknown is not None:
            votes = sum(1 for f in recent if f.unknown is not None)
            due = self._last_unknown is None or now - self._last_unknown >= self.unknown_interval_s
            if votes >= self.k and due:
                self._last_unknown = now
                decisions.append(Decision("unknown", None, unknown.distance, unknown.box, votes, len(recent), self.k))
        return decisions
