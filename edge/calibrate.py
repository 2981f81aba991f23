"""Pick the match threshold that reaches a target false-accept rate on your own people.

    python -m edge.calibrate PEOPLE_DIR --far 1e-3 [--model M] [--write]

PEOPLE_DIR holds one folder per person (`<name>/*.jpg`). Every photo's largest face is embedded,
all pairs are compared (edge.metrics), and the threshold is the largest one whose false-accept
rate on the impostor pairs stays at or below `--far`. With `--write` it replaces the threshold in
the model's metadata JSON, atomically, with a record of what it was calibrated on (folder, number
of people, photos and pairs, a digest of the photos, date, crop settings). A door threshold is
only as trustworthy as the number of impostor pairs behind it: with fewer than 1/FAR pairs the
FAR cannot be resolved, and the tool says so.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edge import metrics
from edge.errors import EdgeError, ModelError

DEFAULT_MODEL = "models/facenet/facenet_dynamic.tflite"
DEFAULT_MTCNN = "models/mtcnn"
EXIT_OK, EXIT_ERROR = 0, 2


@dataclass
class Calibration:
    """The outcome of one calibration run."""

    far_target: float
    threshold: float
    tar: float
    far: float
    roc_auc: float
    eer: float
    people: int
    images: int
    genuine_pairs: int
    impostor_pairs: int
    skipped: list[str]
    data_sha256: str

    @property
    def resolvable(self) -> bool:
        """Whether there are enough impostor pairs to observe a single false accept at the target FAR."""
        return self.impostor_pairs * self.far_target >= 1.0


def people_photos(folder: Path) -> dict[str, list[Path]]:
    """`<name>/<photo>` under folder, sorted; refuses a folder without people in it."""
    from edge.images import list_images

    if not folder.is_dir():
        raise EdgeError(f"{folder}: not a directory of people (expected <name>/*.jpg)")
    people = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        photos = list_images(sub)
        if photos:
            people[sub.name] = photos
    if len(people) < 2:
        raise EdgeError(f"{folder}: needs at least 2 people folders with photos, found {len(people)}")
    return people


def calibrate(embeddings: np.ndarray, labels: list[str], far: float, skipped: list[str] | None = None,
              digests: list[str] | None = None) -> Calibration:
    """Threshold at the target FAR over all pairs of the embeddings."""
    distances, same = metrics.pair_distances(embeddings, labels)
    if not same.any():
        raise EdgeError("no genuine pairs: at least one person needs two photos with a detectable face")
    if same.all():
        raise EdgeError("no impostor pairs: photos of at least two people are needed")
    threshold = metrics.threshold_at_far(distances, same, far)
    tar, actual_far = metrics.rates_at(distances, same, threshold)
    digest = hashlib.sha256("\n".join(sorted(digests or [])).encode()).hexdigest()
    return Calibration(far_target=far, threshold=float(threshold), tar=tar, far=actual_far,
                       roc_auc=metrics.roc_auc(distances, same), eer=metrics.equal_error_rate(distances, same),
                       people=len(set(labels)), images=len(labels), genuine_pairs=int(same.sum()),
                       impostor_pairs=int((~same).sum()), skipped=list(skipped or []), data_sha256=digest)


def write_threshold(model_path: str | Path, result: Calibration, record: dict[str, Any]) -> Path:
    """Replace the threshold in the model's metadata JSON atomically, keeping every other key."""
    from edge.model_metadata import atomic_write_bytes, metadata_path, parse_metadata, read_metadata

    read_metadata(model_path)  # refuse to edit metadata that is already broken
    path = metadata_path(model_path)
    data = json.loads(path.read_text(encoding="utf-8"))
    data["threshold"] = round(result.threshold, 6)
    data["threshold_source"] = (f"edge.calibrate: FAR {result.far_target:g} over {result.impostor_pairs} impostor "
                                f"pairs of {result.people} people in {record['data_dir']}")
    history = data.get("calibration_history") if isinstance(data.get("calibration_history"), list) else []
    if isinstance(data.get("calibration"), dict):
        history.append(data["calibration"])
    data["calibration"] = record
    data["calibration_history"] = history[-10:]
    text = json.dumps(data, indent=2, sort_keys=True) + "\n"
    parse_metadata(json.loads(text), path)  # never write what the embedder could not read back
    atomic_write_bytes(path, text.encode("utf-8"))
    return path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-face-calibrate", description=__doc__.split("\n\n")[0])
    parser.add_argument("people_dir", type=Path, help="folder of <name>/*.jpg")
    parser.add_argument("--far", type=float, default=1e-3, help="target false-accept rate (default 1e-3)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"embedding model (default {DEFAULT_MODEL})")
    parser.add_argument("--mtcnn-dir", default=DEFAULT_MTCNN)
    parser.add_argument("--min-face", type=int, default=20)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--flip", action="store_true", help="calibrate mirror-averaged embeddings")
    parser.add_argument("--write", action="store_true", help="store the threshold in the model's metadata JSON")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from edge.images import load_image
    from edge.recognizer import Recognizer

    try:
        if not 0.0 < args.far < 1.0:
            raise EdgeError(f"--far must be in (0, 1), got {args.far}")
        people = people_photos(args.people_dir)
        recognizer = Recognizer.from_paths(args.model, None, mtcnn_dir=args.mtcnn_dir, threads=args.threads,
                                           min_face_size=args.min_face, flip=args.flip, pad_retry=True)
        embeddings, labels, digests, skipped = [], [], [], []
        for name, photos in people.items():
            for photo in photos:
                image = load_image(photo)
                faces = recognizer.detect(image)
                if not faces:
                    skipped.append(str(photo))
                    continue
                largest = max(faces, key=lambda f: f.box[2] * f.box[3])
                embeddings.append(recognizer.embed_faces(image, [largest])[0])
                labels.append(name)
                digests.append(hashlib.sha256(photo.read_bytes()).hexdigest())
        if len(embeddings) < 3:
            raise EdgeError(f"{args.people_dir}: only {len(embeddings)} photos with a face; too few to calibrate")
        result = calibrate(np.stack(embeddings), labels, args.far, skipped, digests)
        written = None
        if args.write:
            record = {"far_target": args.far, "threshold": result.threshold, "tar": result.tar, "far": result.far,
                      "roc_auc": result.roc_auc, "eer": result.eer, "people": result.people, "images": result.images,
                      "genuine_pairs": result.genuine_pairs, "impostor_pairs": result.impostor_pairs,
                      "skipped_no_face": len(skipped), "data_dir": str(args.people_dir.resolve()),
                      "data_sha256": result.data_sha256, "resolvable": result.resolvable,
                      "crop": {"method": recognizer.crop.method, "margin_px": recognizer.crop.margin_px},
                      "flip": args.flip, "min_face_size": args.min_face,
                      "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "tool": "edge.calibrate"}
            written = write_threshold(args.model, result, record)
    except (EdgeError, ModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if args.json:
        out = {k: v for k, v in vars(result).items()}
        out["resolvable"] = result.resolvable
        out["written"] = str(written) if written else None
        print(json.dumps(out))
    else:
        print(f"threshold {result.threshold:.4f} at FAR <= {args.far:g} (observed FAR {result.far:.2e}, "
              f"TAR {result.tar:.3f}); ROC AUC {result.roc_auc:.4f}, EER {result.eer:.3f}")
        print(f"{result.people} people, {result.images} photos, {result.genuine_pairs} genuine and "
              f"{result.impostor_pairs} impostor pairs; {len(skipped)} photo(s) without a face skipped")
        if written:
            print(f"wrote the threshold into {written}")
    if not result.resolvable:
        print(f"warning: {result.impostor_pairs} impostor pairs cannot resolve FAR {args.far:g} (need at least "
              f"{int(np.ceil(1 / args.far))}); the threshold is the tightest these data allow, add more people",
              file=sys.stderr)
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
