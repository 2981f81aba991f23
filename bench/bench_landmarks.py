"""Dense-landmark latency: face mesh alone, and mesh + both irises, per face.

    python bench/bench_landmarks.py                      # models/landmarks, models/mtcnn, ../shared/faces
    python bench/bench_landmarks.py --repeats 50 --json out.json

One thread (LiteRT num_threads=1). MTCNN runs once per photo outside the timed region to give
the box and eyes the landmarker needs (as the daemon will); the timed call is
FaceLandmarker.mesh (crop + inference + mapping back), repeated on each of a set of real face
photos. Reports the median milliseconds per face over all calls.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.detector import FaceDetector  # noqa: E402
from edge.images import load_image  # noqa: E402
from edge.landmarks import FaceLandmarker  # noqa: E402

SHARED_PEOPLE = REPO.parent / "shared" / "faces" / "people"


def photos(folder: Path, count: int) -> list[Path]:
    """Up to `count` photos, one per person, in name order (a fixed, varied set)."""
    chosen = []
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        files = sorted(person.glob("*.jpg"))
        if files:
            chosen.append(files[0])
        if len(chosen) == count:
            break
    return chosen


def median_ms(landmarker: FaceLandmarker, faces: list, repeats: int) -> float:
    """Median wall time of one mesh() call, in ms, after one warm-up call per face."""
    times = []
    for image, face in faces:
        landmarker.mesh(image, face.box, face.landmarks[:2])
        for _ in range(repeats):
            start = time.perf_counter()
            landmarker.mesh(image, face.box, face.landmarks[:2])
            times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000.0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--faces", type=Path, default=SHARED_PEOPLE)
    parser.add_argument("--photos", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    if not args.faces.is_dir():
        print(f"error: face photos not found at {args.faces}", file=sys.stderr)
        return 1
    detector = FaceDetector(args.models / "mtcnn", threads=1)
    faces = []
    for path in photos(args.faces, args.photos):
        image = load_image(path)
        found = detector.detect(image, pad_retry=True)
        if found:
            faces.append((image, found[0]))
    results = {"faces": len(faces), "repeats": args.repeats, "threads": 1, "machine": platform.machine(),
               "mesh_ms": median_ms(FaceLandmarker(args.models / "landmarks", threads=1, iris=False), faces,
                                    args.repeats),
               "mesh_iris_ms": median_ms(FaceLandmarker(args.models / "landmarks", threads=1, iris=True), faces,
                                         args.repeats)}
    print(f"{results['faces']} faces x {args.repeats} calls, one thread: mesh {results['mesh_ms']:.2f} ms, "
          f"mesh + both irises {results['mesh_iris_ms']:.2f} ms (median per face)")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
