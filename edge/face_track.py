"""One face followed across frames, so liveness evidence is never pooled from two faces.

The door cares about the person in front of it: a track starts on the largest face and stays on
that face while it continues, even when another face is as large. It breaks when
that face jumps further than a head moves between two frames, changes size abruptly, or is gone for
a while. A photo swapped in front of a live face (or a cut in a replayed video) therefore starts a
new track, and the evidence gathered on the old one is dropped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

import numpy as np

from edge.liveness import Box, LivenessSettings, Sample, eye_openness, pair_motion, yaw_ratio


@dataclass(frozen=True)
class TrackLimits:
    """When consecutive detections stop being the same face."""

    max_jump: float = 0.5  # centre moved more than this many box widths between two frames
    max_scale_change: float = 1.35  # box width grew or shrank by more than this factor
    max_gap_s: float = 1.0  # no face for longer than this
    keep_s: float = 10.0  # samples older than this are forgotten


def continues(previous: Box, current: Box, limits: TrackLimits) -> bool:
    """Whether `current` can be the same face as `previous` one frame later."""
    px, py, pw, ph = previous
    cx, cy, cw, ch = current
    if pw <= 0 or cw <= 0:
        return False
    jump = float(np.hypot((cx + cw / 2) - (px + pw / 2), (cy + ch / 2) - (py + ph / 2)))
    ratio = cw / pw
    return jump <= limits.max_jump * pw and 1 / limits.max_scale_change <= ratio <= limits.max_scale_change


class FaceTrack:
    """The samples of one face, oldest first, with each new frame compared to a few earlier ones."""

    def __init__(self, track_id: int, limits: TrackLimits, pair_gaps_s: tuple[float, ...]) -> None:
        self.id = track_id
        self.limits = limits
        self.pair_gaps_s = pair_gaps_s
        self.samples: deque[Sample] = deque()

    @property
    def last(self) -> Sample | None:
        return self.samples[-1] if self.samples else None

    def add(self, t: float, box: Box, name: str | None, points: np.ndarray, eyelids: np.ndarray | None) -> Sample:
        """Measure a frame's mesh and compare it with the frames `pair_gaps_s` earlier."""
        pairs = []
        used: set[int] = set()
        for gap in self.pair_gaps_s:
            earlier = self._nearest(t - gap)
            if earlier is None or id(earlier) in used or t - earlier.t < gap / 2:
                continue
            used.add(id(earlier))
            pairs.append(pair_motion(earlier.points, points, t - earlier.t))
        openness = eye_openness(points, eyelids) if eyelids is not None else float("nan")
        sample = Sample(t, box, name, points[:, :2].astype(np.float32), openness, yaw_ratio(points), tuple(pairs))
        self.samples.append(sample)
        while self.samples and t - self.samples[0].t > self.limits.keep_s:
            self.samples.popleft()
        return sample

    def _nearest(self, t: float) -> Sample | None:
        best = None
        for s in self.samples:
            if best is None or abs(s.t - t) < abs(best.t - t):
                best = s
        return best


class FaceTracker:
    """Keeps the current track of the largest face; starts a new one whenever continuity breaks."""

    def __init__(self, limits: TrackLimits | None = None, pair_gaps_s: tuple[float, ...] | None = None) -> None:
        self.limits = limits or TrackLimits()
        self.pair_gaps_s = pair_gaps_s if pair_gaps_s is not None else LivenessSettings().pair_gaps_s
        self.track: FaceTrack | None = None
        self._next_id = 1

    def pick(self, t: float, boxes: list[Box]) -> int | None:
        """Which of a frame's faces (largest first) to follow: the one continuing the track, else the largest.

        Staying on the tracked face when a second, similar-sized face is in view keeps the evidence
        of one person together instead of flipping between the two."""
        if not boxes:
            return None
        last = self.track.last if self.track is not None else None
        if last is not None and t - last.t <= self.limits.max_gap_s:
            lx, ly, lw, lh = last.box
            candidates = [(float(np.hypot(x + w / 2 - lx - lw / 2, y + h / 2 - ly - lh / 2)), i)
                          for i, (x, y, w, h) in enumerate(boxes) if continues(last.box, boxes[i], self.limits)]
            if candidates:
                return min(candidates)[1]
        return 0

    def observe(self, t: float, box: Box | None) -> FaceTrack | None:
        """The track `box` belongs to at time `t` (a new one when it broke); None when no face."""
        track = self.track
        if box is None:
            if track is not None and track.last is not None and t - track.last.t > self.limits.max_gap_s:
                self.track = None
            return None
        last = track.last if track is not None else None
        if (track is None or last is None or t - last.t > self.limits.max_gap_s
                or not continues(last.box, box, self.limits)):
            track = FaceTrack(self._next_id, self.limits, self.pair_gaps_s)
            self._next_id += 1
            self.track = track
        return track
