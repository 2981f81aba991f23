"""Image -> faces with names: the glue shared by the CLIs, the daemon and the benchmarks.

One place decides how a detected face becomes an embedding (crop method, optional mirror
averaging) so enrollment and recognition can never drift apart: an embedding enrolled one way and
probed another way would silently widen distances.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from edge.crop import CropSpec, face_crop
from edge.detector import Face, FaceDetector
from edge.embedder import Embedder
from edge.errors import ConfigError
from edge.gallery import Gallery

DEFAULT_CROP = CropSpec()  # box crop, 44 px margin padded at the edges, 160 px (docs/crops.md)

# Enrollment embeds several views of each photo, the probe's own crop, a tighter and a wider
# margin, and the mirror of each, and stores their normalized mean: one template per photo that
# covers a little of the framing and pose variation the door camera will see, at no extra matching
# cost. Measured against storing only the probe-style embedding in docs/crops.md.
ENROLLMENT_MARGIN_OFFSETS_PX = (0.0, -8.0, 12.0)


@dataclass
class Recognition:
    """One face of an image: where it is, and who it is (name None: unknown or no gallery)."""

    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    score: float
    name: str | None
    distance: float
    embedding: np.ndarray
    nearest: str | None = None


class Recognizer:
    """Detector + embedder + gallery with one threshold."""

    def __init__(self, detector: FaceDetector, embedder: Embedder, gallery: Gallery | None,
                 threshold: float | None = None, crop: CropSpec = DEFAULT_CROP, flip: bool = False,
                 pad_retry: bool = False) -> None:
        self.detector = detector
        self.pad_retry = bool(pad_retry)  # photo files: look again inside a border (FaceDetector.detect)
        self.embedder = embedder
        self.gallery = gallery
        self.last_timings: dict[str, float] = {}
        self.threshold = float(embedder.threshold if threshold is None else threshold)
        if not np.isfinite(self.threshold) or self.threshold <= 0:
            raise ConfigError(f"threshold must be a positive L2 distance, got {threshold!r}")
        if gallery is not None and gallery.model_id != embedder.model_id:
            raise ConfigError(f"gallery {gallery.path} was opened for model {gallery.model_id}, but the embedder "
                              f"is {embedder.model_id}")
        self.crop = crop
        self.flip = bool(flip)

    @classmethod
    def from_paths(cls, model_path: str | Path, gallery_path: str | Path | None, mtcnn_dir: str | Path = "models/mtcnn",
                   threads: int = 1, min_face_size: int = 20, threshold: float | None = None,
                   crop: CropSpec = DEFAULT_CROP, flip: bool = False, readonly: bool = False,
                   pad_retry: bool = False) -> Recognizer:
        """Build the whole pipeline from files; `gallery_path=None` only detects and embeds.

        The gallery is created (empty, private) when it does not exist unless `readonly`.
        """
        detector = FaceDetector(mtcnn_dir, min_face_size=min_face_size, threads=threads)
        embedder = Embedder(model_path, threads=threads)
        gallery = None if gallery_path is None else Gallery(gallery_path, embedder.model_id, readonly=readonly)
        return cls(detector, embedder, gallery, threshold=threshold, crop=crop, flip=flip, pad_retry=pad_retry)

    @property
    def model_id(self) -> str:
        return self.embedder.model_id

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces of an RGB uint8 image, largest first (with the pad retry when set)."""
        return self.detector.detect(image, pad_retry=self.pad_retry)

    def crops(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        """Model-ready uint8 crops (N, S, S, 3) of the faces, cut as `self.crop` says."""
        size = self.embedder.input_size
        spec = self.crop if self.crop.size == size else replace(self.crop, size=size)
        if not faces:
            return np.zeros((0, size, size, 3), dtype=np.uint8)
        return np.stack([face_crop(image, face.box, face.landmarks, spec) for face in faces])

    def embed_crops(self, crops: np.ndarray) -> np.ndarray:
        """Embeddings of crops; with `flip`, the mean of each crop's and its mirror's (renormalized)."""
        if not self.flip or len(crops) == 0:
            return self.embedder.embed(crops)
        both = self.embedder.embed(np.concatenate([crops, crops[:, :, ::-1]]))
        mean = both[: len(crops)] + both[len(crops):]
        return (mean / np.linalg.norm(mean, axis=1, keepdims=True)).astype(np.float32)

    def embed_faces(self, image: np.ndarray, faces: list[Face]) -> np.ndarray:
        """(N, D) embeddings of already detected faces of `image`."""
        return self.embed_crops(self.crops(image, faces))

    def enrollment_views(self, image: np.ndarray, face: Face) -> np.ndarray:
        """(K, D) embeddings of the views enrollment averages: margin offsets x (plain, mirrored)."""
        size = self.embedder.input_size
        if self.crop.method == "box":
            specs = [replace(self.crop, size=size, margin_px=max(self.crop.margin_px + offset, 0.0))
                     for offset in ENROLLMENT_MARGIN_OFFSETS_PX]
        else:  # an aligned crop has no margin to vary: the crop and its mirror
            specs = [replace(self.crop, size=size)]
        crops = np.stack([face_crop(image, face.box, face.landmarks, spec) for spec in specs])
        return self.embedder.embed(np.concatenate([crops, crops[:, :, ::-1]]))

    def enrollment_embedding(self, image: np.ndarray, face: Face) -> np.ndarray:
        """(D,) the template stored for one enrollment photo: the normalized mean of its views."""
        mean = self.enrollment_views(image, face).mean(axis=0)
        return (mean / np.linalg.norm(mean)).astype(np.float32)

    def recognize(self, image: np.ndarray) -> list[Recognition]:
        """Every face in an RGB uint8 image, largest first, with its best gallery match."""
        started = time.perf_counter()
        faces = self.detect(image)
        detected = time.perf_counter()
        self.last_timings = {"detect": detected - started}  # seconds per stage, read by the metrics endpoint
        if not faces:
            return []
        embeddings = self.embed_faces(image, faces)
        embedded = time.perf_counter()
        self.last_timings["embed"] = embedded - detected
        if self.gallery is None:
            return [Recognition(f.box, f.landmarks, f.score, None, float("inf"), e) for f, e in
                    zip(faces, embeddings, strict=True)]
        self.gallery.refresh()
        matches = self.gallery.match_many(embeddings, self.threshold)
        self.last_timings["match"] = time.perf_counter() - embedded
        return [Recognition(f.box, f.landmarks, f.score, m.name, m.distance, e, m.nearest)
                for f, e, m in zip(faces, embeddings, matches, strict=True)]

    def close(self) -> None:
        """Release the gallery connection."""
        if self.gallery is not None:
            self.gallery.close()
