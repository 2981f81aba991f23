"""Presentations for the liveness attack bench: what a 640x480 door camera would see when someone
holds up a print or a phone (attacks), or stands in front of it (bona fide, from real videos).

Everything is seeded and random-access: `Presentation.frame(i)` renders frame i from the seed
alone, so pad_eval can replay any frame, with or without a challenge prompt, bit for bit.

Attacks render the photo as a physical object in 3D: a sheet (or a phone screen) with a pose per
frame (hand jitter as a mean-reverting random walk plus the species' own motion), projected by a
pinhole camera (focal length 560 px, ~60 degrees horizontal field of view) over a seeded textured
background, then degraded by `CameraEffects`. Because the renderer knows the plane's pose, it
exposes the exact plane-to-image homography of flat species (`Presentation.ground_truth_homography`).

Prompts: "left" means the face should turn so that it points to the camera's left, i.e. the nose
moves toward smaller image x relative to the eyes (the yaw proxy below decreases); "right" the
opposite. A yaw proxy used throughout: (nose_x - eye_midpoint_x) / inter-eye distance from the
detector's five landmarks.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from edge.detector import Face, FaceDetector

FRAME_W, FRAME_H = 640, 480
FOCAL_PX = 560.0  # ~60 deg horizontal FOV at 640 px: a typical wide door/webcam lens
FACE_HEIGHT_M = 0.17  # MTCNN box height of an adult face, forehead to chin, life size
PROMPTS = ("left", "right")
SPECIES: tuple[str, ...] = (
    "print_still", "print_turned", "print_tilted", "print_shaken", "print_approaching", "print_bent",
    "print_flicked", "print_on_cue", "phone_replay",
)
REACTIVE_SPECIES = ("print_on_cue",)
REPLAY_VIDEO = "ageitgey__short_hamilton_clip.mp4"
CUT_THRESHOLD = 18.0  # mean abs difference (grey levels) of 64x36 thumbnails between frames; a cut is > 25
BENT_STRIPS = 32

# Turning segments found by `turn_segments` on ../shared/faces/videos with MTCNN (min face 40 px,
# frames over 960 px downscaled): (video, start, stop, direction, yaw-proxy change), frames
# [start, stop) at the source rate. Shots of the Hamilton clip: [0,20) [20,82) [82,211) [211,275);
# [82,211) is the one long single-face shot (and the phone replay's source). The handheld whip in
# the shaky shot [20,82) is no longer a segment: its track had exactly the 20 detections a track
# needs, and since the detector's pyramid levels are exact area averages (docs/detector.md) two
# borderline frames of it (O-net scores 0.72 and 0.81) drop out; it never had a calm stretch
# for a presentation anyway. 263-275 is a face in a three-person still. timesler's clip is one
# shot of several people walking toward the camera.
TURN_TABLE: tuple[tuple[str, int, int, str, float], ...] = (
    ("ageitgey__short_hamilton_clip.mp4", 82, 120, "left", -0.50),
    ("ageitgey__short_hamilton_clip.mp4", 133, 166, "right", 0.59),
    ("ageitgey__short_hamilton_clip.mp4", 165, 211, "left", -0.53),
    ("ageitgey__short_hamilton_clip.mp4", 263, 275, "left", -0.25),
    ("timesler__video.mp4", 0, 21, "right", 0.30),
    ("timesler__video.mp4", 0, 33, "right", 0.42),
    ("timesler__video.mp4", 82, 105, "right", 0.47),
    ("timesler__video.mp4", 90, 105, "left", -0.47),
    ("timesler__video.mp4", 49, 77, "right", 0.29),
    ("timesler__video.mp4", 76, 105, "left", -0.65),
)


def yaw_proxy(landmarks: np.ndarray) -> float:
    """(nose_x - eye_midpoint_x) / inter-eye distance: negative = nose toward smaller image x."""
    points = np.asarray(landmarks, np.float64)
    eye_mid = (points[0] + points[1]) / 2
    return float((points[2, 0] - eye_mid[0]) / max(np.linalg.norm(points[1] - points[0]), 1e-6))


# ----------------------------------------------------------------------------------------- camera

@dataclass(frozen=True)
class CameraEffects:
    """What a cheap door camera does to every frame: optics blur, sensor noise, exposure gain,
    rolling shutter (rows read top to bottom, so a horizontally moving subject is sheared) and the
    JPEG/MJPEG compression of the stream."""

    blur_sigma: float = 0.7
    noise_std: float = 2.5
    jpeg_quality: int = 80
    rolling_shutter_px: float = 0.35  # horizontal shift of the bottom row vs the top, per px of motion
    gain: float = 1.0

    @staticmethod
    def seeded(rng: np.random.Generator) -> CameraEffects:
        """A plausible random camera (so an evaluation covers a spread of cameras)."""
        return CameraEffects(blur_sigma=float(rng.uniform(0.3, 1.2)), noise_std=float(rng.uniform(1.0, 4.0)),
                             jpeg_quality=int(rng.integers(60, 92)),
                             rolling_shutter_px=float(rng.uniform(0.1, 0.5)), gain=float(rng.uniform(0.85, 1.15)))

    def shear(self, motion_px: tuple[float, float]) -> np.ndarray:
        """3x3 image-space transform of the rolling shutter for a horizontal motion (px/frame)."""
        k = self.rolling_shutter_px * float(motion_px[0]) / FRAME_H
        return np.array([[1.0, k, -k * FRAME_H / 2], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])

    def apply(self, frame: np.ndarray, rng: np.random.Generator, motion_px: tuple[float, float] = (0.0, 0.0),
              sheared: bool = False) -> np.ndarray:
        """The degraded frame; `sheared=True` when the caller already folded `shear` into its render."""
        out = frame
        if not sheared and self.rolling_shutter_px and abs(motion_px[0]) > 1e-3:
            out = cv2.warpAffine(out, self.shear(motion_px)[:2], (out.shape[1], out.shape[0]),
                                 flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        if self.blur_sigma > 0:
            out = cv2.GaussianBlur(out, (0, 0), self.blur_sigma)
        work = out.astype(np.float32) * self.gain
        if self.noise_std > 0:
            work += rng.normal(0.0, self.noise_std, work.shape).astype(np.float32)
        out = np.clip(work, 0, 255).astype(np.uint8)
        if self.jpeg_quality < 100:
            ok, data = cv2.imencode(".jpg", cv2.cvtColor(out, cv2.COLOR_RGB2BGR),
                                    [cv2.IMWRITE_JPEG_QUALITY, int(self.jpeg_quality)])
            assert ok
            out = cv2.cvtColor(cv2.imdecode(data, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
        return out


def camera_matrix() -> np.ndarray:
    return np.array([[FOCAL_PX, 0.0, FRAME_W / 2], [0.0, FOCAL_PX, FRAME_H / 2], [0.0, 0.0, 1.0]])


def background(rng: np.random.Generator, photo: np.ndarray | None = None) -> np.ndarray:
    """A textured, slightly out-of-focus scene behind the subject: a blurred crop of `photo`
    (e.g. a noface/ image) when given, else a lit wall with a door frame and low-frequency
    texture. Never a face, so detections belong to the presentation."""
    if photo is not None:
        h, w = photo.shape[:2]
        scale = max(FRAME_W / w, FRAME_H / h) * float(rng.uniform(1.0, 1.6))
        big = cv2.resize(photo, (int(math.ceil(w * scale)), int(math.ceil(h * scale))), interpolation=cv2.INTER_AREA)
        y0 = int(rng.integers(0, big.shape[0] - FRAME_H + 1))
        x0 = int(rng.integers(0, big.shape[1] - FRAME_W + 1))
        return cv2.GaussianBlur(big[y0:y0 + FRAME_H, x0:x0 + FRAME_W], (0, 0), 3.0)
    top, bottom = rng.uniform(60, 220, 3), rng.uniform(40, 200, 3)
    ramp = np.linspace(0.0, 1.0, FRAME_H)[:, None, None]
    image = (top * (1 - ramp) + bottom * ramp) * np.ones((1, FRAME_W, 1))
    coarse = rng.normal(0.0, 16.0, (12, 16, 1)) + rng.normal(0.0, 4.0, (12, 16, 3))  # mostly light, little hue
    image += cv2.resize(coarse, (FRAME_W, FRAME_H), interpolation=cv2.INTER_CUBIC)
    image += rng.normal(0.0, 4.0, image.shape)
    x = int(rng.integers(40, 200)) if rng.random() < 0.5 else int(rng.integers(440, 600))
    color = rng.uniform(30, 230, 3)
    image[:, x:x + int(rng.integers(12, 40))] = color  # a door frame / shelf edge
    return np.clip(cv2.GaussianBlur(image, (0, 0), 1.5), 0, 255).astype(np.uint8)


def _smooth_walk(rng: np.random.Generator, n: int, dims: int, step: float, keep: float = 0.92) -> np.ndarray:
    """(n, dims) hand tremor: a mean-reverting random walk, smoothed, so it drifts and settles
    like a hand rather than jumping like white noise."""
    out = np.zeros((n + 8, dims))
    for i in range(1, n + 8):
        out[i] = keep * out[i - 1] + rng.normal(0.0, step, dims)
    kernel = np.ones(5) / 5
    return np.stack([np.convolve(out[:, d], kernel, mode="same") for d in range(dims)], axis=1)[4:n + 4]


def _rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
    """Camera-frame rotation (x right, y down, z forward); positive yaw turns the sheet's normal
    (initially toward the camera) to smaller image x, i.e. "left"."""
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    cr, sr = math.cos(roll), math.sin(roll)
    r_yaw = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    r_pitch = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    r_roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
    return r_roll @ r_yaw @ r_pitch


def _ease(x: np.ndarray | float) -> np.ndarray | float:
    """0 -> 1 smoothstep (a hand or a head accelerates and decelerates)."""
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


# ---------------------------------------------------------------------------------- presentations

@dataclass
class Pose:
    """The sheet/screen in camera coordinates at one frame (metres, radians; bend = 1/radius)."""

    yaw: float
    pitch: float
    roll: float
    t: np.ndarray  # where the sheet's pivot lands
    bend: float = 0.0


@dataclass
class Presentation:
    """One presentation attempt: `frame(i)` is what the door camera records at time i / fps."""

    species: str
    attack: bool
    source: str
    seed: int
    fps: float
    duration_s: float

    @property
    def n_frames(self) -> int:
        return int(round(self.fps * self.duration_s))

    def _check(self, index: int, prompt: str | None, prompt_index: int | None) -> None:
        if not 0 <= index < self.n_frames:
            raise IndexError(f"frame {index} outside 0..{self.n_frames - 1}")
        if prompt is not None and (prompt not in PROMPTS or prompt_index is None or prompt_index < 0):
            raise ValueError(f"prompt must be one of {PROMPTS} with a prompt_index >= 0, "
                             f"got {prompt!r}, {prompt_index!r}")

    def reaction_frames(self) -> int:
        """Frames between a prompt and the start of the reaction (a human's 0.4-0.8 s, seeded)."""
        return int(round(np.random.default_rng([self.seed, 7]).uniform(0.4, 0.8) * self.fps))

    def frame(self, index: int, prompt: str | None = None, prompt_index: int | None = None) -> np.ndarray:
        """RGB uint8 (480, 640, 3). `prompt` ("left"/"right", see the module docstring) is shown to
        the subject from frame `prompt_index` on; subjects that can react do so after
        `reaction_frames()`, the others ignore it."""
        raise NotImplementedError  # every concrete presentation below overrides this

    def frames(self, indices: list[int] | range | None = None, prompt: str | None = None,
               prompt_index: int | None = None) -> list[np.ndarray]:
        indices = range(self.n_frames) if indices is None else indices
        return [self.frame(i, prompt, prompt_index) for i in indices]


@dataclass
class _Surface(Presentation):
    """A flat or bent textured sheet in front of the camera (a print, or a phone's screen)."""

    effects: CameraEffects = field(default_factory=CameraEffects)
    texture: np.ndarray = field(default=None, repr=False)  # the sheet as printed, RGB uint8
    metres_per_px: float = 0.0  # size of one texture pixel on the sheet
    pivot_px: tuple[float, float] = (0.0, 0.0)  # texture point the hand rotates the sheet about
    face_center_px: tuple[float, float] = (0.0, 0.0)
    backdrop: np.ndarray = field(default=None, repr=False)
    light: np.ndarray = field(default=None, repr=False)
    _poses: list[Pose] = field(default_factory=list, repr=False)
    _on_cue_yaw: float = 0.0

    # ---- geometry
    def pose(self, index: int, prompt: str | None = None, prompt_index: int | None = None) -> Pose:
        """The sheet's pose at frame `index` (a print turned on cue reacts to the prompt)."""
        base = self._poses[index]
        if self.species not in REACTIVE_SPECIES or prompt is None:
            return base
        start = prompt_index + self.reaction_frames()
        turn_s = 0.4 + 0.2 * np.random.default_rng([self.seed, 8]).random()
        progress = float(_ease((index - start) / (turn_s * self.fps)))
        sign = 1.0 if prompt == "left" else -1.0
        return Pose(base.yaw + sign * self._on_cue_yaw * progress, base.pitch, base.roll, base.t, base.bend)

    def _sheet_points(self, uv_px: np.ndarray, pose: Pose) -> np.ndarray:
        """Texture pixels (N, 2) -> camera-frame 3D points (N, 3) of the (possibly bent) sheet."""
        u = (uv_px[:, 0] - self.pivot_px[0]) * self.metres_per_px
        v = (uv_px[:, 1] - self.pivot_px[1]) * self.metres_per_px
        if abs(pose.bend) > 1e-6:
            # Bent like a cylinder whose axis runs along the sheet's v (the hand squeezes the sides):
            # arc length u from the centre column; edges come toward the camera for bend > 0.
            cu = (self.face_center_px[0] - self.pivot_px[0]) * self.metres_per_px
            s = u - cu
            x = np.sin(pose.bend * s) / pose.bend + cu
            z = -(1 - np.cos(pose.bend * s)) / pose.bend
        else:
            x, z = u, np.zeros_like(u)
        local = np.stack([x, v, z], axis=1)
        return local @ _rotation(pose.yaw, pose.pitch, pose.roll).T + pose.t

    @staticmethod
    def _project(points: np.ndarray) -> np.ndarray:
        return (points[:, :2] / points[:, 2:3]) * FOCAL_PX + np.array([FRAME_W / 2, FRAME_H / 2])

    def _plane_homography(self, pose: Pose) -> np.ndarray:
        """Texture pixel -> image pixel for a flat sheet (before camera effects)."""
        rot = _rotation(pose.yaw, pose.pitch, pose.roll)
        m = self.metres_per_px
        to_sheet = np.array([[m, 0, -self.pivot_px[0] * m], [0, m, -self.pivot_px[1] * m], [0, 0, 1]])
        h = camera_matrix() @ np.column_stack([rot[:, 0], rot[:, 1], pose.t]) @ to_sheet
        return h / h[2, 2]

    def _motion(self, index: int, prompt: str | None, prompt_index: int | None) -> tuple[float, float]:
        """Image motion (px/frame) of the face centre, which drives the rolling-shutter shear."""
        if index == 0:
            return (0.0, 0.0)
        c = np.array([self.face_center_px], np.float64)
        now = self._project(self._sheet_points(c, self.pose(index, prompt, prompt_index)))[0]
        before = self._project(self._sheet_points(c, self.pose(index - 1, prompt, prompt_index)))[0]
        return (float(now[0] - before[0]), float(now[1] - before[1]))

    def ground_truth_homography(self, index: int, prompt: str | None = None,
                                prompt_index: int | None = None) -> np.ndarray:
        """3x3 map from texture (photo) pixels to the pixels of `frame(index)`, rolling shutter
        included; the face's landmarks on a flat print move exactly by these maps."""
        pose = self.pose(index, prompt, prompt_index)
        if abs(pose.bend) > 1e-6:
            raise ValueError(f"{self.species} is not flat at frame {index}: no single homography")
        h = self.effects.shear(self._motion(index, prompt, prompt_index)) @ self._plane_homography(pose)
        return h / h[2, 2]

    # ---- appearance
    def _texture_at(self, index: int, pose: Pose) -> np.ndarray:
        return self.texture

    def _shade(self, normal: np.ndarray) -> float:
        """Lambert shading of the sheet: brightness follows its angle to the light."""
        return float(0.55 + 0.5 * max(0.0, float(-normal @ self.light)))

    def _render(self, index: int, prompt: str | None,
                prompt_index: int | None) -> tuple[np.ndarray, tuple[float, float]]:
        pose = self.pose(index, prompt, prompt_index)
        motion = self._motion(index, prompt, prompt_index)
        shear = self.effects.shear(motion)
        texture = self._texture_at(index, pose)
        canvas = self.backdrop.copy()
        th, tw = texture.shape[:2]
        rot = _rotation(pose.yaw, pose.pitch, pose.roll)
        if abs(pose.bend) <= 1e-6:
            shaded = np.clip(texture.astype(np.float32) * self._shade(rot[:, 2]), 0, 255).astype(np.uint8)
            cv2.warpPerspective(shaded, shear @ self._plane_homography(pose), (FRAME_W, FRAME_H), dst=canvas,
                                flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_TRANSPARENT)
            return canvas, motion
        # A bent sheet is drawn as vertical flat strips (exact facets of the cylinder), far ones first.
        edges = np.linspace(0, tw, BENT_STRIPS + 1)
        strips = []
        for a, b in zip(edges[:-1], edges[1:], strict=True):
            corners = np.array([[a, 0], [b, 0], [b, th], [a, th]], np.float64)
            world = self._sheet_points(corners, pose)
            normal = np.cross(world[1] - world[0], world[3] - world[0])
            normal = -normal / max(np.linalg.norm(normal), 1e-12)
            strips.append((float(world[:, 2].mean()), a, b, corners, world, normal))
        for _, a, b, corners, world, normal in sorted(strips, key=lambda s: -s[0]):
            image = cv2.perspectiveTransform(self._project(world)[None], shear)[0]
            x0, y0 = np.floor(image.min(axis=0)).astype(int) - 1
            x1, y1 = np.ceil(image.max(axis=0)).astype(int) + 1
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, FRAME_W), min(y1, FRAME_H)
            if x1 <= x0 or y1 <= y0:
                continue
            ia, ib = int(math.floor(a)), min(int(math.ceil(b)) + 1, tw)
            piece = np.clip(texture[:, ia:ib].astype(np.float32) * self._shade(normal), 0, 255).astype(np.uint8)
            src = (corners - np.array([ia, 0])).astype(np.float32)
            h = cv2.getPerspectiveTransform(src, (image - np.array([x0, y0])).astype(np.float32))
            size = (x1 - x0, y1 - y0)
            warped = cv2.warpPerspective(piece, h, size, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
            mask = np.zeros((size[1], size[0]), np.uint8)
            cv2.fillConvexPoly(mask, np.round((image - np.array([x0, y0])) * 16).astype(np.int32), 255,
                               lineType=cv2.LINE_AA, shift=4)
            alpha = (mask.astype(np.float32) / 255.0)[:, :, None]
            region = canvas[y0:y1, x0:x1].astype(np.float32)
            canvas[y0:y1, x0:x1] = (alpha * warped + (1 - alpha) * region).astype(np.uint8)
        return canvas, motion

    def frame(self, index: int, prompt: str | None = None, prompt_index: int | None = None) -> np.ndarray:
        self._check(index, prompt, prompt_index)
        if self.species not in REACTIVE_SPECIES:
            prompt = prompt_index = None  # cannot react: the frame is the same with or without a prompt
        canvas, motion = self._render(index, prompt, prompt_index)
        return self.effects.apply(canvas, np.random.default_rng([self.seed, index, 1]), motion, sheared=True)


@dataclass
class _PhoneReplay(_Surface):
    """A phone screen showing a real video, bezel and all; it plays on whatever is asked."""

    video_frames: list[np.ndarray] = field(default_factory=list, repr=False)
    screen_box: tuple[int, int, int, int] = (0, 0, 0, 0)  # x, y, w, h of the screen inside the texture
    video_fps: float = 30.0
    start_offset_s: float = 0.0

    def video_index(self, index: int) -> int:
        """Source frame shown at `index`: the clip played forward and back (no jump to a loop start)."""
        n = len(self.video_frames)
        k = int(round((self.start_offset_s + index / self.fps) * self.video_fps))
        period = 2 * (n - 1)
        k %= period
        return k if k < n else period - k

    def _texture_at(self, index: int, pose: Pose) -> np.ndarray:
        texture = self.texture.copy()
        x, y, w, h = self.screen_box
        content = cv2.resize(self.video_frames[self.video_index(index)], (w, h), interpolation=cv2.INTER_AREA)
        screen = 255.0 * (content.astype(np.float32) / 255.0) ** 0.85  # the display's own gamma
        screen = 14.0 + screen * (235.0 / 255.0) * np.array([0.96, 0.99, 1.04])  # raised black level, cool tint
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        rng = np.random.default_rng([self.seed, 3])
        period = float(rng.uniform(2.2, 3.0))  # pixel grid beating with the camera's sampling: moire
        screen *= 1.0 + 0.035 * np.sin(2 * np.pi * (xx * math.cos(0.3) + yy * math.sin(0.3)) / period)[:, :, None]
        # Glare: a reflection that slides across the glass as the phone turns.
        gx = w * (0.3 + 1.2 * pose.yaw + 0.1 * rng.random())
        gy = h * (0.25 - 1.2 * pose.pitch)
        glare = np.exp(-(((xx - gx) / (0.35 * w)) ** 2 + ((yy - gy) / (0.2 * h)) ** 2))
        screen += 70.0 * glare[:, :, None]
        texture[y:y + h, x:x + w] = np.clip(screen, 0, 255).astype(np.uint8)
        return texture

    def _shade(self, normal: np.ndarray) -> float:
        return 1.0  # a screen emits its own light


# ------------------------------------------------------------------------------------- attacks

def _print_texture(photo: np.ndarray, face_box: tuple[float, float, float, float] | None,
                   rng: np.random.Generator) -> tuple[np.ndarray, float, tuple[float, float], float]:
    """The photo as printed on paper (white margin, a thumb, ink gamut, paper grain), scaled so the
    face is ~260 px tall; returns (texture, face height px, face centre, margin px)."""
    h, w = photo.shape[:2]
    if face_box is None:  # a portrait: assume the face fills the middle ~45 % of the height
        face_box = (w * 0.3, h * 0.25, w * 0.4, h * 0.45)
    fx, fy, fw, fh = face_box
    scale = 260.0 / fh
    photo = cv2.resize(photo, (max(int(round(w * scale)), 1), max(int(round(h * scale)), 1)),
                       interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_CUBIC)
    inked = 18.0 + photo.astype(np.float32) * (215.0 / 255.0)  # paper is not white enough, ink not black enough
    grey = inked.mean(axis=2, keepdims=True)
    inked = grey + 0.85 * (inked - grey)
    margin = int(round(0.06 * max(photo.shape[:2])))
    sheet = np.full((photo.shape[0] + 2 * margin, photo.shape[1] + 2 * margin, 3), 238.0, np.float32)
    sheet[margin:margin + photo.shape[0], margin:margin + photo.shape[1]] = inked
    sheet += rng.normal(0.0, 3.0, sheet.shape[:2])[:, :, None]  # paper grain
    # A thumb holding the bottom edge.
    cx = int(sheet.shape[1] * rng.uniform(0.25, 0.75))
    cv2.ellipse(sheet, (cx, sheet.shape[0] + margin // 2), (int(margin * 1.3), int(margin * 2.2)), 0, 0, 360,
                tuple(float(c) for c in rng.uniform([170, 110, 90], [220, 160, 130])), -1, cv2.LINE_AA)
    center = ((fx + fw / 2) * scale + margin, (fy + fh / 2) * scale + margin)
    return np.clip(sheet, 0, 255).astype(np.uint8), fh * scale, center, float(margin)


def _species_motion(species: str, rng: np.random.Generator, n: int, fps: float) -> dict[str, np.ndarray]:
    """Per-frame yaw, pitch, roll (rad), dx, dy (m), distance factor and bend (1/m) of a species."""
    t = np.arange(n) / fps
    zero = np.zeros(n)
    rad = math.radians
    jitter = _smooth_walk(rng, n, 6, 1.0)
    motion = {"yaw": jitter[:, 0] * rad(0.6), "pitch": jitter[:, 1] * rad(0.6), "roll": jitter[:, 2] * rad(0.5),
              "dx": jitter[:, 3] * 0.0015, "dy": jitter[:, 4] * 0.0015, "dist": 1.0 + jitter[:, 5] * 0.006,
              "bend": zero.copy()}
    phase = rng.uniform(0, 2 * math.pi)
    if species == "print_turned":
        motion["yaw"] += rad(rng.uniform(25, 35)) * np.sin(2 * math.pi * t / rng.uniform(2.0, 3.5) + phase)
    elif species == "print_tilted":
        motion["pitch"] += rad(rng.uniform(20, 30)) * np.sin(2 * math.pi * t / rng.uniform(2.0, 3.5) + phase)
    elif species == "print_shaken":
        f = rng.uniform(1.2, 2.5)
        motion["dx"] += rng.uniform(0.02, 0.04) * np.sin(2 * math.pi * f * t + phase)
        motion["dy"] += rng.uniform(0.01, 0.025) * np.sin(2 * math.pi * f * 1.3 * t + 2 * phase)
        motion["roll"] += rad(rng.uniform(8, 15)) * np.sin(2 * math.pi * f * 0.7 * t + 3 * phase)
    elif species == "print_approaching":
        near = rng.uniform(0.75, 0.85)
        motion["dist"] *= 1.35 - (1.35 - near) * _ease(t / max(t[-1], 1e-6))
    elif species == "print_bent":
        motion["bend"] = rng.uniform(3.0, 5.0) + rng.uniform(2.0, 3.0) * np.sin(2 * math.pi * t / rng.uniform(1.5, 3)
                                                                                 + phase)
        motion["yaw"] += rad(rng.uniform(12, 22)) * np.sin(2 * math.pi * t / rng.uniform(2.5, 4) + 2 * phase)
    elif species == "print_flicked":
        # Flicks like blinks: a 0.15-0.25 s pitch pulse every 0.8-2 s.
        start = rng.uniform(0.2, 0.8)
        while start < t[-1]:
            width, amp = rng.uniform(0.15, 0.25), rad(rng.uniform(10, 18))
            inside = (t >= start) & (t < start + width)
            motion["pitch"][inside] += amp * np.sin(math.pi * (t[inside] - start) / width)
            start += width + rng.uniform(0.8, 2.0)
    return motion


def make_attack(species: str, photo: np.ndarray | None, seed: int, fps: float = 15.0, duration_s: float = 6.0,
                effects: CameraEffects | None = None, face_box: tuple[float, float, float, float] | None = None,
                backdrop_photo: np.ndarray | None = None, video_path: str | Path | None = None,
                detector: FaceDetector | None = None) -> Presentation:
    """One attack presentation of `species` (see SPECIES and docs/design.md).

    `photo` is the printed face photo (RGB) and `face_box` its detected face (without it the face is
    assumed to fill the middle of a portrait); `phone_replay` ignores the photo and plays the
    longest single-face shot of `video_path` (default: the Hamilton clip), which needs `detector`
    to frame the face. `backdrop_photo` (e.g. a noface/ image) becomes the blurred background.
    """
    if species not in SPECIES:
        raise ValueError(f"unknown species {species!r}; one of {', '.join(SPECIES)}")
    rng = np.random.default_rng([seed, 0])
    effects = effects if effects is not None else CameraEffects.seeded(rng)
    n = int(round(fps * duration_s))
    backdrop = background(rng, backdrop_photo)
    target_face_px = float(rng.uniform(150, 200))
    light = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.8, -0.3), 1.0])
    light /= np.linalg.norm(light)
    if species == "phone_replay":
        if detector is None:
            raise ValueError("phone_replay needs a detector to frame the face of the replayed video")
        video_path = Path(video_path) if video_path is not None else None
        if video_path is None:
            raise ValueError("phone_replay needs video_path (e.g. ../shared/faces/videos/" + REPLAY_VIDEO + ")")
        track = max(face_tracks(video_path, detector), key=lambda tr: len(tr.frames))
        clip = load_clip(video_path, int(track.frames[0]), int(track.frames[-1]) + 1,
                         following_crops(track, aspect=9 / 16, face_fraction=0.42))
        screen_w, screen_h = 270, 480  # texture px of a 6.5" phone held upright
        bezel = int(rng.integers(14, 24))
        texture = np.zeros((screen_h + 2 * bezel, screen_w + 2 * bezel, 3), np.uint8)
        texture[:] = (18, 18, 20)
        metres_per_px = 0.068 / screen_w
        face_px = 0.42 * screen_h
        center = (bezel + screen_w / 2, bezel + screen_h / 2)
        source = f"{video_path.name}[{int(track.frames[0])}:{int(track.frames[-1]) + 1}] on a phone"
        extra = {"video_frames": clip, "screen_box": (bezel, bezel, screen_w, screen_h),
                 "video_fps": video_fps(video_path), "start_offset_s": float(rng.uniform(0, 1.5))}
    else:
        if photo is None:
            raise ValueError(f"{species} needs the photo to print")
        texture, face_px, center, _ = _print_texture(photo, face_box, rng)
        metres_per_px = FACE_HEIGHT_M / face_px
        source = "photo"
        extra = {}
    face_m = face_px * metres_per_px
    distance = FOCAL_PX * face_m / target_face_px
    offset = rng.uniform([-60, -40], [60, 20]) * distance / FOCAL_PX
    motion = _species_motion(species, rng, n, fps)
    pivot = center
    if species == "print_flicked":  # flicked about the eye line, which is what fakes a blink
        pivot = (center[0], center[1] - 0.15 * face_px)
    poses = []
    for i in range(n):
        z = distance * motion["dist"][i]
        t = np.array([offset[0] + motion["dx"][i], offset[1] + motion["dy"][i] + (pivot[1] - center[1]) * metres_per_px,
                      z])
        poses.append(Pose(float(motion["yaw"][i]), float(motion["pitch"][i]), float(motion["roll"][i]), t,
                          float(motion["bend"][i])))
    cls = _PhoneReplay if species == "phone_replay" else _Surface
    presentation = cls(species=species, attack=True, source=source, seed=seed, fps=fps, duration_s=duration_s,
                       effects=effects, texture=texture, metres_per_px=metres_per_px, pivot_px=pivot,
                       face_center_px=center, backdrop=backdrop, light=light, _poses=poses,
                       _on_cue_yaw=math.radians(float(np.random.default_rng([seed, 9]).uniform(35, 45))), **extra)
    return presentation


