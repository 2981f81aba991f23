"""Shared fixtures: real face photos, built models, and the daemon's test broker, mock pins and gallery.

Face photos come from `../shared/faces` when present, and from the face_recognition 1.3.0
source distribution on PyPI otherwise (downloaded once, cached outside the repository).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from daemon_support import make_config
from gpiozero.pins.mock import MockFactory
from mosquitto import Broker, broker  # noqa: F401  (the broker fixture, for every test module)

from edge.config import Config

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


# --- the daemon --------------------------------------------------------------------------------------------


@pytest.fixture
def pins() -> Iterator[MockFactory]:
    factory = MockFactory()
    yield factory
    factory.reset()


@pytest.fixture(scope="session")
def enrolled_gallery(facenet_model: Path, mtcnn_dir: Path, fr_images: dict[str, Path],
                     tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A gallery with obama.jpg enrolled as 'obama' by the real pipeline."""
    from edge import gallery as gallery_module
    from edge import recognizer as recognizer_module
    from edge.images import load_image

    Gallery, Recognizer = gallery_module.Gallery, recognizer_module.Recognizer

    path = tmp_path_factory.mktemp("gallery") / "gallery.db"
    recognizer = Recognizer.from_paths(facenet_model, None, mtcnn_dir=mtcnn_dir, min_face_size=20)
    image = load_image(fr_images["obama"])
    faces = recognizer.detector.detect(image)
    assert faces, "no face found in obama.jpg"  # largest first: the enrolled face
    template = recognizer.enrollment_embedding(image, faces[0])  # as tools/enroll.py stores it
    gallery = Gallery(path, recognizer.embedder.model_id)
    digest = hashlib.sha256(fr_images["obama"].read_bytes()).hexdigest()
    gallery.add("obama", template[None, :], [digest], [str(fr_images["obama"])])
    gallery.close()
    return path


@pytest.fixture
def real_config(tmp_path: Path, broker: Broker, facenet_model: Path, mtcnn_dir: Path,  # noqa: F811
                enrolled_gallery: Path) -> Callable[..., Config]:
    def build(frames: Path, **sections: dict[str, Any]) -> Config:
        sections.setdefault("model", {}).update({"path": str(facenet_model), "mtcnn_dir": str(mtcnn_dir),
                                                 "min_face_size": 20, "threads": 1})
        sections.setdefault("gallery", {}).update({"path": str(enrolled_gallery)})
        return make_config(tmp_path, broker, frames, **sections)

    return build
