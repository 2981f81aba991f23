"""Presentation-attack checks over one face track: pure math on face-mesh points, no models, no clock.

Three kinds of evidence, each computed from the 468-point face mesh (edge/landmarks.py):

- **Flat or 3D**: between two frames of a moving head, the rigid upper-face points of a real face
  move with parallax (the nose tip is nearer the camera than the eye corners), so no single
  homography maps one frame's points onto the other's. A print or a screen is a plane: one
  homography explains all its motion, however it is turned, tilted or shaken. Pairs whose motion
  a 2D similarity already explains (a print slid or rotated in its plane, a still head) carry no
  evidence either way.
- **Blink**: the eyelid opening, normalized by the eye-to-nose distance so that foreshortening of a
  tilted print cancels, drops and recovers within a fraction of a second while the rest of the
  face stays rigid. A print flicked to fake a blink changes the whole face, not just the eyelids.
- **Challenge**: the head yaw (nose position between the cheeks) follows a randomly chosen
  direction within a time limit. A still print cannot; a turned print moves like a plane.

None of these stops a video of the enrolled person replayed on a screen that happens to move
like a head (docs/liveness.md); the challenge makes a replay much harder, not impossible.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

from edge.landmarks import (
    CHEEK_LEFT,
    CHEEK_RIGHT,
    EYE_LEFT_INNER,
    EYE_LEFT_OUTER,
    EYE_RIGHT_INNER,
    EYE_RIGHT_OUTER,
    NOSE_TIP,
    UPPER_FACE,
)

Direction = Literal["left", "right"]
Box = tuple[float, float, float, float]

# A person who turns toward their own left shows the camera (which does not mirror) a nose moving
# toward larger image x; this is the sign of the yaw change each prompt asks for.
YAW_SIGN: dict[str, int] = {"left": +1, "right": -1}
# tan(yaw) ~ nose offset / (YAW_DEPTH_RATIO * half face width) for an average adult head; it only
# turns the ratio into approximate degrees for people reading logs, the checks use the same scale.
YAW_DEPTH_RATIO = 0.75
EYE_CORNERS = ((EYE_LEFT_OUTER, EYE_LEFT_INNER), (EYE_RIGHT_INNER, EYE_RIGHT_OUTER))
# No head moves half an eye distance beyond a similarity between two frames a second apart, and no
# nose sits further out than the cheeks: values past these are the landmark model losing the face
# (a blurred or half-turned frame), never evidence.
MAX_PLAUSIBLE_MOTION = 0.5
MAX_PLAUSIBLE_YAW = 1.2


# --- geometry -------------------------------------------------------------------------------------


def eye_distance(points: np.ndarray) -> float:
    """Distance between the two eye centres (mean of each eye's corners): the face's length unit."""
    centres = [points[list(corners), :2].mean(axis=0) for corners in EYE_CORNERS]
    return float(np.linalg.norm(centres[0] - centres[1]))


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares 2D similarity (rotation, uniform scale, translation) mapping src to dst; 2x3."""
    mu_s, mu_d = src.mean(axis=0), dst.mean(axis=0)
    s, d = src - mu_s, dst - mu_d
    # Complex-number form: dst ~ a * src + t with a = scale * e^(i angle).
    zs, zd = s[:, 0] + 1j * s[:, 1], d[:, 0] + 1j * d[:, 1]
    denom = float(np.vdot(zs, zs).real)
    a = complex(np.vdot(zs, zd) / denom) if denom > 0 else 1.0 + 0j
    rot = np.array([[a.real, -a.imag], [a.imag, a.real]])
    t = mu_d - rot @ mu_s
    return np.hstack([rot, t[:, None]])


def _p90(errors: np.ndarray) -> float:
    """np.percentile(errors, 90) without its overhead (called a few times per frame)."""
    ordered = np.sort(errors)
    k = 0.9 * (len(ordered) - 1)
    i = int(k)
    upper = ordered[min(i + 1, len(ordered) - 1)]
    return float(ordered[i] + (upper - ordered[i]) * (k - i))


def _homogeneous(points: np.ndarray) -> np.ndarray:
    return np.hstack([points, np.ones((len(points), 1))])


def similarity_residual(src: np.ndarray, dst: np.ndarray, scale: float) -> float:
    """90th-percentile error left after the best similarity, in units of `scale` (the eye distance)."""
    m = similarity_fit(src, dst)
    mapped = src @ m[:, :2].T + m[:, 2]
    return _p90(np.linalg.norm(mapped - dst, axis=1)) / scale


def _normalizing(points: np.ndarray) -> np.ndarray:
    """Hartley normalization: centroid to the origin, mean distance sqrt(2); keeps the DLT well conditioned."""
    centre = points.mean(axis=0)
    spread = float(np.mean(np.linalg.norm(points - centre, axis=1)))
    k = math.sqrt(2) / spread if spread > 0 else 1.0
    return np.array([[k, 0, -k * centre[0]], [0, k, -k * centre[1]], [0, 0, 1]])


def fit_homography(src: np.ndarray, dst: np.ndarray) -> np.ndarray | None:
    """Least-squares homography (normalized direct linear transform) mapping src to dst; 3x3 or None."""
    ts, td = _normalizing(src), _normalizing(dst)
    s = _homogeneous(src) @ ts.T
    d = _homogeneous(dst) @ td.T
    zeros = np.zeros_like(s)
    rows_x = np.hstack([s, zeros, -d[:, :1] * s])
    rows_y = np.hstack([zeros, s, -d[:, 1:2] * s])
    a = np.vstack([rows_x, rows_y])
    _, vectors = np.linalg.eigh(a.T @ a)  # the smallest eigenvector of A^T A minimizes |A h|
    h = np.linalg.inv(td) @ vectors[:, 0].reshape(3, 3) @ ts
    if not np.isfinite(h).all() or abs(h[2, 2]) < 1e-12:
        return None
    return h / h[2, 2]


def homography_residual(src: np.ndarray, dst: np.ndarray, scale: float) -> float:
    """90th-percentile error left after the best single homography, in units of `scale`."""
    src64, dst64 = src.astype(np.float64), dst.astype(np.float64)
    h = fit_homography(src64, dst64)
    if h is None:  # degenerate point sets: treat as unexplained (never as "flat")
        return float("inf")
    mapped = _homogeneous(src64) @ h.T
    w = mapped[:, 2:]
    if np.any(np.abs(w) < 1e-12):
        return float("inf")
    return _p90(np.linalg.norm(mapped[:, :2] / w - dst64, axis=1)) / scale


@dataclass(frozen=True)
class PairMotion:
    """How the upper face moved between an earlier frame and this one."""

    dt: float  # seconds between the two frames
    motion: float  # what a 2D similarity cannot explain: out-of-plane movement (eye distances)
    residual: float  # what a single homography cannot explain: parallax (eye distances)


def pair_motion(earlier: np.ndarray, later: np.ndarray, dt: float) -> PairMotion:
    """Compare the rigid upper-face points of two meshes of the same face."""
    src, dst = earlier[UPPER_FACE, :2], later[UPPER_FACE, :2]
    scale = (eye_distance(earlier) + eye_distance(later)) / 2
    return PairMotion(dt, similarity_residual(src, dst, scale), homography_residual(src, dst, scale))


def eye_openness(points: np.ndarray, eyelids: np.ndarray) -> float:
    """Mean eyelid gap of both eyes over the eye-to-nose-tip distance.

    `eyelids` is (2, 16, 2): per eye, the lower lid from corner to corner (0-8) then the upper lid
    (9-15). Normalizing by the nose distance, not the eye width, keeps a print tilted back and forth
    from looking like a blink: tilting shrinks the eyelid gap and the eye-to-nose distance alike."""
    nose = points[NOSE_TIP, :2]
    values = []
    for eye in eyelids:
        lower, upper = eye[1:8], eye[9:16]
        across = eye[8] - eye[0]
        normal = np.array([-across[1], across[0]]) / max(float(np.linalg.norm(across)), 1e-6)
        gap = abs(float(np.dot(upper.mean(axis=0) - lower.mean(axis=0), normal)))  # across the eye, not along it
        centre = eye[[0, 8]].mean(axis=0)
        values.append(gap / max(float(np.linalg.norm(centre - nose)), 1e-6))
    return float(np.mean(values))


def yaw_ratio(points: np.ndarray) -> float:
    """Nose-tip offset from the cheeks' midpoint over half the face width, along the cheek line.

    0 for a frontal face; positive when the nose points toward larger image x. A flat picture of a
    face keeps this ratio (nearly) whatever way the picture is turned; a head changes it."""
    left, right = points[CHEEK_LEFT, :2], points[CHEEK_RIGHT, :2]
    axis = right - left
    half = float(np.linalg.norm(axis)) / 2
    if half <= 0:
        return 0.0
    offset = float(np.dot(points[NOSE_TIP, :2] - (left + right) / 2, axis / (2 * half)))
    return offset / half


def yaw_degrees(ratio: float) -> float:
    """Approximate head yaw in degrees for a yaw ratio (see YAW_DEPTH_RATIO)."""
    return math.degrees(math.atan(ratio / YAW_DEPTH_RATIO))


# --- per-frame samples of a track ---------------------------------------------------------------------


@dataclass(frozen=True)
class Sample:
    """One frame of one face track: the mesh-derived measurements the checks need."""

    t: float
    box: Box
    name: str | None
    points: np.ndarray  # (468, 2+) image pixels
    openness: float
    yaw: float  # yaw ratio
    pairs: tuple[PairMotion, ...] = ()


# --- the checks -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LivenessSettings:
    """Thresholds of the checks; config.LivenessConfig fills these (docs/liveness.md measured them)."""

    pair_gaps_s: tuple[float, ...] = (0.25, 0.5, 1.0)  # each frame is compared with frames this long before
    min_motion: float = 0.05  # out-of-plane motion a pair needs before it counts as evidence of 3D
    live_parallax: float = 0.06  # median parallax of those pairs at or above this: a 3D face
    flat_motion: float = 0.08  # a flat verdict needs pairs that moved at least this much ...
    flat_parallax: float = 0.02  # ... with a median parallax below this
    min_pairs: int = 6  # pairs needed for either verdict
    blink_drop: float = 0.55  # a blink closes the eyes to below this fraction of their open baseline
    blink_recover: float = 0.8  # ... and reopens above this fraction
    blink_max_s: float = 0.6  # ... within this time
    blink_rigid: float = 0.03  # the rest of the face moves less than this (similarity residual) meanwhile
    challenge_yaw: float = 0.25  # the yaw ratio must move this far the asked way (~18 degrees) ...
    challenge_parallax: float = 0.04  # ... and the frames since the prompt must show at least this parallax


@dataclass(frozen=True)
class Flatness:
    """What the moving pairs of a window say: 'live', 'flat' or 'undecided'."""

    verdict: Literal["live", "flat", "undecided"]
    moving_pairs: int
    parallax: float  # median parallax of the pairs that moved at least min_motion (eye distances)
    max_motion: float


def flatness(samples: Sequence[Sample], settings: LivenessSettings) -> Flatness:
    """Judge the window's pairs that moved out of plane by the parallax a single homography leaves.

    The landmark model itself leaves 0.01-0.04 eye distances of non-planar jitter on prints
    (docs/liveness.md measures it), so 'live' needs clear parallax, and 'flat' needs a print that
    moved a lot and stayed nearly planar; everything between is undecided and left to the
    challenge."""
    pairs = [p for s in samples for p in s.pairs
             if p.motion <= MAX_PLAUSIBLE_MOTION and p.residual <= MAX_PLAUSIBLE_MOTION]
    moving = [p for p in pairs if p.motion >= settings.min_motion]
    max_motion = max((p.motion for p in pairs), default=0.0)
    if len(moving) < settings.min_pairs:
        return Flatness("undecided", len(moving), float("nan"), max_motion)
    parallax = float(np.median([p.residual for p in moving]))
    strong = [p.residual for p in pairs if p.motion >= settings.flat_motion]
    verdict: Literal["live", "flat", "undecided"] = "undecided"
    if parallax >= settings.live_parallax:
        verdict = "live"
    elif len(strong) >= settings.min_pairs and float(np.median(strong)) < settings.flat_parallax:
        verdict = "flat"
    return Flatness(verdict, len(moving), parallax, max_motion)


def find_blink(samples: Sequence[Sample], settings: LivenessSettings) -> float | None:
    """Time of the first blink in the window: eyes close and reopen quickly while the face stays rigid."""
    open_level = [s.openness for s in samples if math.isfinite(s.openness)]
    if len(open_level) < 4:
        return None
    baseline = float(np.percentile(open_level, 75))
    if baseline <= 0:
        return None
    for i, closed in enumerate(samples):
        if not closed.openness < settings.blink_drop * baseline:
            continue
        before = [s for s in samples[:i] if closed.t - s.t <= settings.blink_max_s
                  and s.openness >= settings.blink_recover * baseline]
        after = [s for s in samples[i + 1:] if s.t - closed.t <= settings.blink_max_s
                 and s.openness >= settings.blink_recover * baseline]
        if not before or not after:
            continue
        ref, back = before[-1], after[0]
        if back.t - ref.t > settings.blink_max_s:
            continue  # eyes shut longer than a blink
        scale = eye_distance(ref.points)
        rigid = all(similarity_residual(ref.points[UPPER_FACE, :2], s.points[UPPER_FACE, :2], scale)
                    < settings.blink_rigid for s in (closed, back))
        if rigid:
            return closed.t
    return None


def yaw_followed(samples: Sequence[Sample], direction: Direction, since: float) -> float:
    """How far (yaw ratio, signed toward `direction`) the head turned after `since` from where it was then."""
    plausible = [s for s in samples if abs(s.yaw) <= MAX_PLAUSIBLE_YAW]
    before = [s.yaw for s in plausible if s.t <= since]
    after = [s.yaw for s in plausible if s.t > since]
    if not after:
        return 0.0
    start = before[-1] if before else after[0]
    sign = YAW_SIGN[direction]
    return max(sign * (y - start) for y in after)


def identity_held(samples: Sequence[Sample], person: str, end_gap_s: float = 1.0) -> bool:
    """The person was recognized at the start, in the middle and near the end of the window, and
    nobody else anywhere.

    Frames where the face was not recognized (a turned head, motion blur) are allowed; a frame
    recognized as someone else means two faces were spliced into one track. "Near the end" allows
    the last `end_gap_s` to go unrecognized: a head turned for the challenge is in profile, which
    FaceNet does not match, and the track's continuity covers those frames."""
    if not samples or any(s.name is not None and s.name != person for s in samples):
        return False
    t0, t1 = samples[0].t, samples[-1].t
    span = max(t1 - t0, 1e-9)
    thirds = [False, False, False]
    last_seen = None
    for s in samples:
        if s.name == person:
            thirds[min(2, int(3 * (s.t - t0) / span))] = True
            last_seen = s.t
    near_end = last_seen is not None and t1 - last_seen <= end_gap_s
    return thirds[0] and thirds[1] and (thirds[2] or near_end)


# --- the verdict for one person on one track ---------------------------------------------------------------


@dataclass(frozen=True)
class Verdict:
    """The state of a liveness check after a frame."""

    status: Literal["pending", "challenge", "live", "spoof"]
    reason: str = ""
    method: str | None = None  # what confirmed life: '3d_motion', 'blink', 'challenge'
    direction: Direction | None = None  # the challenge asked for, once asked
    detail: dict[str, float] = field(default_factory=dict)


@dataclass
class LivenessCheck:
    """One identity decision waiting for proof of life on the track it came from.

    mode 'passive': 3D motion or a blink within `passive_s`, else refused. mode 'challenge': the
    same, then a random head turn asked for and awaited for `challenge_s`. A flat verdict refuses at
    once in both modes. Every frame of the evidence must keep the person's identity."""

    person: str
    started: float
    mode: Literal["passive", "challenge"]
    settings: LivenessSettings
    passive_s: float
    challenge_s: float
    window_s: float
    choose_direction: Callable[[], Direction]  # injected so tests and the bench are seeded
    direction: Direction | None = None
    challenged_at: float | None = None

    def step(self, now: float, samples: Sequence[Sample]) -> Verdict:
        """Look at the track's samples (oldest first) and say where the check stands."""
        recent = [s for s in samples if s.t >= now - self.window_s]
        evidence = flatness(recent, self.settings)
        detail = {"moving_pairs": float(evidence.moving_pairs), "parallax": evidence.parallax,
                  "elapsed_s": now - self.started}
        if evidence.verdict == "flat":
            return Verdict("spoof", "the face moved like a flat picture", detail=detail)
        if self.challenged_at is None:
            if evidence.verdict == "live" and identity_held(recent, self.person):
                return Verdict("live", method="3d_motion", detail=detail)
            blink = find_blink(recent, self.settings)
            if blink is not None and identity_held(recent, self.person):
                return Verdict("live", method="blink", detail={**detail, "blink_at_s": blink - self.started})
            if now - self.started < self.passive_s:
                return Verdict("pending", detail=detail)
            if self.mode == "passive":
                return Verdict("spoof", "no sign of life (no 3D motion, no blink)", detail=detail)
            self.direction = self.choose_direction()
            self.challenged_at = now
            return Verdict("challenge", direction=self.direction, detail=detail)
        assert self.direction is not None
        since = [s for s in samples if s.t >= self.challenged_at - self.window_s]
        turned = yaw_followed(since, self.direction, self.challenged_at)
        # The face mesh reads some yaw into a turned print's foreshortening, so the turn must also
        # look 3D: parallax in the frame pairs that end after the prompt.
        turn = flatness([s for s in since if s.t > self.challenged_at], self.settings)
        detail.update(yaw_followed=turned, turn_parallax=turn.parallax, turn_pairs=float(turn.moving_pairs))
        if (turned >= self.settings.challenge_yaw and turn.moving_pairs >= self.settings.min_pairs
                and turn.parallax >= self.settings.challenge_parallax and identity_held(since, self.person)):
            return Verdict("live", method="challenge", direction=self.direction, detail=detail)
        if evidence.verdict == "live" and identity_held(recent, self.person):
            # A real head that turned the other way is still a real head.
            return Verdict("live", method="3d_motion", direction=self.direction, detail=detail)
        if now - self.challenged_at >= self.challenge_s:
            return Verdict("spoof", f"the head did not turn {self.direction} in time", direction=self.direction,
                           detail=detail)
        return Verdict("challenge", direction=self.direction, detail=detail)
