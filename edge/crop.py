"""Face crops exactly as the embedding model expects them.

The 2018 FaceNet models were evaluated on MTCNN boxes widened by a 32 px margin and resized to
160x160, with fixed standardization (x - 127.5) / 128. `method="box"` reproduces that;
`method="aligned"` first rotates and scales the face so the eyes and mouth land where they do on
an average upright box crop (a similarity transform from the five landmarks), which removes head
roll. Which one the product uses is decided by measurement (docs/crops.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import cv2
import numpy as np

# Where the five landmarks sit in a 160x160 crop of an upright face cropped with `method="box"`
# and a 32 px margin. Initial estimate; tools/measure_crops.py measures it on real faces.
# Order: left eye, right eye, nose, left mouth corner, right mouth corner (image left/right).
ALIGNED_TEMPLATE_160 = np.array(
    [[54.7, 65.6], [105.3, 65.6], [80.0, 94.0], [58.9, 121.4], [101.1, 121.4]],
    dtype=np.float32,
)


@dataclass(frozen=True)
class CropSpec:
    """How to cut a face out of a frame for the embedder."""

    method: Literal["box", "aligned"] = "box"
    margin_px: float = 32.0
    size: int = 160


def crop_box(image: np.ndarray, box: tuple[float, float, float, float], margin_px: float = 32.0,
             size: int = 160) -> np.ndarray:
    """Box widened by `margin_px` in total (half on each side), clipped to the image, resized."""
    height, width = image.shape[:2]
    x, y, w, h = box
    x1 = int(max(np.floor(x - margin_px / 2), 0))
    y1 = int(max(np.floor(y - margin_px / 2), 0))
    x2 = int(min(np.ceil(x + w + margin_px / 2), width))
    y2 = int(min(np.ceil(y + h + margin_px / 2), height))
    if x2 <= x1 or y2 <= y1:
        raise ValueError(f"face box {box} lies outside the {width}x{height} image")
    patch = image[y1:y2, x1:x2]
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


def crop_aligned(image: np.ndarray, landmarks: np.ndarray, size: int = 160,
                 margin_px: float = 32.0, box_size: float | None = None) -> np.ndarray:
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
        return crop_aligned(image, landmarks, spec.size, spec.margin_px)
    if spec.method == "box":
        return crop_box(image, box, spec.margin_px, spec.size)
    raise ValueError(f"unknown crop method {spec.method!r}; choose 'box' or 'aligned'")


def standardize(crops: np.ndarray) -> np.ndarray:
    """Fixed image standardization of the 2018 FaceNet models: (x - 127.5) / 128, float32."""
    return (np.asarray(crops, dtype=np.float32) - 127.5) / 128.0
