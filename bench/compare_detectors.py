"""Paired timing of this checkout's detector against edge/detector.py of another git revision.

    python bench/compare_detectors.py REV [--min-face 80] [--rounds 20] [--runs 30]

On a shared machine two separate benchmark runs see different loads; here both detectors live in
one process and alternate round by round on the bench_pipeline frame, so each round's
difference is measured under the same load. Prints each one's lowest and median round median and
the median of the paired differences, and whether both found the same faces. One thread
(LiteRT, OpenCV). REV's detector must import only modules that are unchanged in this checkout.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from bench_pipeline import MTCNN, test_frame  # noqa: E402

import edge.detector as current  # noqa: E402


def load_revision(rev: str, folder: Path) -> object:
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{rev}:edge/detector.py"], check=True,
                            capture_output=True, text=True).stdout
    path = folder / "detector_at_rev.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("detector_at_rev", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("rev")
    parser.add_argument("--min-face", type=int, default=80)
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args(argv)
    cv2.setNumThreads(1)
    frame, name = test_frame()
    with tempfile.TemporaryDirectory() as tmp:
        old = load_revision(args.rev, Path(tmp))
        detectors = {args.rev: old.FaceDetector(MTCNN, min_face_size=args.min_face, threads=1),
                     "this checkout": current.FaceDetector(MTCNN, min_face_size=args.min_face, threads=1)}
        found = {key: det.detect(frame) for key, det in detectors.items()}
        medians: dict[str, list[float]] = {key: [] for key in detectors}
        for _ in range(args.rounds):
            for key, det in detectors.items():
                times = []
                for _ in range(args.runs):
                    start = time.perf_counter()
                    det.detect(frame)
                    times.append(time.perf_counter() - start)
                medians[key].append(1000 * float(np.median(times)))
    same = [(a.box, a.score) for a in found[args.rev]] == [(b.box, b.score) for b in found["this checkout"]]
    print(f"{name}, min_face_size {args.min_face}, {args.rounds} rounds of {args.runs} frames each")
    for key, values in medians.items():
        print(f"  {key:>14}: lowest round median {min(values):.2f} ms, median {np.median(values):.2f} ms")
    difference = np.median(np.subtract(medians[args.rev], medians["this checkout"]))
    print(f"  paired difference ({args.rev} - this checkout): median {difference:.2f} ms; same faces: {same}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
