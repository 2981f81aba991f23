"""Recognize the faces in image files against the gallery.

    python -m edge.recognize --gallery PATH [--json] [--model M] IMAGE_OR_DIR...

Prints one line per face (box, name or `unknown`, distance); `--json` prints one array with one
object per image: {"image": path, "faces": [{"box": [x, y, w, h], "name": str|null, "distance": float}]}.
A photo without faces is a normal answer (exit 0); unreadable images, a missing or foreign
gallery and broken models are errors (exit 2), reported on stderr naming the file.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from edge.errors import EdgeError

DEFAULT_MODEL = "models/facenet/facenet_dynamic.tflite"
DEFAULT_MTCNN = "models/mtcnn"
EXIT_OK, EXIT_ERROR = 0, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-face-recognize", description="Recognize faces in image files.",
                                     epilog="Exit codes: 0 done (also when no face is found), 2 errors.")
    parser.add_argument("images", nargs="+", help="image files or folders of images")
    parser.add_argument("--gallery", required=True, help="gallery database written by tools/enroll.py")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"embedding model (default {DEFAULT_MODEL})")
    parser.add_argument("--mtcnn-dir", default=DEFAULT_MTCNN, help=f"detector models (default {DEFAULT_MTCNN})")
    parser.add_argument("--threshold", type=float, help="match threshold (default: the model's calibrated one)")
    parser.add_argument("--min-face", type=int, default=20, help="smallest face the detector looks for, px")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--flip", action="store_true", help="average each face's embedding with its mirror's")
    parser.add_argument("--json", action="store_true", help="one JSON array on stdout")
    return parser


def _distance(value: float) -> float | None:
    """JSON has no infinity: an empty gallery's distance is null."""
    return None if not math.isfinite(value) else round(float(value), 4)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from edge.images import expand_image_args, load_image
    from edge.recognizer import Recognizer

    try:
        if args.threshold is not None and not 0 < args.threshold < 4:
            raise EdgeError(f"--threshold must be an L2 distance in (0, 4), got {args.threshold}")
        paths = expand_image_args(args.images)
        if not Path(args.gallery).exists():
            raise EdgeError(f"{args.gallery}: no such gallery (enroll someone first with tools/enroll.py)")
        recognizer = Recognizer.from_paths(args.model, args.gallery, mtcnn_dir=args.mtcnn_dir, threads=args.threads,
                                           min_face_size=args.min_face, threshold=args.threshold, flip=args.flip,
                                           readonly=True, pad_retry=True)
    except (EdgeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    results = []
    status = EXIT_OK
    try:
        for path in paths:
            try:
                image = load_image(path)
                faces = recognizer.recognize(image)
            except EdgeError as exc:
                print(f"error: {exc}", file=sys.stderr)
                status = EXIT_ERROR
                continue
            entry = {"image": str(path), "faces": [
                {"box": [round(float(v), 1) for v in face.box], "name": face.name,
                 "distance": _distance(face.distance)} for face in faces]}
            results.append(entry)
            if not args.json:
                if not faces:
                    print(f"{path}: no face")
                for face in entry["faces"]:
                    x, y, w, h = face["box"]
                    distance = "-" if face["distance"] is None else f"{face['distance']:.3f}"
                    print(f"{path}: box {x:.0f},{y:.0f},{w:.0f}x{h:.0f}  {face['name'] or 'unknown'}  "
                          f"distance {distance}")
    finally:
        recognizer.close()
    if args.json:
        print(json.dumps(results, indent=1))
    return status


if __name__ == "__main__":
    raise SystemExit(main())
