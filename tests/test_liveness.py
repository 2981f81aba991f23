"""The liveness math, the face track and the per-person check, on a real face mesh moved in 3D.

A real photo's mesh (x, y and the model's relative depth z) is the head; turning it and projecting
it through a pinhole camera gives what a camera sees of a real head, and flattening it first (z = 0)
gives what it sees of a print of that face. The checks must tell the two apart.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from edge.config import ChallengePromptConfig, config_from_dict
from edge.errors import ConfigError
from edge.face_track import FaceTracker, TrackLimits, continues
from edge.images import load_image
from edge.liveness import (
    LivenessCheck,
    LivenessSettings,
    PairMotion,
    Sample,
    _p90,
    eye_openness,
    find_blink,
    flatness,
    homography_residual,
    identity_held,
    pair_motion,
    similarity_residual,
    yaw_followed,
    yaw_ratio,
)

SETTINGS = LivenessSettings()


@pytest.fixture(scope="module")
def head(fr_images: dict[str, Path], landmarker, recognizer) -> tuple[np.ndarray, np.ndarray]:
    """(468, 3) mesh of a real frontal face, centred; and its eyelids (2, 16, 2), centred the same way."""
    image = load_image(fr_images["obama"])
    face = recognizer.detector.detect(image)[0]
    mesh = landmarker.mesh(image, face.box, face.landmarks[:2])
    assert mesh is not None
    centre = mesh.points.mean(axis=0)
    return (mesh.points - centre).astype(np.float64), (mesh.eyelids - centre[:2]).astype(np.float64)


def rotation(yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0) -> np.ndarray:
    y, p, r = (math.radians(a) for a in (yaw, pitch, roll))
    ry = np.array([[math.cos(y), 0, math.sin(y)], [0, 1, 0], [-math.sin(y), 0, math.cos(y)]])
    rx = np.array([[1, 0, 0], [0, math.cos(p), -math.sin(p)], [0, math.sin(p), math.cos(p)]])
    rz = np.array([[math.cos(r), -math.sin(r), 0], [math.sin(r), math.cos(r), 0], [0, 0, 1]])
    return rz @ rx @ ry


def view(points: np.ndarray, yaw: float = 0.0, pitch: float = 0.0, roll: float = 0.0, flat: bool = False,
         shift: tuple[float, float] = (0.0, 0.0), distance: float = 4.0) -> np.ndarray:
    """Pinhole image of the head (or of a flat print of it) turned by the angles, `distance` face widths away."""
    p = points.copy()
    if flat:
        p[:, 2] = 0.0
    width = float(np.ptp(points[:, 0]))
    p = p @ rotation(yaw, pitch, roll).T
    depth = distance * width + p[:, 2]
    focal = distance * width
    out = np.empty_like(p)
    out[:, 0] = focal * p[:, 0] / depth + 320 + shift[0]
    out[:, 1] = focal * p[:, 1] / depth + 240 + shift[1]
    out[:, 2] = p[:, 2]
    return out


def samples(points: np.ndarray, poses: list[dict], flat: bool = False, name: str | None = "ann",
            fps: float = 10.0) -> list[Sample]:
    """A track's samples for a sequence of poses, built the way the daemon builds them."""
    tracker = FaceTracker()
    out = []
    for i, pose in enumerate(poses):
        p = view(points, flat=flat, **pose)
        x0, y0 = p[:, :2].min(axis=0)
        x1, y1 = p[:, :2].max(axis=0)
        box = (float(x0), float(y0), float(x1 - x0), float(y1 - y0))
        track = tracker.observe(i / fps, box)
        assert track is not None
        out.append(track.add(i / fps, box, name, p, None))
    return out


# --- geometry ----------------------------------------------------------------------------------------------


def test_a_turning_head_leaves_parallax_a_turning_print_does_not(head) -> None:
    points, _ = head
    real = pair_motion(view(points), view(points, yaw=15), 0.5)
    # A print must turn further to show the same change: it has no depth, only foreshortening.
    flat = pair_motion(view(points, flat=True), view(points, yaw=30, flat=True), 0.5)
    assert real.motion >= SETTINGS.min_motion and flat.motion >= SETTINGS.min_motion  # both moved out of plane
    assert real.residual >= SETTINGS.live_parallax, real
    assert flat.residual < 0.005, flat  # one homography explains a plane exactly


def test_motion_in_the_image_plane_is_no_evidence(head) -> None:
    points, _ = head
    moved = pair_motion(view(points), view(points, roll=12, shift=(40, -25), distance=3.5), 0.5)
    assert moved.motion < SETTINGS.min_motion, moved