# ------------------------------------------------------------------------------------- videos

@functools.lru_cache(maxsize=4)
def _decode(path: str) -> tuple[np.ndarray, ...]:
    capture = cv2.VideoCapture(path)
    frames = []
    while True:
        ok, bgr = capture.read()
        if not ok:
            break
        frames.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    capture.release()
    if not frames:
        raise ValueError(f"{path}: no frames could be decoded")
    for frame in frames:
        frame.flags.writeable = False
    return tuple(frames)


def video_frames(video_path: str | Path) -> tuple[np.ndarray, ...]:
    """Every frame of a video as RGB, decoded once and kept in memory (never written to disk)."""
    return _decode(str(Path(video_path).resolve()))


def video_fps(video_path: str | Path) -> float:
    capture = cv2.VideoCapture(str(video_path))
    fps = float(capture.get(cv2.CAP_PROP_FPS)) or 30.0
    capture.release()
    return fps


def shots(video_path: str | Path, threshold: float = CUT_THRESHOLD) -> list[tuple[int, int]]:
    """Continuous shots [start, stop): a cut is a jump in the mean absolute difference of small
    thumbnails of consecutive frames (ordinary motion stays well below it)."""
    frames = video_frames(video_path)
    thumbs = [cv2.resize(f, (64, 36), interpolation=cv2.INTER_AREA).astype(np.float32) for f in frames]
    cuts = [i for i in range(1, len(thumbs)) if np.abs(thumbs[i] - thumbs[i - 1]).mean() > threshold]
    bounds = [0, *cuts, len(frames)]
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def load_clip(video_path: str | Path, start: int, stop: int,
              crop: tuple[float, float, float, float] | list[tuple[float, float, float, float]] | None = None,
              size: tuple[int, int] = (FRAME_W, FRAME_H)) -> list[np.ndarray]:
    """Frames [start, stop) of a video, each cut to `crop` (x, y, w, h in source pixels, or one
    such box per frame; may reach past the border, which is filled by reflection) and resized to
    `size`."""
    frames = video_frames(video_path)
    if not 0 <= start < stop <= len(frames):
        raise IndexError(f"{video_path}: frames [{start}, {stop}) outside 0..{len(frames)}")
    if crop is None:
        return [cv2.resize(f, size, interpolation=cv2.INTER_AREA) for f in frames[start:stop]]
    crops = crop if isinstance(crop, list) else [crop] * (stop - start)
    out = []
    for frame, (x, y, w, h) in zip(frames[start:stop], crops, strict=True):
        matrix = np.array([[size[0] / w, 0, -x * size[0] / w], [0, size[1] / h, -y * size[1] / h]])
        flags = cv2.INTER_AREA if w > 1.5 * size[0] else cv2.INTER_LINEAR
        out.append(cv2.warpAffine(frame, matrix, size, flags=flags, borderMode=cv2.BORDER_REFLECT101))
    return out


