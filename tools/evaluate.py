"""Measure recognition quality on a folder of people: verification, open-set identification, SVM.

    python -m tools.evaluate PEOPLE_DIR [--model M] [--json OUT] [--roc PNG]

PEOPLE_DIR holds `<name>/*.jpg`. Every photo goes through the pipeline the door uses (MTCNN,
crop, FaceNet on LiteRT); the largest face of each photo stands for it. Photos without a face
are counted, never silently dropped. Three views of quality:

- verification over all pairs of photos with a face: ROC AUC, EER, TAR at FAR 1e-2 / 1e-3, and
  the LFW protocol's 10-fold accuracy (on all genuine pairs plus as many impostor pairs drawn at
  random, so accuracy is not dominated by the far more numerous impostor pairs);
- open-set identification as the door sees it: everyone with two or more photos is enrolled
  from the first (by file name), their other photos are genuine probes, people with one photo
  are strangers; at the model's threshold count correct accepts, false rejects, wrong-person
  accepts and stranger accepts;
- the FaceNet seeds' check: a linear SVM over embeddings, k-fold classification accuracy.

`evaluate()` is importable so crop, flip and threshold settings can be swept from Python.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from edge import metrics
from edge.crop import CropSpec
from edge.errors import EdgeError, ImageError
from edge.images import list_images, load_image

DEFAULT_MODEL = Path("models/facenet/facenet_dynamic.tflite")
DEFAULT_MTCNN = Path("models/mtcnn")
SVM_FOLDS = 5
DEFAULT_CROP = CropSpec()
PAIR_SEED = 0


@dataclass(frozen=True)
class Photo:
    """One photo of a labelled person."""

    path: Path
    person: str


def list_people(people_dir: str | Path) -> list[Photo]:
    """All photos of `<name>/*` sorted by person then file name (enrollment relies on the order)."""
    people_dir = Path(people_dir)
    if not people_dir.is_dir():
        raise ImageError(f"{people_dir}: not a directory (expected PEOPLE_DIR/<name>/*.jpg)")
    photos = [
        Photo(path, folder.name)
        for folder in sorted(p for p in people_dir.iterdir() if p.is_dir())
        for path in list_images(folder)
    ]
    if not photos:
        raise ImageError(f"{people_dir}: no photos found (expected PEOPLE_DIR/<name>/*.jpg)")
    return photos


class FacePipeline(Protocol):
    """What evaluation needs from a recognizer: find faces, embed one of them."""

    name: str
    threshold: float

    def detect(self, image: np.ndarray) -> list[Any]:
        """Faces in an RGB image, largest first."""
        ...

    def embed(self, image: np.ndarray, face: Any) -> np.ndarray:
        """One embedding row (D,) for a face returned by `detect`."""
        ...


class EdgePipeline:
    """Our pipeline: MTCNN, crop, FaceNet on LiteRT, through `edge.recognizer.Recognizer`."""

    def __init__(self, model: str | Path = DEFAULT_MODEL, mtcnn_dir: str | Path = DEFAULT_MTCNN,
                 crop: CropSpec = DEFAULT_CROP, flip: bool = False, threads: int = 1,
                 threshold: float | None = None, min_face_size: int = 20) -> None:
        from edge.detector import FaceDetector
        from edge.embedder import Embedder
        from edge.recognizer import Recognizer

        self.embedder = Embedder(model, threads=threads)
        self.detector = FaceDetector(mtcnn_dir, min_face_size=min_face_size, threads=threads)
        self.threshold = float(self.embedder.threshold if threshold is None else threshold)
        # Photo files, as tools/enroll.py and edge.recognize read them: pad retry on tight crops.
        self.recognizer = Recognizer(self.detector, self.embedder, None, threshold=self.threshold, crop=crop, flip=flip,
                                     pad_retry=True)
        self.name = self.embedder.model_id

    def detect(self, image: np.ndarray) -> list[Any]:
        return self.recognizer.detect(image)

    def embed(self, image: np.ndarray, face: Any) -> np.ndarray:
        return self.recognizer.embed_faces(image, [face])[0]

    def enroll(self, image: np.ndarray, face: Any) -> np.ndarray:
        """What tools/enroll.py stores for one photo, as a (1, D) row."""
        return self.recognizer.enrollment_embedding(image, face)[None, :]


@dataclass
class Collected:
    """Per-photo results of running a pipeline over a folder."""

    photos: list[Photo]
    embeddings: np.ndarray  # (N, D) float32, rows of photos without a face are NaN
    found: np.ndarray  # (N,) bool: a face was found
    detect_s: list[float] = field(default_factory=list)
    embed_s: list[float] = field(default_factory=list)  # only photos with a face
    # Row index -> what enrollment stores for that photo, for each person's first photo with a face,
    # when the pipeline enrolls differently from how it probes (ours: a template averaged over views).
    enroll_views: dict[int, np.ndarray] = field(default_factory=dict)


def collect(pipeline: FacePipeline, photos: Sequence[Photo], progress: bool = False,
            prepare: Callable[[np.ndarray], np.ndarray] | None = None) -> Collected:
    """Run the pipeline on every photo; unreadable images raise ImageError naming the file.

    `prepare` transforms each loaded image first (benchmarks scale photos to camera frames).
    """
    rows: list[np.ndarray | None] = []
    detect_s: list[float] = []
    embed_s: list[float] = []
    enroll_views: dict[int, np.ndarray] = {}
    enroll = getattr(pipeline, "enroll", None)
    enroll_rows, _ = enrollment_plan([photo.person for photo in photos])
    for index, photo in enumerate(photos, 1):
        image = load_image(photo.path)
        if prepare is not None:
            image = prepare(image)
        start = time.perf_counter()
        faces = pipeline.detect(image)
        detect_s.append(time.perf_counter() - start)
        if faces:
            start = time.perf_counter()
            rows.append(np.asarray(pipeline.embed(image, faces[0]), dtype=np.float32).ravel())
            embed_s.append(time.perf_counter() - start)
            if enroll is not None and index - 1 in enroll_rows:
                enroll_views[index - 1] = np.asarray(enroll(image, faces[0]), dtype=np.float32)
        else:
            rows.append(None)
        if progress:
            print(f"\r{pipeline.name}: {index}/{len(photos)} photos", end="", file=sys.stderr, flush=True)
    if progress:
        print(file=sys.stderr)
    return Collected(list(photos), stack_embeddings(rows), np.array([r is not None for r in rows]), detect_s, embed_s,
                     enroll_views)


def stack_embeddings(rows: Sequence[np.ndarray | None]) -> np.ndarray:
    """(N, D) array with NaN rows where no face was found."""
    sizes = {len(r) for r in rows if r is not None}
    if len(sizes) > 1:
        raise ValueError(f"embeddings of different sizes {sorted(sizes)}")
    width = sizes.pop() if sizes else 0
    out = np.full((len(rows), width), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        if row is not None:
            out[i] = row
    return out


def nearest(probes: np.ndarray, enrolled: np.ndarray, names: Sequence[str],
            threshold: float) -> list[tuple[str | None, float]]:
    """For each probe, the nearest enrolled name if within `threshold` (else None), and its distance."""
    if len(enrolled) == 0:
        return [(None, float("inf")) for _ in range(len(probes))]
    distances = metrics.l2_distances(probes, enrolled)
    best = np.argmin(distances, axis=1)
    return [
        (names[j] if distances[i, j] <= threshold else None, float(distances[i, j]))
        for i, j in enumerate(best)
    ]


def enrollment_plan(persons: Sequence[str]) -> tuple[list[int], list[int]]:
    """(rows to enroll, probe rows): the first photo of each person with 2+ photos is enrolled;
    every other photo, and every single-photo stranger, is a probe. `persons` is in list_people order."""
    persons = list(persons)
    counts = {p: persons.count(p) for p in persons}
    first: dict[str, int] = {}
    for i, p in enumerate(persons):
        first.setdefault(p, i)
    enroll = [i for p, i in first.items() if counts[p] >= 2]
    probes = [i for i, p in enumerate(persons) if i != first[p] or counts[p] == 1]
    return enroll, probes


def open_set(embeddings: np.ndarray, found: np.ndarray, persons: Sequence[str], threshold: float,
             enroll_views: dict[int, np.ndarray] | None = None) -> dict[str, int]:
    """Door-style counts. `persons` is sorted by person then file name, as `list_people` returns it.

    A person with two or more photos is enrolled from their first photo; if no face is found on
    it they stay un-enrolled (`enroll_no_face`) and their probes still count. A genuine probe
    without a face is a false reject; a stranger photo without a face is not accepted.
    """
    persons = list(persons)
    counts = {p: persons.count(p) for p in persons}
    enroll, probes = enrollment_plan(persons)
    enrolled_rows = [i for i in enroll if found[i]]
    # Each enrolled photo is represented by what enrollment stored of it (the nearest row counts).
    views = [enroll_views[i] if enroll_views and i in enroll_views else embeddings[i:i + 1] for i in enrolled_rows]
    references = np.concatenate(views) if views else embeddings[:0]
    names = [persons[i] for i, v in zip(enrolled_rows, views, strict=True) for _ in range(len(v))]
    result = {"genuine": 0, "correct_accept": 0, "false_reject": 0, "wrong_accept": 0,
              "strangers": 0, "stranger_accept": 0, "enrolled": len(enrolled_rows),
              "enroll_no_face": len(enroll) - len(enrolled_rows), "genuine_no_face": 0, "stranger_no_face": 0}
    with_face = [i for i in probes if found[i]]
    matches = dict(zip(with_face, nearest(embeddings[with_face], references, names, threshold),
                       strict=True))
    for i in probes:
        stranger = counts[persons[i]] == 1
        name = matches[i][0] if i in matches else None
        if stranger:
            result["strangers"] += 1
            result["stranger_no_face"] += int(not found[i])
            result["stranger_accept"] += int(name is not None)
            continue
        result["genuine"] += 1
        result["genuine_no_face"] += int(not found[i])
        if name is None:
            result["false_reject"] += 1
        elif name == persons[i]:
            result["correct_accept"] += 1
        else:
            result["wrong_accept"] += 1
    return result


def balanced_pairs(distances: np.ndarray, same: np.ndarray, seed: int = PAIR_SEED) -> tuple[np.ndarray, np.ndarray]:
    """All genuine pairs plus an equal number of impostor pairs drawn at random (LFW is balanced)."""
    genuine = np.flatnonzero(same)
    impostor = np.flatnonzero(~same)
    take = min(len(genuine), len(impostor))
    chosen = np.random.default_rng(seed).choice(impostor, size=take, replace=False)
    keep = np.sort(np.concatenate([genuine, chosen]))
    return distances[keep], same[keep]


def verification(embeddings: np.ndarray, persons: Sequence[str], folds: int = 10) -> dict[str, Any]:
    """Pairwise verification metrics over photos with a face; raises EdgeError if pairs are missing."""
    distances, same = metrics.pair_distances(embeddings, list(persons))
    if same.sum() == 0 or (~same).sum() == 0:
        raise EdgeError(f"verification needs genuine and impostor pairs; got {int(same.sum())} genuine and "
                        f"{int((~same).sum())} impostor pairs (need 2+ photos of someone and 2+ people)")
    tar2, _ = metrics.tar_at_far(distances, same, 1e-2)
    tar3, _ = metrics.tar_at_far(distances, same, 1e-3)
    bal_d, bal_s = balanced_pairs(distances, same)
    accuracy = metrics.kfold_accuracy(bal_d, bal_s, folds=folds) if len(bal_d) >= folds else None
    return {
        "pairs": int(len(distances)), "genuine_pairs": int(same.sum()),
        "roc_auc": metrics.roc_auc(distances, same), "eer": metrics.equal_error_rate(distances, same),
        "tar_at_far_1e-2": tar2, "tar_at_far_1e-3": tar3, "accuracy_10fold": accuracy,
        "best_accuracy_threshold": metrics.best_accuracy_threshold(bal_d, bal_s),
    }


def svm_accuracy(embeddings: np.ndarray, persons: Sequence[str], folds: int = SVM_FOLDS,
                 seed: int = 0) -> tuple[float | None, int]:
    """Stratified k-fold accuracy of a linear SVM over people with at least `folds` photos.

    Returns (accuracy, number of people used); accuracy is None when fewer than two people qualify.
    """
    from sklearn.model_selection import StratifiedKFold
    from sklearn.svm import SVC

    persons = np.asarray(persons)
    names, counts = np.unique(persons, return_counts=True)
    keep_names = names[counts >= folds]
    if len(keep_names) < 2:
        return None, int(len(keep_names))
    keep = np.isin(persons, keep_names)
    x, y = embeddings[keep], persons[keep]
    correct = 0
    for train, test in StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, y):
        classifier = SVC(kernel="linear").fit(x[train], y[train])
        correct += int((classifier.predict(x[test]) == y[test]).sum())
    return correct / len(y), int(len(keep_names))


def summarize(collected: Collected, threshold: float, model: str) -> dict[str, Any]:
    """The evaluation report (the `--json` object) from per-photo embeddings."""
    found = collected.found
    persons = [p.person for p in collected.photos]
    with_face = np.flatnonzero(found)
    face_persons = [persons[i] for i in with_face]
    emb = collected.embeddings[with_face]
    verify = verification(emb, face_persons)
    svm, svm_people = svm_accuracy(emb, face_persons)
    return {
        "model": model,
        "images": len(collected.photos),
        "people": len(set(persons)),
        "no_face": int((~found).sum()),
        "no_face_files": [str(collected.photos[i].path) for i in np.flatnonzero(~found)],
        "roc_auc": verify["roc_auc"],
        "eer": verify["eer"],
        "tar_at_far_1e-2": verify["tar_at_far_1e-2"],
        "tar_at_far_1e-3": verify["tar_at_far_1e-3"],
        "accuracy_10fold": verify["accuracy_10fold"],
        "pairs": verify["pairs"],
        "genuine_pairs": verify["genuine_pairs"],
        "threshold": float(threshold),
        "open_set": open_set(collected.embeddings, found, persons, threshold, collected.enroll_views),
        "svm_accuracy": svm,
        "svm_people": svm_people,
        "svm_folds": SVM_FOLDS,
    }


def roc_curve(collected: Collected) -> tuple[np.ndarray, np.ndarray]:
    """(far, tar) over all pairs of photos with a face."""
    with_face = np.flatnonzero(collected.found)
    distances, same = metrics.pair_distances(collected.embeddings[with_face],
                                             [collected.photos[i].person for i in with_face])
    far, tar, _ = metrics.roc(distances, same)
    return far, tar


def plot_roc(curves: dict[str, tuple[np.ndarray, np.ndarray]], out: str | Path, title: str = "ROC") -> Path:
    """Draw TAR against FAR (log scale) for each named curve into a small PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise EdgeError("--roc needs matplotlib (pip install -e '.[bench]')") from None
    out = Path(out)
    fig, ax = plt.subplots(figsize=(6, 4), dpi=80)
    for name, (far, tar) in curves.items():
        ax.step(np.maximum(far, 1e-5), tar, where="post", label=name, linewidth=1.2)
    ax.set_xscale("log")
    ax.set_xlim(1e-4, 1.0)
    ax.set_ylim(0.0, 1.01)
    ax.set_xlabel("false accept rate (log)")
    ax.set_ylabel("true accept rate")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def evaluate(people_dir: str | Path, model: str | Path = DEFAULT_MODEL, crop: CropSpec = DEFAULT_CROP,
             flip: bool = False, mtcnn_dir: str | Path = DEFAULT_MTCNN, threads: int = 1,
             threshold: float | None = None, progress: bool = False, roc_png: str | Path | None = None,
             pipeline: FacePipeline | None = None) -> dict[str, Any]:
    """Evaluate one pipeline on PEOPLE_DIR and return the report (see module docstring).

    `threshold` overrides the model's own; `pipeline` replaces ours (benchmarks pass the peer).
    """
    photos = list_people(people_dir)
    if pipeline is None:
        pipeline = EdgePipeline(model, mtcnn_dir, crop=crop, flip=flip, threads=threads, threshold=threshold)
    collected = collect(pipeline, photos, progress=progress)
    report = summarize(collected, pipeline.threshold if threshold is None else threshold, pipeline.name)
    report["crop"] = {"method": crop.method, "margin_px": crop.margin_px, "size": crop.size}
    report["flip"] = flip
    if roc_png is not None:
        plot_roc({pipeline.name: roc_curve(collected)}, roc_png, title=f"ROC on {Path(people_dir).name}")
    return report


