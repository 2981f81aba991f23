"""Shared fixtures: real face photos and built models.

Face photos come from `../shared/faces` when present, and from the face_recognition 1.3.0
source distribution on PyPI otherwise (downloaded once, cached outside the repository).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SHARED_FACES = REPO.parent / "shared" / "faces"
CACHE = Path(os.environ.get("EDGE_FACE_CACHE", Path.home() / ".cache" / "edge-face"))
MODELS = Path(os.environ.get("EDGE_FACE_MODELS", REPO / "models"))

FR_SDIST = "face_recognition==1.3.0"
FR_IMAGES = ("obama.jpg", "obama2.jpg", "obama3.jpg", "biden.jpg")


@pytest.fixture(scope="session")
def shared_faces() -> Path:
    """`../shared/faces`, or a skip that says clearly it is missing."""
    if not (SHARED_FACES / "people").is_dir():
        pytest.skip(f"real face photos not found at {SHARED_FACES} (see its README); this test needs them")
    return SHARED_FACES


@pytest.fixture(scope="session")
def fr_images() -> dict[str, Path]:
    """obama, obama2, obama3 and biden from the face_recognition 1.3.0 sdist, cached."""
    target = CACHE / "face_recognition_test_images"
    if not all((target / name).is_file() for name in FR_IMAGES):
        download = CACHE / "downloads"
        download.mkdir(parents=True, exist_ok=True)
        archives = list(download.glob("face_recognition-1.3.0.tar.gz"))
        if not archives:
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", FR_SDIST,
                 "-d", str(download)],
                check=True, capture_output=True,
            )
            archives = list(download.glob("face_recognition-1.3.0.tar.gz"))
        target.mkdir(parents=True, exist_ok=True)
        with tarfile.open(archives[0]) as archive:
            for name in FR_IMAGES:
                member = archive.getmember(f"face_recognition-1.3.0/tests/test_images/{name}")
                extracted = archive.extractfile(member)
                assert extracted is not None
                (target / name).write_bytes(extracted.read())
    return {Path(name).stem: target / name for name in FR_IMAGES}


def _require_model(path: Path) -> Path:
    if not path.is_file():
        pytest.fail(f"{path} is missing: build the models first with `make models`")
    return path


@pytest.fixture(scope="session")
def models_dir() -> Path:
    return MODELS


@pytest.fixture(scope="session")
def facenet_model() -> Path:
    """The default FaceNet model (dynamic-range int8), built by `make models`."""
    return _require_model(MODELS / "facenet" / "facenet_dynamic.tflite")


@pytest.fixture(scope="session")
def mtcnn_dir() -> Path:
    path = MODELS / "mtcnn"
    if not path.is_dir():
        pytest.fail(f"{path} is missing: build the models first with `make models`")
    return path


@pytest.fixture(scope="module")
def recognizer(facenet_model: Path, mtcnn_dir: Path):
    """The real pipeline (default model, MTCNN with a 20 px minimum face), without a gallery."""
    from edge.recognizer import Recognizer

    rec = Recognizer.from_paths(facenet_model, None, mtcnn_dir=mtcnn_dir, min_face_size=20)
    yield rec
    rec.close()


@pytest.fixture(scope="session")
def landmarks_dir(models_dir: Path) -> Path:
    """The face mesh and iris models (`make models` puts them in models/landmarks)."""
    return _require_model(models_dir / "landmarks" / "face_landmark.tflite").parent


@pytest.fixture(scope="module")
def landmarker(landmarks_dir: Path):
    from edge.landmarks import FaceLandmarker

    return FaceLandmarker(landmarks_dir)