@dataclass(frozen=True)
class Track:
    """One person's face through one shot (frames with a detection only)."""

    video: str
    shot: tuple[int, int]
    frames: np.ndarray  # source frame indices, increasing
    centers: np.ndarray  # (N, 2) box centres, source pixels
    heights: np.ndarray  # (N,) box heights
    yaws: np.ndarray  # (N,) yaw proxy, median-filtered over 5 detections


@dataclass(frozen=True)
class Segment:
    """A stretch of one track in which the head turns: frames [start, stop) of `video`."""

    video: str
    start: int
    stop: int
    direction: str  # "left": yaw proxy falls (nose toward smaller x); "right": it rises
    yaw_change: float
    track: Track = field(repr=False, compare=False)


def _detect_scaled(detector: FaceDetector, frame: np.ndarray, max_side: int) -> list[Face]:
    scale = min(1.0, max_side / max(frame.shape[:2]))
    if scale == 1.0:
        return detector.detect(frame)
    small = cv2.resize(frame, (int(frame.shape[1] * scale), int(frame.shape[0] * scale)), interpolation=cv2.INTER_AREA)
    return [Face(tuple(v / scale for v in f.box), f.score, f.landmarks / np.float32(scale))
            for f in detector.detect(small)]


_TRACK_CACHE: dict[tuple[str, int], list[Track]] = {}