def format_report(report: dict[str, Any]) -> str:
    """A short human-readable summary."""
    o = report["open_set"]
    svm = "n/a" if report["svm_accuracy"] is None else f"{report['svm_accuracy']:.3f}"
    acc = "n/a" if report["accuracy_10fold"] is None else f"{report['accuracy_10fold']:.3f}"
    lines = [
        f"model {report['model']}: {report['images']} photos of {report['people']} people, "
        f"no face found on {report['no_face']}",
        f"verification: AUC {report['roc_auc']:.4f}  EER {report['eer']:.4f}  "
        f"TAR@FAR1e-2 {report['tar_at_far_1e-2']:.3f}  TAR@FAR1e-3 {report['tar_at_far_1e-3']:.3f}  "
        f"10-fold accuracy {acc}",
        f"open set at threshold {report['threshold']:.3f}: {o['correct_accept']}/{o['genuine']} correct accepts, "
        f"{o['false_reject']} false rejects, {o['wrong_accept']} wrong-person accepts, "
        f"{o['stranger_accept']}/{o['strangers']} strangers accepted",
        f"SVM {report['svm_folds']}-fold accuracy over {report['svm_people']} people: {svm}",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("people_dir", type=Path, help="folder of <name>/*.jpg")
    parser.add_argument("--model", type=Path, default=DEFAULT_MODEL, help=f"FaceNet .tflite (default {DEFAULT_MODEL})")
    parser.add_argument("--mtcnn", type=Path, default=DEFAULT_MTCNN,
                        help=f"MTCNN models folder (default {DEFAULT_MTCNN})")
    parser.add_argument("--json", type=Path, default=None, help="write the report as one JSON object")
    parser.add_argument("--roc", type=Path, default=None, help="draw the ROC curve into this PNG")
    parser.add_argument("--threshold", type=float, default=None, help="override the model's distance threshold")
    parser.add_argument("--crop", choices=("box", "aligned"), default="box", help="crop method (default box)")
    parser.add_argument("--margin", type=float, default=CropSpec().margin_px,
                        help=f"crop margin in pixels (default {CropSpec().margin_px:g}, the product's)")
    parser.add_argument("--flip", action="store_true", help="average embeddings with the mirrored crop")
    parser.add_argument("--threads", type=int, default=1, help="inference threads (default 1)")
    args = parser.parse_args(argv)
    try:
        report = evaluate(args.people_dir, args.model, CropSpec(args.crop, args.margin), args.flip, args.mtcnn,
                          args.threads, args.threshold, progress=sys.stderr.isatty(), roc_png=args.roc)
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(format_report(report))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
