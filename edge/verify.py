"""Do two photos show the same person? (Siamese verification: one distance, one threshold.)

    python -m edge.verify IMAGE_A IMAGE_B [--json] [--model M] [--threshold T]

Each photo's largest face is embedded; the two are the same person when the L2 distance is at
or below the threshold (the model's calibrated one unless given). Exit 0 with the answer;
1 when a photo shows no face; 2 for errors (unreadable image, broken model).
"""

from __future__ import annotations

import argparse
import json
import sys

from edge.errors import EdgeError, NoFaceError

DEFAULT_MODEL = "models/facenet/facenet_dynamic.tflite"
DEFAULT_MTCNN = "models/mtcnn"
EXIT_OK, EXIT_NO_FACE, EXIT_ERROR = 0, 1, 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="edge-face-verify", description="Do two photos show the same person?",
                                     epilog="Exit codes: 0 answered, 1 a photo shows no face, 2 errors.")
    parser.add_argument("image_a")
    parser.add_argument("image_b")
    parser.add_argument("--model", default=DEFAULT_MODEL, help=f"embedding model (default {DEFAULT_MODEL})")
    parser.add_argument("--mtcnn-dir", default=DEFAULT_MTCNN)
    parser.add_argument("--threshold", type=float, help="L2 distance threshold (default: the model's)")
    parser.add_argument("--min-face", type=int, default=20)
    parser.add_argument("--flip", action="store_true", help="average each face's embedding with its mirror's")
    parser.add_argument("--json", action="store_true")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    import numpy as np

    from edge.images import load_image
    from edge.recognizer import Recognizer

    try:
        if args.threshold is not None and not 0 < args.threshold < 4:
            raise EdgeError(f"--threshold must be an L2 distance in (0, 4), got {args.threshold}")
        images = [load_image(args.image_a), load_image(args.image_b)]
        recognizer = Recognizer.from_paths(args.model, None, mtcnn_dir=args.mtcnn_dir, min_face_size=args.min_face,
                                           threshold=args.threshold, flip=args.flip, pad_retry=True)
        embeddings = []
        for path, image in zip((args.image_a, args.image_b), images, strict=True):
            faces = recognizer.detect(image)
            if not faces:
                raise NoFaceError(f"{path}: no face found")
            largest = max(faces, key=lambda f: f.box[2] * f.box[3])
            embeddings.append(recognizer.embed_faces(image, [largest])[0])
    except NoFaceError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_NO_FACE
    except (EdgeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_ERROR
    distance = float(np.linalg.norm(embeddings[0] - embeddings[1]))
    same = distance <= recognizer.threshold
    if args.json:
        print(json.dumps({"image_a": args.image_a, "image_b": args.image_b, "same": same,
                          "distance": round(distance, 4), "threshold": recognizer.threshold,
                          "model_id": recognizer.model_id}))
    else:
        verdict = "same person" if same else "different people"
        print(f"{verdict}: distance {distance:.3f} {'<=' if same else '>'} threshold {recognizer.threshold:.3f}")
    return EXIT_OK


if __name__ == "__main__":
    raise SystemExit(main())