def face_tracks(video_path: str | Path, detector: FaceDetector, min_height: float = 60.0,
                min_length: int = 20) -> list[Track]:
    """Faces linked frame to frame (nearest centre within half a box) inside each shot, never
    across a cut; tracks shorter than `min_length` detections or smaller than `min_height` px
    (median box height, source pixels) are dropped. Cached per (video, detector) in memory."""
    key = (str(Path(video_path).resolve()), id(detector))
    if key in _TRACK_CACHE:
        return _TRACK_CACHE[key]
    frames = video_frames(video_path)
    tracks: list[Track] = []
    for shot in shots(video_path):
        open_tracks: list[dict] = []
        for index in range(*shot):
            for face in _detect_scaled(detector, frames[index], 960):
                x, y, w, h = face.box
                center = np.array([x + w / 2, y + h / 2])
                best = None
                for tr in open_tracks:
                    gap = index - tr["frames"][-1]
                    dist = np.linalg.norm(tr["centers"][-1] - center)
                    near = 0 < gap <= 4 and dist < 0.5 * max(h, tr["heights"][-1])
                    if near and 0.7 < h / tr["heights"][-1] < 1.4 and (best is None or dist < best[0]):
                        best = (dist, tr)
                if best is None:
                    open_tracks.append({"frames": [index], "centers": [center], "heights": [h],
                                        "yaws": [yaw_proxy(face.landmarks)]})
                else:
                    tr = best[1]
                    tr["frames"].append(index)
                    tr["centers"].append(center)
                    tr["heights"].append(h)
                    tr["yaws"].append(yaw_proxy(face.landmarks))
        for tr in open_tracks:
            if len(tr["frames"]) >= min_length and float(np.median(tr["heights"])) >= min_height:
                yaws = np.asarray(tr["yaws"])
                padded = np.pad(yaws, 2, mode="edge")
                smooth = np.array([np.median(padded[i:i + 5]) for i in range(len(yaws))])
                tracks.append(Track(str(video_path), shot, np.asarray(tr["frames"]), np.asarray(tr["centers"]),
                                    np.asarray(tr["heights"]), smooth))
    _TRACK_CACHE[key] = tracks
    return tracks


