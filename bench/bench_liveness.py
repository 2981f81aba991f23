"""What liveness adds to each analysed frame: face mesh (and iris) + track + checks, one thread.

    python bench/bench_liveness.py [--frames 120] [--runs 3]

Frames are real: the bona fide presentations tools/pad_attacks.py cuts from ../shared/faces/videos
(640x480, one face of ~110-230 px). Detection runs beforehand and is not timed: the daemon runs it
anyway. Timed per frame: `LivenessMonitor.observe` (mesh on the largest face, track update, frame-pair
fits) and `step` with an open check, which is what the daemon adds while someone stands at the door.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.detector import FaceDetector  # noqa: E402
from edge.landmarks import FaceLandmarker  # noqa: E402
from edge.liveness_monitor import LivenessMonitor  # noqa: E402
from tools import pad_attacks  # noqa: E402


@dataclass(frozen=True)
class Named:
    box: tuple[float, float, float, float]
    landmarks: np.ndarray
    name: str


def measure(landmarker: FaceLandmarker, frames: list[np.ndarray], faces: list[list], fps: float) -> list[float]:
    monitor = LivenessMonitor(landmarker, "challenge", passive_s=1e9, window_s=2.0,
                              choose_direction=lambda: "left")
    times = []
    for i, (frame, found) in enumerate(zip(frames, faces, strict=True)):
        now = i / fps
        started = time.perf_counter()
        sample = monitor.observe(now, frame, found)
        if sample is not None and not monitor.checks:
            monitor.begin("subject", now)
        monitor.step(now)
        times.append((time.perf_counter() - started) * 1000)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--frames", type=int, default=120)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--videos", type=Path, default=REPO.parent / "shared" / "faces" / "videos")
    args = parser.parse_args()
    if not args.videos.is_dir():
        print(f"error: {args.videos} is missing (see ../shared/faces/README.md)", file=sys.stderr)
        return 2
    detector = FaceDetector(REPO / "models" / "mtcnn", min_face_size=40, threads=1)
    frames: list[np.ndarray] = []
    for presentation in pad_attacks.bona_fide_presentations(args.videos, 0, detector):
        frames += presentation.frames(range(min(presentation.n_frames, 30)))
        if len(frames) >= args.frames:
            break
    frames = frames[:args.frames]
    # Every face recognized as the enrolled subject, so a check stays open as while someone waits at the door.
    faces = [[Named(f.box, f.landmarks, "subject") for f in detector.detect(frame)] for frame in frames]
    with_face = sum(1 for f in faces if f)
    print(f"{len(frames)} frames, {with_face} with a face; load average {os.getloadavg()[0]:.1f}")
    for iris in (False, True):
        landmarker = FaceLandmarker(REPO / "models" / "landmarks", threads=1, iris=iris)
        medians = []
        for _ in range(args.runs):
            times = [t for t, f in zip(measure(landmarker, frames, faces, 15.0), faces, strict=True) if f]
            medians.append(float(np.median(times)))
        print(f"liveness.iris={str(iris).lower():5s}: {min(medians):.2f} ms per frame with a face "
              f"(median; best of {args.runs} runs: {', '.join(f'{m:.2f}' for m in medians)})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
