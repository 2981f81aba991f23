"""The detector's second look at tight portrait crops, and the recognizer's use of it."""

from pathlib import Path

import numpy as np
import pytest

from edge.detector import FaceDetector
from edge.images import list_images, load_image


@pytest.fixture(scope="module")
def detector(mtcnn_dir: Path) -> FaceDetector:
    return FaceDetector(mtcnn_dir, min_face_size=20)


@pytest.mark.parametrize("photo", ["Johnny_Galecki/5.jpg", "Kaley_Cuoco/1.jpg"])
def test_tight_crop_needs_the_border(detector: FaceDetector, shared_faces: Path, photo: str) -> None:
    # 150x150 grey crops cut at the forehead: MTCNN finds nothing without context around them.
    image = load_image(shared_faces / "people" / photo)
    assert detector.detect(image) == []
    faces = detector.detect(image, pad_retry=True)
    assert len(faces) == 1
    x, y, w, h = faces[0].box
    # Back in the photo's own coordinates, inside it, and covering most of it.
    assert x >= 0 and y >= 0 and x + w <= 150 and y + h <= 150 and w * h > 0.4 * 150 * 150
    assert np.all((faces[0].landmarks >= 0) & (faces[0].landmarks <= 150))


def test_retry_invents_no_faces(detector: FaceDetector, shared_faces: Path) -> None:
    for path in list_images(shared_faces / "noface"):
        assert detector.detect(load_image(path), pad_retry=True) == [], path.name
    blank = np.full((200, 200, 3), 90, np.uint8)
    assert detector.detect(blank, pad_retry=True) == []


def test_retry_changes_nothing_when_a_face_is_found(detector: FaceDetector, fr_images: dict[str, Path]) -> None:
    image = load_image(fr_images["obama2"])
    plain, retried = detector.detect(image), detector.detect(image, pad_retry=True)
    assert len(plain) == len(retried) >= 1
    assert all(a.box == b.box for a, b in zip(plain, retried, strict=True))