def turn_segments(video_path: str | Path, detector: FaceDetector, min_change: float = 0.25,
                  max_duration_s: float = 2.0, hysteresis: float = 0.12) -> list[Segment]:
    """Head turns in a video: stretches of a face track between turning points of its (smoothed)
    yaw proxy that change it by at least `min_change` within `max_duration_s`."""
    fps = video_fps(video_path)
    found = []
    for track in face_tracks(video_path, detector):
        yaws = track.yaws
        # Turning points with hysteresis: the yaw must come back by `hysteresis` to end a run.
        extrema = [0]
        direction = 0
        for i in range(1, len(yaws)):
            last = extrema[-1]
            if (direction == 1 and yaws[i] >= yaws[last]) or (direction == -1 and yaws[i] <= yaws[last]):
                extrema[-1] = i  # the run goes on: move its end
            elif abs(yaws[i] - yaws[last]) >= hysteresis:
                direction = 1 if yaws[i] > yaws[last] else -1
                extrema.append(i)
        for a, b in zip(extrema[:-1], extrema[1:], strict=True):
            change = float(yaws[b] - yaws[a])
            start, stop = int(track.frames[a]), int(track.frames[b]) + 1
            if abs(change) >= min_change and (stop - start) / fps <= max_duration_s:
                found.append(Segment(str(video_path), start, stop, "right" if change > 0 else "left", change, track))
    return found


