"""One camera frame through the whole recognition core, and enrollment throughput.

    python bench/bench_pipeline.py [--runs 50] [--rounds 1] [--people 10000] [--min-face 40 80] [--json OUT]
    python bench/bench_pipeline.py --min-face 80 --people 100 10000 --rounds 10   # a door's gallery and a huge one

Frame: 640x480, one real face of >= 80 px (the centre of
../shared/faces/hard_cases/resolution_ladder/ageitgey__obama-480p.jpg, or the face_recognition
test photo obama.jpg scaled to 640x480 when ../shared is missing). One thread for every network,
for BLAS and for OpenCV. Per run: detect + crop + embed + match against a gallery of --people enrolled people
(one real, the rest random unit vectors, as matching cost depends only on the count); median and
p90 per stage and in total. Several --people values give one row each: a gallery's 2 KB per
person stays in the CPU cache beside FaceNet's 24 MB of weights at a door's scale, not at 10,000
people, so the size changes every stage's time, not only the match's. With --rounds K the
--runs are repeated K times and the round with the lowest total median is reported (the quietest
one on a shared machine; all rounds' totals are in the JSON). Then the time to enroll --enroll
photos of ../shared/faces/people through tools/enroll.py's code path (detect, quality gates,
enrollment views, gallery write).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import numpy as np  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.detector import FaceDetector  # noqa: E402
from edge.embedder import Embedder  # noqa: E402
from edge.gallery import Gallery  # noqa: E402
from edge.images import list_images, load_image  # noqa: E402
from edge.recognizer import Recognizer  # noqa: E402

SHARED = REPO.parent / "shared" / "faces"
FRAME = SHARED / "hard_cases" / "resolution_ladder" / "ageitgey__obama-480p.jpg"
MODEL = REPO / "models" / "facenet" / "facenet_dynamic.tflite"
MTCNN = REPO / "models" / "mtcnn"


def test_frame() -> tuple[np.ndarray, str]:
    if FRAME.is_file():
        image = load_image(FRAME)
        height, width = image.shape[:2]
        if height < 480 or width < 640:
            image = cv2.resize(image, (max(640, width), max(480, height)))
            height, width = image.shape[:2]
        top, left = (height - 480) // 2, (width - 640) // 2
        return np.ascontiguousarray(image[top:top + 480, left:left + 640]), str(FRAME.relative_to(REPO.parent))
    cache = Path(os.environ.get("EDGE_FACE_CACHE", Path.home() / ".cache" / "edge-face"))
    fallback = cache / "face_recognition_test_images" / "obama.jpg"
    if not fallback.is_file():
        raise SystemExit(f"no test frame: neither {FRAME} nor {fallback} (run the tests once to cache it)")
    return cv2.resize(load_image(fallback), (640, 480)), str(fallback)


def stats(values: list[float]) -> dict[str, float]:
    ms = np.asarray(values) * 1000.0
    return {"median_ms": float(np.median(ms)), "p90_ms": float(np.percentile(ms, 90))}


def fill_gallery(path: Path, model_id: str, real: np.ndarray, people: int) -> None:
    rng = np.random.default_rng(0)
    vectors = rng.normal(size=(people - 1, real.shape[1])).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    with Gallery(path, model_id) as gallery:
        gallery.add("obama", real, ["0" * 64] * len(real), ["frame"] * len(real))
        entries = [{"name": f"person_{i:05d}", "embeddings": vectors[i:i + 1], "image_sha256": ["1" * 64],
                    "source": ["synthetic"]} for i in range(people - 1)]
        gallery.add_many(entries)


def bench_frame(min_face: int, runs: int, people: int, workdir: Path, rounds: int = 1) -> dict:
    cv2.setNumThreads(1)  # the pyramid's resizes and the crops: one thread like everything else
    frame, frame_name = test_frame()
    detector = FaceDetector(MTCNN, min_face_size=min_face, threads=1)
    embedder = Embedder(MODEL, threads=1)
    probe = Recognizer(detector, embedder, None)
    faces = detector.detect(frame)
    if not faces:
        raise SystemExit("no face found in the test frame")
    gallery_path = workdir / f"gallery-{min_face}-{people}.db"
    fill_gallery(gallery_path, embedder.model_id, probe.enrollment_embedding(frame, faces[0])[None, :], people)
    gallery = Gallery(gallery_path, embedder.model_id, readonly=True)
    recognizer = Recognizer(detector, embedder, gallery)
    recognizer.recognize(frame)  # warm up: allocate the pyramid's nets, load the gallery matrix
    results = [time_frames(recognizer, gallery, frame, runs) for _ in range(rounds)]
    gallery.close()
    best = min(results, key=lambda r: r["total"]["median_ms"])
    return {"min_face_size": min_face, "frame": frame_name, "face_px": round(faces[0].box[2]), "people": people,
            "rounds": rounds, "round_totals_ms": [r["total"]["median_ms"] for r in results], **best}


def time_frames(recognizer: Recognizer, gallery: Gallery, frame: np.ndarray, runs: int) -> dict:
    detect_s, crop_s, embed_s, match_s, total_s = [], [], [], [], []
    name = None
    for _ in range(runs):
        t0 = time.perf_counter()
        found = recognizer.detect(frame)
        t1 = time.perf_counter()
        crops = recognizer.crops(frame, found[:1])
        t2 = time.perf_counter()
        embedding = recognizer.embed_crops(crops)
        t3 = time.perf_counter()
        gallery.refresh()
        match = gallery.match(embedding[0], recognizer.threshold)
        t4 = time.perf_counter()
        detect_s.append(t1 - t0)
        crop_s.append(t2 - t1)
        embed_s.append(t3 - t2)
        match_s.append(t4 - t3)
        total_s.append(t4 - t0)
        name = match.name
    return {"matched": name, "detect": stats(detect_s), "crop": stats(crop_s), "embed": stats(embed_s),
            "match": stats(match_s), "total": stats(total_s)}


def bench_enroll(count: int, workdir: Path) -> dict | None:
    """Enroll the first `count` photos of ../shared/faces/people, one person per folder, as tools/enroll.py does."""
    from tools.enroll import enroll

    people = SHARED / "people"
    if not people.is_dir():
        return None
    photos = [p for folder in sorted(people.iterdir()) if folder.is_dir() for p in list_images(folder)][:count]
    by_person: dict[str, list[Path]] = {}
    for photo in photos:
        by_person.setdefault(photo.parent.name, []).append(photo)
    start = time.perf_counter()
    recognizer = Recognizer.from_paths(MODEL, workdir / "enroll.db", mtcnn_dir=MTCNN, pad_retry=True)
    loaded = time.perf_counter()
    enrolled = 0
    for name, files in by_person.items():
        # --force: look-alikes among these celebrities are not what this measures.
        enrolled += enroll(recognizer, recognizer.gallery, name, files, force=True, skip_refused=True).enrolled
    done = time.perf_counter()
    recognizer.close()
    return {"photos": len(photos), "enrolled": enrolled, "load_s": loaded - start, "seconds": done - loaded,
            "per_photo_ms": 1000 * (done - loaded) / len(photos)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=1, help="repeat the runs; report the quietest round")
    parser.add_argument("--people", type=int, nargs="+", default=[10000])
    parser.add_argument("--min-face", type=int, nargs="+", default=[40, 80])
    parser.add_argument("--enroll", type=int, default=100, help="photos to enroll (0: skip)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    report = {"machine": f"{cpu}, {os.cpu_count()} CPUs", "load_average": os.getloadavg()[0],
              "python": platform.python_version(), "frames": [], "enroll": None}
    with tempfile.TemporaryDirectory() as tmp:
        for min_face, people in ((m, p) for m in args.min_face for p in args.people):
            row = bench_frame(min_face, args.runs, people, Path(tmp), max(args.rounds, 1))
            report["frames"].append(row)
            print(f"min_face_size {min_face:3d}: total {row['total']['median_ms']:.1f} ms median "
                  f"(p90 {row['total']['p90_ms']:.1f}) = detect {row['detect']['median_ms']:.1f} + crop "
                  f"{row['crop']['median_ms']:.2f} + embed {row['embed']['median_ms']:.1f} + match "
                  f"{row['match']['median_ms']:.2f} ms against {row['people']} people; face {row['face_px']} px, "
                  f"matched {row['matched']!r}"
                  + (f"; quietest of {row['rounds']} rounds of {args.runs}" if row["rounds"] > 1 else ""))
        if args.enroll:
            report["enroll"] = bench_enroll(args.enroll, Path(tmp))
            if report["enroll"]:
                e = report["enroll"]
                print(f"enroll {e['photos']} photos ({e['enrolled']} passed the quality gates): {e['seconds']:.1f} s, "
                      f"{e['per_photo_ms']:.0f} ms per photo (plus {e['load_s']:.1f} s loading the models)")
    print(f"machine: {report['machine']}; load average {report['load_average']:.2f}; one thread")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