def test_residual_fits_are_exact_on_their_own_models() -> None:
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 49):
        errors = rng.uniform(0, 1, n)
        assert _p90(errors) == pytest.approx(float(np.percentile(errors, 90)))
    src = rng.uniform(0, 100, (30, 2))
    angle = 0.3
    sim = np.array([[1.2 * math.cos(angle), -1.2 * math.sin(angle)], [1.2 * math.sin(angle), 1.2 * math.cos(angle)]])
    assert similarity_residual(src, src @ sim.T + [5, -7], 10.0) < 1e-9
    h = np.array([[1.0, 0.1, 3.0], [0.05, 0.9, -2.0], [1e-3, 2e-3, 1.0]])
    mapped = np.c_[src, np.ones(len(src))] @ h.T
    assert homography_residual(src, mapped[:, :2] / mapped[:, 2:], 10.0) < 1e-6
    assert similarity_residual(src, mapped[:, :2] / mapped[:, 2:], 10.0) > 0.1


def test_yaw_ratio_follows_the_head_and_not_a_turned_print(head) -> None:
    points, _ = head
    frontal = yaw_ratio(view(points))
    # Turning to the person's left brings the nose toward larger image x (the camera does not mirror);
    # in view()'s angles that is a negative yaw.
    left = [yaw_ratio(view(points, yaw=-a)) - frontal for a in (10, 20, 30)]
    assert 0 < left[0] < left[1] < left[2]
    assert yaw_ratio(view(points, yaw=20)) - frontal < -0.15
    # A print turned as far only shows perspective: a fraction of the head's change, under the challenge's turn.
    flat = yaw_ratio(view(points, flat=True))
    print_turn = abs(yaw_ratio(view(points, yaw=-30, flat=True)) - flat)
    assert print_turn < 0.1 and print_turn < left[2] / 4 and print_turn < SETTINGS.challenge_yaw / 2


def test_eye_openness_drops_when_the_lids_close_and_keeps_under_a_tilt(head) -> None:
    points, eyelids = head
    open_ = eye_openness(points, eyelids)
    closed = eyelids.copy()
    for eye in closed:
        eye[9:16, 1] = eye[1:8, 1].mean()  # upper lid down onto the lower lid
    assert eye_openness(points, closed) < 0.35 * open_
    # A print tilted back 30 degrees shrinks everything vertically: the ratio barely moves.
    squash = np.array([1.0, math.cos(math.radians(30))])
    assert abs(eye_openness(points * np.r_[squash, 1.0], eyelids * squash) - open_) < 0.25 * open_


# --- window checks -------------------------------------------------------------------------------------------


def turning(amplitude: float = 30.0, frames: int = 20) -> list[dict]:
    return [{"yaw": amplitude * math.sin(2 * math.pi * i / frames)} for i in range(frames)]


def test_flatness_verdicts(head) -> None:
    points, _ = head
    assert flatness(samples(points, turning()), SETTINGS).verdict == "live"
    # A print must swing wide for a flat verdict; a small swing is left to the challenge.
    assert flatness(samples(points, turning(45.0), flat=True), SETTINGS).verdict == "flat"
    assert flatness(samples(points, turning(15.0), flat=True), SETTINGS).verdict == "undecided"
    still = [{"roll": 0.2 * (i % 2)} for i in range(20)]
    assert flatness(samples(points, still), SETTINGS).verdict == "undecided"
    shaken = [{"roll": 8 * math.sin(i), "shift": (20 * math.cos(i), 10 * math.sin(2 * i))} for i in range(20)]
    assert flatness(samples(points, shaken, flat=True), SETTINGS).verdict == "undecided"


def _with_openness(base: list[Sample], values: list[float]) -> list[Sample]:
    return [Sample(s.t, s.box, s.name, s.points, v, s.yaw, s.pairs) for s, v in zip(base, values, strict=True)]


def test_a_blink_on_a_rigid_face_counts(head) -> None:
    points, _ = head
    base = samples(points, [{} for _ in range(12)])
    values = [0.3] * 5 + [0.08] + [0.3] * 6
    assert find_blink(_with_openness(base, values), SETTINGS) == pytest.approx(0.5)
    assert find_blink(_with_openness(base, [0.3] * 12), SETTINGS) is None
    slow = [0.3] * 3 + [0.08] * 8 + [0.3]  # eyes shut for 0.8 s: not a blink
    assert find_blink(_with_openness(base, slow), SETTINGS) is None


def test_a_flicked_print_is_no_blink(head) -> None:
    points, _ = head
    # The eyelid ratio dips exactly when the whole picture pitches: the face is not rigid meanwhile.
    poses = [{"pitch": 35.0 if i == 5 else 0.0, "yaw": 25.0 if i == 5 else 0.0} for i in range(12)]
    base = samples(points, poses, flat=True)
    values = [0.3] * 5 + [0.08] + [0.3] * 6
    assert find_blink(_with_openness(base, values), SETTINGS) is None


