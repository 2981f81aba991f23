"""Face crops exactly as the embedding model expects them.

The 2018 FaceNet models were evaluated on MTCNN boxes widened by a 32 px margin and resized to
160x160 (their training crops had a 44 px margin), with fixed standardization (x - 127.5) / 128.
`method="box"` reproduces that;
`method="aligned"` first rotates and scales the face so the eyes and mouth land where they do on
an average upright box crop (a similarity transform from the five landmarks), which removes head
roll. Where the margin reaches past the image, `border="pad"` extends the image by repeating its
edge, so the face keeps its scale and aspect ratio; `border="clip"` (the original protocol) cuts
the margin off and stretches what is left. Measurement decides the defaults (docs/crops.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

# Where the five landmarks sit, on average, in a 160x160 box crop with a 32 px margin of an
# upright face: measured over 169 faces of ../shared/faces/people by tools/measure_crops.py
# (docs/crops.md), mirrored to be left-right symmetric.
# Order: left eye, right eye, nose, left mouth corner, right mouth corner (image left/right).
ALIGNED_TEMPLATE_160 = np.array(
    [[49.5, 60.7], [110.5, 60.7], [80.0, 90.6], [52.2, 113.6], [107.8, 113.6]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class CropSpec:
    """How to cut a face out of a frame for the embedder."""

    method: Literal["box", "aligned"] = "box"
    # 44 px, the margin of the training crops of the 2018 models, beat the 32 px of their LFW
    # evaluation on our photos once the margin is padded rather than clipped (docs/crops.md).
    margin_px: float = 44.0
    size: int = 160
    border: Literal["pad", "clip"] = "pad"


def crop_box(image: np.ndarray, box: tuple[float, float, float, float], margin_px: float = 32.0,
             size: int = 160, border: Literal["pad", "clip"] = "pad") -> np.ndarray:
    """Box widened by `margin_px` in total (half on each side), padded or clipped at the edges, resized."""
    height, width = image.shape[:2]
    x, y, w, h = box
    x1 = int(np.floor(x - margin_px / 2))
    y1 = int(np.floor(y - margin_px / 2))
    x2 = int(np.ceil(x + w + margin_px / 2))
    y2 = int(np.ceil(y + h + margin_px / 2))
    if x2 <= max(x1, 0) or y2 <= max(y1, 0) or x1 >= width or y1 >= height:
        raise ValueError(f"face box {box} lies outside the {width}x{height} image")
    if border == "clip":
        x1, y1, x2, y2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
    elif border != "pad":
        raise ValueError(f"unknown border {border!r}; choose 'pad' or 'clip'")
    overhang = max(0, -x1, -y1, x2 - width, y2 - height)
    if overhang:
        image = cv2.copyMakeBorder(image, overhang, overhang, overhang, overhang, cv2.BORDER_REPLICATE)
    patch = image[y1 + overhang:y2 + overhang, x1 + overhang:x2 + overhang]
    interpolation = cv2.INTER_AREA if patch.shape[0] > size else cv2.INTER_LINEAR
    return cv2.resize(patch, (size, size), interpolation=interpolation)


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping source points onto target (2x3)."""
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    src_mean, dst_mean = source.mean(axis=0), target.mean(axis=0)
    src, dst = source - src_mean, target - dst_mean
    # Umeyama's closed form for 2-D points.
    covariance = dst.T @ src / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    reflection = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        reflection[1, 1] = -1
    rotation = u @ reflection @ vt
    variance = (src**2).sum() / len(source)
    scale = np.trace(np.diag(singular) @ reflection) / variance if variance > 0 else 1.0
    translation = dst_mean - scale * rotation @ src_mean
    return np.hstack([scale * rotation, translation[:, None]]).astype(np.float32)


def crop_aligned(image: np.ndarray, landmarks: np.ndarray, size: int = 160) -> np.ndarray:
    """Warp the face so its landmarks match the template of an upright box crop."""
    template = ALIGNED_TEMPLATE_160 * (size / 160.0)
    matrix = similarity_transform(np.asarray(landmarks, dtype=np.float32), template)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


def face_crop(image: np.ndarray, box: tuple[float, float, float, float], landmarks: np.ndarray | None,
              spec: CropSpec = CropSpec()) -> np.ndarray:
    """One model-ready uint8 crop for a detected face, following `spec`."""
    if spec.method == "aligned":
        if landmarks is None:
            raise ValueError("aligned crops need the face's five landmarks")
        return crop_aligned(image, landmarks, spec.size)
    if spec.method == "box":
        return crop_box(image, box, spec.margin_px, spec.size, spec.border)
    raise ValueError(f"unknown crop method {spec.method!r}; choose 'box' or 'aligned'")


def standardize(crops: np.ndarray) -> np.ndarray:
    """Fixed image standardization of the 2018 FaceNet models: (x - 127.5) / 128, float32."""
    return (np.asarray(crops, dtype=np.float32) - 127.5) / 128.0