def track_crop(track: Track, frames: tuple[int, int] | None = None, aspect: float = FRAME_W / FRAME_H,
               face_fraction: float = 170 / FRAME_H) -> tuple[float, float, float, float]:
    """A fixed crop (x, y, w, h) in which the tracked face is `face_fraction` of the height and
    stays inside while it moves during `frames` [start, stop) (a fixed door camera)."""
    keep = np.ones(len(track.frames), bool) if frames is None else \
        (track.frames >= frames[0]) & (track.frames < frames[1])
    centers, heights = track.centers[keep], track.heights[keep]
    h = float(np.median(heights)) / face_fraction
    w = h * aspect
    lo, hi = centers.min(axis=0), centers.max(axis=0)
    mid = (lo + hi) / 2
    return (float(mid[0] - w / 2), float(mid[1] - h / 2 + 0.05 * h), w, h)


def following_crops(track: Track, aspect: float, face_fraction: float) -> list[tuple[float, float, float, float]]:
    """One crop per source frame of the track's span, following its face smoothly (how someone
    zoomed in on a face when preparing a replay)."""
    span = np.arange(int(track.frames[0]), int(track.frames[-1]) + 1)
    h = float(np.median(track.heights)) / face_fraction
    w = h * aspect
    cx = np.interp(span, track.frames, track.centers[:, 0])
    cy = np.interp(span, track.frames, track.centers[:, 1])
    kernel = np.ones(9) / 9
    cx = np.convolve(np.pad(cx, 4, mode="edge"), kernel, mode="valid")
    cy = np.convolve(np.pad(cy, 4, mode="edge"), kernel, mode="valid")
    return [(float(x - w / 2), float(y - h / 2 + 0.05 * h), w, h) for x, y in zip(cx, cy, strict=True)]