def test_identity_must_hold_over_the_whole_window(head) -> None:
    points, _ = head
    base = samples(points, [{} for _ in range(9)])

    def named(names: list[str | None]) -> list[Sample]:
        return [Sample(s.t, s.box, n, s.points, s.openness, s.yaw, s.pairs) for s, n in zip(base, names, strict=True)]

    assert identity_held(named(["ann"] * 9), "ann")
    assert identity_held(named(["ann", None, None, "ann", None, None, None, None, "ann"]), "ann")
    assert not identity_held(named(["ann", "ann", "ann", None, None, None, "ann", "ann", "ann"]), "ann")  # middle
    assert not identity_held(named([None, None, None] + ["ann"] * 6), "ann")  # start never seen as ann
    assert not identity_held(named(["bob"] + ["ann"] * 8), "ann")  # another person spliced in
    # The last 0.3 s unrecognized (a head turned to profile) is allowed; 0.4 s with a 0.35 s limit is not.
    assert identity_held(named(["ann"] * 6 + [None] * 3), "ann", end_gap_s=0.35)
    assert not identity_held(named(["ann"] * 5 + [None] * 4), "ann", end_gap_s=0.35)


def test_landmark_glitches_are_no_evidence(head) -> None:
    points, _ = head
    base = samples(points, [{} for _ in range(12)])
    glitch = PairMotion(0.5, 0.9, 0.8)  # the mesh lost the face: far more than any head moves
    broken = [Sample(s.t, s.box, s.name, s.points, s.openness, 2.5 if i == 11 else s.yaw, (glitch,) * 3)
              for i, s in enumerate(base)]
    assert flatness(broken, SETTINGS).verdict == "undecided"
    assert yaw_followed(broken, "left", 0.5) < SETTINGS.challenge_yaw


def test_yaw_followed_measures_the_asked_direction(head) -> None:
    points, _ = head
    track = samples(points, [{"yaw": 0.0}] * 5 + [{"yaw": -4.0 * i} for i in range(1, 8)])  # to her left
    assert yaw_followed(track, "left", 0.45) > SETTINGS.challenge_yaw
    assert yaw_followed(track, "right", 0.45) <= 0.0


# --- the check ---------------------------------------------------------------------------------------------


def check(mode: str = "challenge", direction: str = "left") -> LivenessCheck:
    return LivenessCheck("ann", 0.0, mode, SETTINGS, passive_s=1.0, challenge_s=2.0, window_s=2.0,  # type: ignore[arg-type]
                         choose_direction=lambda: direction)


def run(c: LivenessCheck, track: list[Sample]):
    verdict = None
    for i in range(1, len(track) + 1):
        verdict = c.step(track[i - 1].t, track[:i])
        if verdict.status in ("live", "spoof"):
            break
    return verdict


def test_check_accepts_3d_motion_and_refuses_a_turned_print(head) -> None:
    points, _ = head
    live = run(check(), samples(points, turning()))
    assert live.status == "live" and live.method == "3d_motion"
    spoof = run(check(), samples(points, turning(45.0), flat=True))
    assert spoof.status == "spoof" and "flat" in spoof.reason


def test_passive_mode_refuses_a_still_face_after_the_wait(head) -> None:
    points, _ = head
    verdict = run(check("passive"), samples(points, [{}] * 15))
    assert verdict.status == "spoof" and "no sign of life" in verdict.reason
    assert verdict.detail["elapsed_s"] >= 1.0


def _challenged(c: LivenessCheck, track: list[Sample]):
    statuses = []
    for i in range(1, len(track) + 1):
        v = c.step(track[i - 1].t, track[:i])
        statuses.append(v.status)
        if v.status in ("live", "spoof"):
            break
    return statuses, v


def test_challenge_is_asked_and_passed_by_turning_the_asked_way(head) -> None:
    points, _ = head
    still = [{}] * 12  # 1.1 s: the passive wait ends, the challenge starts
    # view()'s negative yaw turns the head to the person's left.
    for direction, sign in (("left", -1), ("right", 1)):
        statuses, v = _challenged(check(direction=direction), samples(points, still + [{"yaw": sign * 3.0 * i}
                                                                                       for i in range(1, 25)]))
        assert "challenge" in statuses and v.direction == direction
        assert v.status == "live" and v.method == "challenge", v


def test_a_print_turned_on_cue_fails_the_challenge(head) -> None:
    points, _ = head
    poses = [{}] * 12 + [{"yaw": -3.0 * i} for i in range(1, 30)]
    statuses, v = _challenged(check(direction="left"), samples(points, poses, flat=True))
    assert "challenge" in statuses
    assert v.status == "spoof", v


