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
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edge.crop import CropSpec, face_crop
from edge.errors import EdgeError, ImageError, ModelError
from edge.images import IMAGE_SUFFIXES, load_image

REPO = Path(__file__).resolve().parent.parent
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
    """Key for cached crops: every photo's relative name and bytes, the crop spec, the detector, and
    the source of the code that detects and crops (a change there must not reuse stale crops)."""
    digest = hashlib.sha256(f"{spec}|{detector}".encode())
    edge_dir = REPO / "edge"
    for module in ("crop.py", "detector.py", "images.py"):
        if (edge_dir / module).is_file():
            digest.update(hashlib.sha256((edge_dir / module).read_bytes()).digest())
    for path in photos:
        digest.update(path.name.encode() + b"\0" + path.parent.name.encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def _edge_detector_dir(mtcnn_dir: Path | None) -> Path | None:
    """The MTCNN folder edge.detector would use, if that module exists and the folder holds files."""
    import importlib.util

    directory = Path(mtcnn_dir) if mtcnn_dir else REPO / "models" / "mtcnn"
    if importlib.util.find_spec("edge.detector") is None or not directory.is_dir() or not any(directory.iterdir()):
        return None
    return directory


def detector_identity(mtcnn_dir: Path | None) -> str:
    """Which detector (and which nets) would crop the faces: part of the crop cache key."""
    directory = _edge_detector_dir(mtcnn_dir)
    if directory is None:
        return "mtcnn-pypi"
    digest = hashlib.sha256()
    # The code that runs the nets counts as much as the nets: a pyramid change moves the crops.
    for path in [REPO / "edge" / "detector.py",
                 *sorted(p for p in directory.rglob("*") if p.is_file())]:
        digest.update(path.name.encode() + hashlib.sha256(path.read_bytes()).digest())
    return f"edge.detector:{digest.hexdigest()[:16]}"


class _Detector:
    """edge.detector.FaceDetector if usable, else the mtcnn package (TensorFlow; tools only)."""

    def __init__(self, mtcnn_dir: Path | None) -> None:
        self.name = "mtcnn-pypi"
        self._edge = None
        directory = _edge_detector_dir(mtcnn_dir)
        if directory is not None:
            try:
                from edge.detector import FaceDetector

                self._edge = FaceDetector(directory)
                self.name = "edge.detector"
            except (ImportError, EdgeError) as exc:
                print(f"edge.detector unusable ({exc}); using the mtcnn package", file=sys.stderr)
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
    key = folder_digest(photos, spec, detector_identity(mtcnn_dir))
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


def int8_study(h5: Path, faces_dir: Path, out_dir: Path, mtcnn_dir: Path | None = None) -> list[dict]:
    """How calibration data, per-channel weights and float I/O move full-int8 quality (docs/models.md).

    Identities are split in two halves by sorted name: calibration uses the first half, the
    reported numbers come from the second half only, so no face is both calibrated on and scored.
    """
    from edge.embedder import Embedder
    from edge.model_metadata import check_input
    from tools.convert_to_tflite import convert, float_embeddings, load_source

    faces = face_crops(faces_dir, mtcnn_dir=mtcnn_dir)
    names = sorted(set(faces.labels))
    first = set(names[: len(names) // 2])
    calib_idx = [i for i, label in enumerate(faces.labels) if label in first]
    eval_idx = [i for i, label in enumerate(faces.labels) if label not in first]
    calib, crops = faces.crops[calib_idx], faces.crops[eval_idx]
    labels = [faces.labels[i] for i in eval_idx]
    model = load_source(h5)
    reference = float_embeddings(model, crops)
    synthetic = np.concatenate([check_input(faces.crops.shape[1], seed) for seed in range(len(calib))])
    variants = [
        ("synthetic calibration (textures, no faces)", dict(calibration=synthetic)),
        ("real face crops, per-tensor weights", dict(calibration=calib, per_channel=False)),
        ("real face crops, per-channel weights (default)", dict(calibration=calib)),
        ("real face crops, per-channel, float32 input/output", dict(calibration=calib, io_type="float32")),
        ("real face crops, per-channel, L2-norm ops kept float",
         dict(calibration=calib, io_type="float32", float_ops=("RSQRT", "SUM", "SQUARE", "MINIMUM"))),
        ("dynamic range (reference)", dict(mode="dynamic")),
    ]
    results = []
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, (label, options) in enumerate(variants):
        mode = options.pop("mode", "int8")
        path = out_dir / f"study_{index}.tflite"
        try:
            convert(h5, path, mode, model=model, **options)
            report = quality_report(reference, Embedder(path).embed(crops), labels)
        except EdgeError as exc:
            report = {"error": str(exc)}
        report.update(variant=label, mode=mode, calibration_crops=len(options.get("calibration", [])),
                      size_mb=path.stat().st_size / 1e6 if path.is_file() else None)
        results.append(report)
        print(json.dumps(report), flush=True)
    return results


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Face-crop quality tools")
    sub = parser.add_subparsers(dest="command", required=True)
    study = sub.add_parser("int8-study", help="full-int8 variants against the float model on held-out people")
    study.add_argument("h5", type=Path)
    study.add_argument("--faces", type=Path, default=REPO.parent
                       / "shared" / "faces" / "people")
    study.add_argument("--out", type=Path, default=CACHE / "int8_study")
    study.add_argument("--mtcnn-dir", type=Path, default=None)
    study.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        results = int8_study(args.h5, args.faces, args.out, args.mtcnn_dir)
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
