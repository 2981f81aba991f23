"""Liveness for the daemon and the attack bench: face mesh on the tracked face, checks per person.

Every analysed frame with a face feeds the mesh of the largest face into its track; an identity
decision then opens a `LivenessCheck` for that person on that track, and each later frame moves
the check on until it says live (unlock), spoof (refuse) or asks for a head turn. When the track
breaks, the open check is dropped: evidence never carries over to another face.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np

from edge.config import LivenessConfig
from edge.face_track import FaceTracker, TrackLimits
from edge.liveness import Box, Direction, LivenessCheck, LivenessSettings, Sample, Verdict


class FaceLike(Protocol):
    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    name: str | None


class LandmarkerLike(Protocol):
    def mesh(self, image: np.ndarray, box: Box, eyes: np.ndarray) -> Any: ...


@dataclass(frozen=True)
class Outcome:
    """A check that moved: newly challenged, live or spoof (pending checks report nothing)."""

    person: str
    track_id: int
    verdict: Verdict
    box: Box


def random_direction(rng: random.Random) -> Callable[[], Direction]:
    """Challenge directions drawn from `rng` (the daemon seeds it from the OS, the bench from its seed)."""
    return lambda: rng.choice(("left", "right"))


class LivenessMonitor:
    """Owns the tracker and the open checks; the daemon asks it before every unlock."""

    def __init__(self, landmarker: LandmarkerLike, mode: Literal["passive", "challenge"],
                 settings: LivenessSettings | None = None, *, passive_s: float = 2.0, challenge_s: float = 4.0,
                 window_s: float = 2.0, limits: TrackLimits | None = None,
                 choose_direction: Callable[[], Direction] | None = None) -> None:
        self.landmarker = landmarker
        self.mode = mode
        self.settings = settings or LivenessSettings()
        self.passive_s = passive_s
        self.challenge_s = challenge_s
        self.window_s = window_s
        self.tracker = FaceTracker(limits, self.settings.pair_gaps_s)
        self.choose_direction = choose_direction or random_direction(random.SystemRandom())
        self.checks: dict[str, tuple[int, LivenessCheck]] = {}
        self.last_sample: Sample | None = None
        self.dropped: list[tuple[str, str]] = []  # (person, why) of checks dropped since the last step

    @classmethod
    def from_config(cls, config: LivenessConfig, landmarker: LandmarkerLike,
                    choose_direction: Callable[[], Direction] | None = None) -> LivenessMonitor:
        """The monitor as `liveness.*` configures it (mode must not be 'off')."""
        if config.mode == "off":
            raise ValueError("liveness.mode is off: no monitor to build")
        settings = LivenessSettings(min_motion=config.min_motion, live_parallax=config.live_parallax,
                                    flat_motion=config.flat_motion, flat_parallax=config.flat_parallax,
                                    challenge_yaw=config.challenge_yaw, challenge_parallax=config.challenge_parallax)
        return cls(landmarker, config.mode, settings, passive_s=config.passive_s, challenge_s=config.challenge_s,
                   window_s=config.window_s, choose_direction=choose_direction)

    def observe(self, now: float, image: np.ndarray, faces: Sequence[FaceLike]) -> Sample | None:
        """Add the tracked face of a frame (else its largest; faces come largest first) to its track."""
        boxes = [tuple(float(v) for v in f.box) for f in faces]
        chosen = self.tracker.pick(now, boxes)  # type: ignore[arg-type]
        face = faces[chosen] if chosen is not None else None
        track = self.tracker.observe(now, boxes[chosen] if chosen is not None else None)  # type: ignore[arg-type]
        self._drop_checks_off(track.id if track is not None else None)
        self.last_sample = None
        if face is None or track is None:
            return None
        box = boxes[chosen]  # type: ignore[index]
        mesh = self.landmarker.mesh(image, box, np.asarray(face.landmarks)[:2])
        if mesh is None:
            return None
        self.last_sample = track.add(now, box, getattr(face, "name", None), mesh.points, mesh.eyelids)
        return self.last_sample

    def _drop_checks_off(self, track_id: int | None) -> None:
        for person, (check_track, _) in list(self.checks.items()):
            if check_track != track_id:
                del self.checks[person]
                self.dropped.append((person, "the face left or the track broke"))

    def begin(self, person: str, now: float) -> bool:
        """Open a check for `person` if they are the tracked face in this frame; False otherwise."""
        sample = self.last_sample
        track = self.tracker.track
        if sample is None or track is None or sample.name != person:
            return False
        if person not in self.checks:
            check = LivenessCheck(person, now, self.mode, self.settings, self.passive_s, self.challenge_s,
                                  self.window_s, self.choose_direction)
            self.checks[person] = (track.id, check)
        return True

    def step(self, now: float) -> list[Outcome]:
        """Advance every open check by this frame; finished checks are closed."""
        outcomes = []
        track = self.tracker.track
        for person, (track_id, check) in list(self.checks.items()):
            if track is None or track.id != track_id:
                continue
            was_challenged = check.challenged_at is not None
            verdict = check.step(now, list(track.samples))
            box = track.last.box if track.last is not None else (0.0, 0.0, 0.0, 0.0)
            if verdict.status in ("live", "spoof"):
                del self.checks[person]
                outcomes.append(Outcome(person, track_id, verdict, box))
            elif verdict.status == "challenge" and not was_challenged:
                outcomes.append(Outcome(person, track_id, verdict, box))
        return outcomes

    def take_dropped(self) -> list[tuple[str, str]]:
        dropped, self.dropped = self.dropped, []
        return dropped

    def reset(self) -> None:
        """Forget all checks (the gallery or config changed)."""
        for person in self.checks:
            self.dropped.append((person, "reset"))
        self.checks.clear()
