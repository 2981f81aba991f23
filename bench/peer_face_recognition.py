"""ageitgey/face_recognition as a pipeline for tools/evaluate.py: the peer most users start with.

dlib's HOG detector (upsampled once, the library's default) and its ResNet embeddings (128-D,
5-point "small" landmark model, one jitter), matched with the library's default tolerance 0.6.
It is a benchmark-only dependency (`pip install -e '.[bench]'` plus
`pip install --no-deps face_recognition==1.3.0`), never installed on the device.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

DEFAULT_TOLERANCE = 0.6


class FaceRecognitionPipeline:
    """face_recognition's own calls, in the order its README uses them."""

    name = "face_recognition (dlib HOG + ResNet)"

    def __init__(self, upsample: int = 1, jitters: int = 1, tolerance: float = DEFAULT_TOLERANCE) -> None:
        import face_recognition  # loads dlib's three models at import: part of the load time

        self._fr = face_recognition
        self.upsample = upsample
        self.jitters = jitters
        self.threshold = tolerance

    def detect(self, image: np.ndarray) -> list[tuple[int, int, int, int]]:
        """(top, right, bottom, left) boxes, largest first."""
        boxes = self._fr.face_locations(image, number_of_times_to_upsample=self.upsample, model="hog")
        return sorted(boxes, key=lambda b: (b[2] - b[0]) * (b[1] - b[3]), reverse=True)

    def embed(self, image: np.ndarray, face: tuple[int, int, int, int]) -> np.ndarray:
        return np.asarray(self._fr.face_encodings(image, known_face_locations=[face], num_jitters=self.jitters)[0],
                          dtype=np.float32)

    def match(self, embedding: np.ndarray, known: np.ndarray, names: Sequence[str]) -> str | None:
        """The library's matching: distances to every known encoding, nearest within tolerance."""
        if len(known) == 0:
            return None
        distances = self._fr.face_distance(known, embedding)
        best = int(np.argmin(distances))
        return names[best] if distances[best] <= self.threshold else None