# ----------------------------------------------------------------------------------- bona fide

@dataclass
class BonaFide(Presentation):
    """A real person: a calm stretch until prompted, then, after a human reaction delay, a real head
    turn from the same shot (mirrored when the recorded turn went the other way)."""

    effects: CameraEffects = field(default_factory=CameraEffects)
    segment: Segment = field(default=None, repr=False)
    calm: tuple[int, int] = (0, 0)
    crop: tuple[float, float, float, float] = (0, 0, 0, 0)
    video_fps: float = 30.0

    def source_frames(self, prompt: str | None = None, prompt_index: int | None = None) -> list[int]:
        """The source frame shown at each index: all inside one shot by construction, and continuous:
        after the reaction the video plays on from wherever the calm stretch was into the turn."""
        out: list[int] = []
        src_per_frame = self.video_fps / self.fps
        calm_n = self.calm[1] - self.calm[0]
        react = None if prompt is None else prompt_index + self.reaction_frames()
        position: float | None = None  # source position once the subject reacts
        turn_n = self.segment.stop - self.segment.start
        for i in range(self.n_frames):
            if react is None or i < react:
                k = int(round(i * src_per_frame)) % max(2 * (calm_n - 1), 1)
                out.append(self.calm[0] + (k if k < calm_n else 2 * (calm_n - 1) - k))
                continue
            position = float(out[-1] if out else self.segment.start) if position is None else position + src_per_frame
            if position < self.segment.start:  # the rest of the calm stretch, up to where the turn starts
                out.append(int(round(position)))
                continue
            k = int(round(position - self.segment.start))
            if k >= turn_n:  # hold the turned pose, swaying over its last frames
                tail = min(6, turn_n - 1)
                k = turn_n - 1 - abs((k - turn_n) % (2 * tail) - tail) if tail > 0 else turn_n - 1
            out.append(self.segment.start + k)
        return out

    def mirrored(self, prompt: str | None) -> bool:
        """Mirror the whole presentation when the recorded turn goes the other way than asked."""
        return prompt is not None and prompt != self.segment.direction

    def frame(self, index: int, prompt: str | None = None, prompt_index: int | None = None) -> np.ndarray:
        self._check(index, prompt, prompt_index)
        src = self.source_frames(prompt, prompt_index)
        image = load_clip(self.segment.video, src[index], src[index] + 1, self.crop)[0]
        if self.mirrored(prompt):
            image = np.ascontiguousarray(image[:, ::-1])
        motion = (0.0, 0.0)
        if index > 0 and src[index] != src[index - 1]:
            track = self.segment.track
            a, b = (np.interp(s, track.frames, track.centers[:, 0]) for s in (src[index - 1], src[index]))
            motion = ((b - a) * FRAME_W / self.crop[2] * (-1 if self.mirrored(prompt) else 1), 0.0)
        return self.effects.apply(image, np.random.default_rng([self.seed, index, 2]), motion)