def test_a_head_turning_the_other_way_is_still_a_live_head(head) -> None:
    points, _ = head
    poses = [{}] * 12 + [{"yaw": 3.0 * i} for i in range(1, 25)]  # asked left, turns right
    statuses, v = _challenged(check(direction="left"), samples(points, poses))
    assert v.status == "live" and v.method == "3d_motion", v


def test_challenge_times_out_for_a_still_face(head) -> None:
    points, _ = head
    verdict = run(check(), samples(points, [{}] * 40))
    assert verdict.status == "spoof" and "did not turn" in verdict.reason


def test_3d_motion_of_someone_else_does_not_count(head) -> None:
    points, _ = head
    track = samples(points, turning(), name=None)  # a live stranger; no frame recognized as ann
    assert run(check("passive"), track).status == "spoof"


# --- tracking -----------------------------------------------------------------------------------------------


def test_track_breaks_on_a_jump_a_size_change_and_a_gap() -> None:
    limits = TrackLimits()
    box = (100.0, 100.0, 100.0, 120.0)
    assert continues(box, (120.0, 110.0, 105.0, 125.0), limits)
    assert not continues(box, (180.0, 100.0, 100.0, 120.0), limits)  # centre moved 0.8 box widths
    assert not continues(box, (80.0, 80.0, 150.0, 180.0), limits)  # 1.5x bigger
    tracker = FaceTracker(limits)
    first = tracker.observe(0.0, box)
    assert first is not None
    first.add(0.0, box, "ann", np.zeros((468, 2)), None)
    assert tracker.observe(0.1, (105.0, 100.0, 100.0, 120.0)) is first
    first.add(0.1, (105.0, 100.0, 100.0, 120.0), "ann", np.zeros((468, 2)), None)
    assert tracker.observe(0.5, None) is None and tracker.track is first  # a short miss keeps the track
    later = tracker.observe(2.0, (105.0, 100.0, 100.0, 120.0))  # gone for 1.9 s
    assert later is not None and later.id != first.id


# --- config and prompt pins ---------------------------------------------------------------------------------


def test_liveness_config_shorthand_and_errors() -> None:
    assert config_from_dict({}).liveness.mode == "challenge"  # doors default to the strictest mode
    assert config_from_dict({"liveness": False}).liveness.mode == "off"  # YAML's bare `off`
    assert config_from_dict({"liveness": "passive"}).liveness.mode == "passive"
    with pytest.raises(ConfigError, match="liveness.mode"):
        config_from_dict({"liveness": "maybe"})
    with pytest.raises(ConfigError, match=r"liveness.prompt.buzzer_pin: pin 17 is already used by relay.pin"):
        config_from_dict({"liveness": {"prompt": {"buzzer_pin": 17}}})
    with pytest.raises(ConfigError, match="liveness.flat_parallax"):
        config_from_dict({"liveness": {"flat_parallax": 0.3, "live_parallax": 0.2}})


def test_prompt_pins_show_the_direction_and_clear() -> None:
    from gpiozero.pins.mock import MockFactory

    from edge.challenge_prompt import ChallengePrompter

    pins = MockFactory()
    prompter = ChallengePrompter(ChallengePromptConfig(left_led_pin=5, right_led_pin=6, buzzer_pin=13, beep_s=0.05),
                                 pin_factory=pins)
    try:
        prompter.show("left")
        assert pins.pin(5).state and not pins.pin(6).state and pins.pin(13).state
        deadline = 50
        while pins.pin(13).state and deadline:
            import time

            time.sleep(0.02)
            deadline -= 1
        assert not pins.pin(13).state, "the beep never stopped"
        assert pins.pin(5).state  # the arrow stays lit while the check waits
        prompter.show("right")
        assert pins.pin(6).state and not pins.pin(5).state
        prompter.clear()
        assert not any(pins.pin(p).state for p in (5, 6, 13))
    finally:
        prompter.close()


def test_the_track_stays_on_its_face_when_a_second_face_is_as_large() -> None:
    tracker = FaceTracker()
    ours, other = (300.0, 200.0, 130.0, 165.0), (150.0, 150.0, 125.0, 160.0)
    assert tracker.pick(0.0, [ours, other]) == 0  # nothing tracked yet: the largest
    track = tracker.observe(0.0, ours)
    assert track is not None
    track.add(0.0, ours, "ann", np.zeros((468, 2)), None)
    # The other face is now the larger one, but ours moved only a little: stay on ours.
    ours_next, other_next = (305.0, 202.0, 126.0, 160.0), (150.0, 150.0, 132.0, 168.0)
    assert tracker.pick(0.1, [other_next, ours_next]) == 1
    assert tracker.observe(0.1, ours_next) is track
    # Ours is gone: the largest face starts a new track.
    assert tracker.pick(0.2, [other_next]) == 0
    new = tracker.observe(0.2, other_next)
    assert new is not None and new is not track
