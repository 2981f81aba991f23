"""Enrollment quality gates: one clear reason per refused photo.

A bad enrollment photo is worse than none: a blurry or tiny face gives an embedding far from the
person's real ones (so the door stays shut for them) and, worse, closer to strangers'. Refusing
it at enrollment with a reason the operator can act on is cheap.

Sharpness is the variance of the Laplacian of the face box (no margin, so background texture
does not count), converted to gray and resized to 160x160 so faces of any size are judged on the
same scale the embedder sees. The default threshold comes from measuring real photos
(`python -m edge.quality_gates ../shared/faces/people --blur 2 3`, see docs/gallery.md).

Run as a module it prints that measurement for folders of photos.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.detector import Face
from edge.errors import NoFaceError

SHARPNESS_SIZE = 160
DEFAULT_MIN_FACE_PX = 40
DEFAULT_MIN_SHARPNESS = 10.0


class GateRefusal(NoFaceError):
    """A photo that is unfit for enrollment; the message says why and what to do."""


@dataclass(frozen=True)
class GateSettings:
    """Thresholds of the enrollment gates."""

    min_face_px: int = DEFAULT_MIN_FACE_PX
    min_sharpness: float = DEFAULT_MIN_SHARPNESS
    largest: bool = False


def sharpness(image: np.ndarray, box: tuple[float, float, float, float]) -> float:
    """Variance of the Laplacian of the face box, in gray, at 160x160 (higher: sharper)."""
    height, width = image.shape[:2]
    x, y, w, h = box
    x1, y1 = int(max(np.floor(x), 0)), int(max(np.floor(y), 0))
    x2, y2 = int(min(np.ceil(x + w), width)), int(min(np.ceil(y + h), height))
    if x2 <= x1 or y2 <= y1:
        return 0.0
    patch = cv2.cvtColor(np.ascontiguousarray(image[y1:y2, x1:x2]), cv2.COLOR_RGB2GRAY)
    interpolation = cv2.INTER_AREA if patch.shape[0] > SHARPNESS_SIZE else cv2.INTER_LINEAR
    patch = cv2.resize(patch, (SHARPNESS_SIZE, SHARPNESS_SIZE), interpolation=interpolation)
    return float(cv2.Laplacian(patch, cv2.CV_64F).var())


def select_face(image: np.ndarray, faces: list[Face], settings: GateSettings = GateSettings(),
                what: str = "image") -> Face:
    """The one face to enroll from a photo, or GateRefusal naming `what` and the reason."""
    if not faces:
        raise GateRefusal(f"{what}: no face found; use a photo where the face is clearly visible and at least "
                          f"{settings.min_face_px} px wide")
    if len(faces) > 1 and not settings.largest:
        raise GateRefusal(f"{what}: {len(faces)} faces found; use a photo of this person alone, or pass --largest "
                          f"to enroll the largest face")
    face = max(faces, key=lambda f: f.box[2] * f.box[3])
    w, h = face.box[2], face.box[3]
    if min(w, h) < settings.min_face_px:
        raise GateRefusal(f"{what}: face too small ({w:.0f}x{h:.0f} px, need at least {settings.min_face_px} px); "
                          f"use a closer or larger photo (or lower --min-face)")
    value = sharpness(image, face.box)
    if value < settings.min_sharpness:
        raise GateRefusal(f"{what}: face too blurry (sharpness {value:.1f}, need at least "
                          f"{settings.min_sharpness:g}); use a sharper photo (or lower --min-sharpness)")
    return face


def _measure(argv: list[str] | None = None) -> int:
    """Print the sharpness of the largest face of every photo, as taken and blurred."""
    from edge.detector import FaceDetector
    from edge.errors import EdgeError
    from edge.images import IMAGE_SUFFIXES, load_image

    parser = argparse.ArgumentParser(description="Sharpness of the largest face per photo (to set the blur gate).")
    parser.add_argument("folders", nargs="+", type=Path)
    parser.add_argument("--mtcnn-dir", default="models/mtcnn")
    parser.add_argument("--blur", type=float, nargs="*", default=[2.0, 3.0],
                        help="also measure each photo blurred with these Gaussian sigmas (in face-box/100 units)")
    parser.add_argument("--min-face", type=int, default=DEFAULT_MIN_FACE_PX)
    args = parser.parse_args(argv)
    try:
        detector = FaceDetector(args.mtcnn_dir, min_face_size=20)
    except (EdgeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    values: dict[str, list[float]] = {"original": []} | {f"sigma {s:g}": [] for s in args.blur}
    for folder in args.folders:
        for path in sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES):
            try:
                image = load_image(path)
            except EdgeError:
                continue
            faces = detector.detect(image)
            if not faces or min(faces[0].box[2:]) < args.min_face:
                continue
            face = faces[0]
            values["original"].append(sharpness(image, face.box))
            for sigma in args.blur:
                # Blur relative to the face size, so "sigma 2" means the same loss of detail for every photo.
                scaled = sigma * max(face.box[2], face.box[3]) / 100.0
                blurred = cv2.GaussianBlur(image, (0, 0), sigmaX=scaled)
                values[f"sigma {sigma:g}"].append(sharpness(blurred, face.box))
    print(f"{'photos':>14} {'n':>5} {'min':>8} {'p1':>8} {'p5':>8} {'p50':>8} {'p95':>8} {'max':>8}")
    for label, vals in values.items():
        if not vals:
            continue
        arr = np.array(vals)
        p = np.percentile(arr, [1, 5, 50, 95])
        print(f"{label:>14} {len(arr):5d} {arr.min():8.1f} {p[0]:8.1f} {p[1]:8.1f} {p[2]:8.1f} {p[3]:8.1f} "
              f"{arr.max():8.1f}")
    threshold = DEFAULT_MIN_SHARPNESS
    for label, vals in values.items():
        if vals:
            refused = float(np.mean(np.array(vals) < threshold))
            print(f"default gate {threshold:g} refuses {refused:6.1%} of {label}")
    return 0


if __name__ == "__main__":
    raise SystemExit(_measure())