def _calm_window(track: Track, avoid: tuple[int, int], length: int) -> tuple[int, int] | None:
    """The stretch the subject shows before the prompt: the steadiest `length` frames of the track
    that end right before the turn, so the switch to the turn is continuous (no jump a tracker would
    take for another face). When a long turn starts the track, its first few frames played back and
    forth."""
    best = None
    frames = track.frames
    for a in range(len(frames) - length + 1):
        start, stop = int(frames[a]), int(frames[a + length - 1]) + 1
        if stop - start > 1.5 * length or not stop <= avoid[0] <= stop + 2:
            continue
        spread = float(np.ptp(track.yaws[a:a + length]))
        if best is None or spread < best[0]:
            best = (spread, (start, stop))
    if best is not None:
        return best[1]
    if avoid[1] - avoid[0] < 30:  # short tracks at a shot's start are camera whips more than head turns
        return None
    return avoid[0], avoid[0] + 4


def bona_fide_presentations(video_dir: str | Path, seed: int, detector: FaceDetector, fps: float = 15.0,
                            duration_s: float = 6.0, effects: CameraEffects | None = None) -> list[BonaFide]:
    """One bona fide presentation per head-turn segment of the videos in `video_dir` (see
    TURN_TABLE), framed like a door camera (face ~170 px tall) from one continuous shot."""
    presentations = []
    for video in sorted(Path(video_dir).glob("*.mp4")):
        if len(video_frames(video)) < 30:
            continue  # too short to hold a calm stretch and a turn
        src_fps = video_fps(video)
        for number, segment in enumerate(turn_segments(video, detector)):
            calm = _calm_window(segment.track, (segment.start, segment.stop), max(int(0.8 * src_fps), 8))
            if calm is None:
                continue
            crop = track_crop(segment.track, (min(calm[0], segment.start), max(calm[1], segment.stop)))
            rng = np.random.default_rng([seed, number, len(presentations)])
            presentations.append(BonaFide(
                species="bona_fide", attack=False,
                source=f"{video.name}[{calm[0]}:{calm[1]}] then [{segment.start}:{segment.stop}] ({segment.direction})",
                seed=int(rng.integers(2**31)), fps=fps, duration_s=duration_s,
                effects=effects if effects is not None else CameraEffects.seeded(rng), segment=segment, calm=calm,
                crop=crop, video_fps=src_fps))
    return presentations
