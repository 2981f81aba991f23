"""Real face crops for calibration and the per-model quality report.

`face_crops(folder)` detects the largest face in every photo under `folder` (`<name>/*.jpg` or
flat), cuts a model-ready crop with `edge.crop.face_crop(..., CropSpec())` and caches the result
keyed by the photos' bytes, so converting four models detects each photo once. Detection uses
`edge.detector.FaceDetector` when it and its built nets exist, else the `mtcnn` PyPI package.

`quality_report(reference, candidate, labels)` compares a model's embeddings with the float
model's on the same crops: cosine similarity (mean, min) and verification ROC AUC / TAR at
FAR 1e-3 over all pairs (edge.metrics).
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.crop import CropSpec, face_crop
from edge.errors import EdgeError, ImageError, ModelError
from edge.images import IMAGE_SUFFIXES, load_image

CACHE = Path(os.environ.get("EDGE_FACE_CACHE", Path.home() / ".cache" / "edge-face"))
TARGET_FAR = 1e-3


@dataclass
class FaceSet:
    """Crops, their identity labels (folder names) and the source photo of each."""

    crops: np.ndarray  # uint8 (N, S, S, 3)
    labels: list[str]
    sources: list[str]
    detector: str
    skipped: list[str]

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.crops.tobytes()).hexdigest()


def list_photos(folder: str | Path) -> list[Path]:
    """Image files directly in `folder` and in its immediate subfolders, sorted."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: face folder not found")
    photos = [p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
              and len(p.relative_to(folder).parts) <= 2]
    return sorted(photos)


def folder_digest(photos: list[Path], spec: CropSpec, detector: str) -> str:
    """Key for cached crops: every photo's relative name and bytes, the crop spec and detector."""
    digest = hashlib.sha256(f"{spec}|{detector}".encode())
    for path in photos:
        digest.update(path.name.encode() + b"\0" + path.parent.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


class _Detector:
    """edge.detector.FaceDetector if usable, else the mtcnn package (TensorFlow; tools only)."""

    def __init__(self, mtcnn_dir: Path | None) -> None:
        self.name = "mtcnn-pypi"
        self._edge = None
        try:
            from edge.detector import FaceDetector

            directory = mtcnn_dir or Path("models/mtcnn")
            if directory.is_dir():
                self._edge = FaceDetector(directory)
                self.name = "edge.detector"
        except (ImportError, EdgeError):
            self._edge = None
        if self._edge is None:
            os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
            from mtcnn import MTCNN

            self._mtcnn = MTCNN()

    def largest(self, image: np.ndarray) -> tuple[tuple[float, float, float, float], np.ndarray] | None:
        if self._edge is not None:
            faces = self._edge.detect(image)
            return (faces[0].box, faces[0].landmarks) if faces else None
        found = self._mtcnn.detect_faces(image)
        if not found:
            return None
        best = max(found, key=lambda f: f["box"][2] * f["box"][3])
        k = best["keypoints"]
        marks = np.array([k["left_eye"], k["right_eye"], k["nose"], k["mouth_left"], k["mouth_right"]],
                         dtype=np.float32)
        return tuple(float(v) for v in best["box"]), marks


def face_crops(folder: str | Path, spec: CropSpec | None = None, mtcnn_dir: Path | None = None,
               use_cache: bool = True, verbose: bool = False) -> FaceSet:
    """One crop per photo with a face (the largest); photos already of crop size are used as they are."""
    spec = spec or CropSpec()
    photos = list_photos(folder)
    if not photos:
        raise ImageError(f"{folder}: no image files found (expected <name>/*.jpg or a flat folder of photos)")
    detector_key = "auto"
    key = folder_digest(photos, spec, detector_key)
    cache_file = CACHE / "crops" / f"{key}.npz"
    if use_cache and cache_file.is_file():
        data = np.load(cache_file, allow_pickle=False)
        return FaceSet(data["crops"], [str(v) for v in data["labels"]], [str(v) for v in data["sources"]],
                       str(data["detector"]), [str(v) for v in data["skipped"]])
    detector: _Detector | None = None
    crops, labels, sources, skipped = [], [], [], []
    root = Path(folder)
    for path in photos:
        try:
            image = load_image(path)
        except ImageError as exc:
            skipped.append(f"{path}: {exc}")
            continue
        label = path.parent.name if path.parent != root else path.stem
        if image.shape[:2] == (spec.size, spec.size):
            crops.append(image)  # already a model-ready crop
        else:
            detector = detector or _Detector(mtcnn_dir)
            found = detector.largest(image)
            if found is None:
                skipped.append(f"{path}: no face found")
                continue
            crops.append(face_crop(image, found[0], found[1], spec))
        labels.append(label)
        sources.append(str(path.relative_to(root)))
        if verbose:
            print(f"\r{len(crops)} crops from {len(crops) + len(skipped)} photos", end="", file=sys.stderr)
    if verbose:
        print(file=sys.stderr)
    if not crops:
        raise ImageError(f"{folder}: none of its {len(photos)} images contains a detectable face")
    result = FaceSet(np.stack(crops).astype(np.uint8), labels, sources,
                     detector.name if detector else "none (crops given)", skipped)
    if use_cache:
        cache_file.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_file.with_suffix(f".{os.getpid()}.tmp.npz")
        np.savez_compressed(tmp, crops=result.crops, labels=np.array(labels), sources=np.array(sources),
                            detector=np.array(result.detector), skipped=np.array(skipped, dtype=str))
        os.replace(tmp, cache_file)
    return result


def verification(embeddings: np.ndarray, labels: list[str]) -> dict[str, float]:
    """ROC AUC, TAR at FAR 1e-3 and its threshold over all pairs."""
    from edge import metrics

    distances, same = metrics.pair_distances(embeddings, labels)
    tar, threshold = metrics.tar_at_far(distances, same, TARGET_FAR)
    return {
        "roc_auc": float(metrics.roc_auc(distances, same)),
        "tar_at_far_1e-3": float(tar),
        "threshold_at_far_1e-3": float(threshold),
        "eer": float(metrics.equal_error_rate(distances, same)),
        "genuine_pairs": int(same.sum()),
        "impostor_pairs": int((~same).sum()),
    }


def quality_report(reference: np.ndarray, candidate: np.ndarray, labels: list[str]) -> dict[str, float]:
    """The candidate model against the float reference on the same crops."""
    if reference.shape != candidate.shape:
        raise ModelError(f"embeddings differ in shape: float {reference.shape}, model {candidate.shape}")
    ref = reference / np.linalg.norm(reference, axis=1, keepdims=True)
    cand = candidate / np.linalg.norm(candidate, axis=1, keepdims=True)
    cosine = np.sum(ref * cand, axis=1)
    report = {"faces": len(labels), "identities": len(set(labels)),
              "cosine_to_float_mean": float(cosine.mean()), "cosine_to_float_min": float(cosine.min())}
    if len(set(labels)) > 1 and len(labels) > len(set(labels)):
        ours, base = verification(cand, labels), verification(ref, labels)
        report.update(ours)
        report.update({f"float_{k}": v for k, v in base.items() if k in ("roc_auc", "tar_at_far_1e-3", "eer")})
    return report
