"""Fine-tune FaceNet with triplets mined inside each batch (P people x K photos).

    python -m tools.train_triplet PEOPLE_DIR --model models/facenet/triplet_loss_model.h5 --out tuned.h5

Faces are found with the device's MTCNN and cropped exactly as the door crops them. People are
split into training and validation sets (by person, never by photo; single-photo people go to
validation as impostors). The early blocks stay frozen: their features are computed once per
crop (and its mirror image), so an epoch only runs the trainable top of the network, which keeps
a CPU run to minutes. Each step draws P people x K photos and mines triplets in the batch
(`batch-hard` or `semi-hard`, tools/triplet.py). After every epoch the validation TAR at FAR 1e-3
(ties broken by ROC AUC) decides early stopping; the best epoch is kept. The tuned model is saved
only when it beats the starting model on validation; otherwise nothing is written and the exit
status is 3. A GPU is used when TensorFlow sees one.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402

from edge import metrics  # noqa: E402
from edge.crop import CropSpec, face_crop, standardize  # noqa: E402
from edge.errors import EdgeError, ModelError  # noqa: E402
from edge.images import load_image  # noqa: E402
from tools.build_facenet import load_triplet_model, save_model_atomic  # noqa: E402
from tools.evaluate import Photo, list_people  # noqa: E402
from tools.triplet import DEFAULT_ALPHA, batch_hard_triplet_loss, semi_hard_triplet_loss  # noqa: E402

MINING = {"batch-hard": batch_hard_triplet_loss, "semi-hard": semi_hard_triplet_loss}
# Where the frozen part ends (its output is cached); everything after it is trained.
CUTS = {
    "block8": "InceptionResnetV1__Mixed_7a__concat",  # train the 5 block8 units, Block8, bottleneck
    "Block8": "InceptionResnetV1__Repeat_2__block8_5__Relu",  # train Block8 and the bottleneck
    "bottleneck": "InceptionResnetV1__Logits__Flatten",  # train the bottleneck (dense + batch norm) only
}
TARGET_FAR = 1e-3
NOT_BETTER = 3


@dataclass
class Faces:
    """Model-ready crops with their identities."""

    crops: np.ndarray  # (N, S, S, 3) uint8
    persons: np.ndarray  # (N,) str
    no_face: list[str]


def detect_crops(photos: list[Photo], mtcnn_dir: Path, spec: CropSpec, cache: Path | None = None) -> Faces:
    """Largest face of every photo, cropped like the door does; photos without a face are listed."""
    import edge.detector

    # The cache is valid for these photos, crop settings, MTCNN files and detector code only.
    detector_files = [Path(edge.detector.__file__), *sorted(Path(mtcnn_dir).glob("*"))]
    key = hashlib.sha256(json.dumps([
        [str(p.path), p.person, p.path.stat().st_size, p.path.stat().st_mtime_ns] for p in photos
    ] + [spec.method, spec.margin_px, spec.size] + [
        hashlib.sha256(f.read_bytes()).hexdigest() for f in detector_files if f.is_file()
    ]).encode()).hexdigest()[:16]
    if cache is not None and cache.is_file():
        stored = np.load(cache, allow_pickle=False)
        if str(stored["key"]) == key:
            return Faces(stored["crops"], stored["persons"], [str(x) for x in stored["no_face"]])
    detector = edge.detector.FaceDetector(mtcnn_dir, threads=max(1, (os.cpu_count() or 1)))
    crops, persons, no_face = [], [], []
    bar = keras.utils.Progbar(len(photos), unit_name="photo")
    for photo in photos:
        image = load_image(photo.path)
        faces = detector.detect(image)
        if faces:
            crops.append(face_crop(image, faces[0].box, faces[0].landmarks, spec))
            persons.append(photo.person)
        else:
            no_face.append(str(photo.path))
        bar.add(1)
    faces = Faces(np.stack(crops) if crops else np.zeros((0, spec.size, spec.size, 3), np.uint8),
                  np.array(persons), no_face)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, key=key, crops=faces.crops, persons=faces.persons, no_face=np.array(no_face, dtype=str))
    return faces


def split_people(persons: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Boolean masks (train, val) splitting people, not photos.

    People with two or more crops are shuffled; `val_fraction` of them (at least two) go to
    validation, the rest to training. Single-crop people can't form a positive pair in training,
    so they join validation as impostors.
    """
    names, counts = np.unique(persons, return_counts=True)
    multi = names[counts >= 2]
    if len(multi) < 4:
        raise EdgeError(f"need at least 4 people with 2+ face photos to split by person, found {len(multi)}")
    shuffled = np.random.default_rng(seed).permutation(multi)
    n_val = min(max(2, round(val_fraction * len(multi))), len(multi) - 2)
    train_people = set(shuffled[n_val:].tolist())
    train = np.array([p in train_people for p in persons])
    return train, ~train


def check_model(model: keras.Model, size: int) -> None:
    """Refuse models that can't be FaceNet for these crops (model mismatch)."""
    shape = tuple(model.input_shape)
    if shape[1:] != (size, size, 3):
        raise ModelError(f"model input is {shape[1:]}, but crops are {(size, size, 3)}: not a FaceNet for these crops")
    if len(model.output_shape) != 2:
        raise ModelError(f"model output is {model.output_shape}, expected (batch, embedding)")


def split_model(model: keras.Model, cut: str) -> tuple[keras.Model, keras.Model]:
    """(frozen trunk up to `cut`, trainable head after it); the head shares the model's layers."""
    name = CUTS.get(cut, cut)
    try:
        layer = model.get_layer(name)
    except ValueError:
        choices = ", ".join(CUTS)
        raise ModelError(f"model has no layer {name!r} to train from (choose {choices} or a layer name)") from None
    trunk = keras.Model(model.input, layer.output, name="trunk")
    head = keras.Model(layer.output, model.output, name="head")
    for lyr in model.layers:
        lyr.trainable = False
    for lyr in head.layers:
        lyr.trainable = True
    return trunk, head


def trunk_features(trunk: keras.Model, crops: np.ndarray, batch: int = 32) -> np.ndarray:
    """Frozen-part features of the crops and of their mirror images: (2, N, ...)."""
    out = []
    for flipped in (False, True):
        x = standardize(crops[:, :, ::-1] if flipped else crops)
        out.append(np.concatenate([trunk.predict(x[i:i + batch], verbose=0) for i in range(0, len(x), batch)]))
    return np.stack(out)


def embed(head: keras.Model, features: np.ndarray, batch: int = 128) -> np.ndarray:
    """Embeddings of cached unflipped features, batch norm in inference mode."""
    return np.concatenate([head(features[i:i + batch], training=False).numpy() for i in range(0, len(features), batch)])


def score(embeddings: np.ndarray, persons: np.ndarray) -> tuple[float, float]:
    """(TAR at FAR 1e-3, ROC AUC) over all pairs: the validation criterion."""
    distances, same = metrics.pair_distances(embeddings, persons)
    return metrics.tar_at_far(distances, same, TARGET_FAR)[0], metrics.roc_auc(distances, same)


def sample_batch(rng: np.random.Generator, by_person: list[np.ndarray], people: int,
                 photos: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices and integer labels of P people x K photos (with repeats when someone has fewer than K)."""
    chosen = rng.choice(len(by_person), size=min(people, len(by_person)), replace=False)
    indices, labels = [], []
    for label, person in enumerate(chosen):
        pool = by_person[person]
        picked = rng.choice(pool, size=photos, replace=len(pool) < photos)
        indices.extend(picked.tolist())
        labels.extend([label] * photos)
    return np.array(indices), np.array(labels, dtype=np.int32)


def fine_tune(features: np.ndarray, persons: np.ndarray, train: np.ndarray, head: keras.Model, *,
              mining: str = "batch-hard", alpha: float = DEFAULT_ALPHA, learning_rate: float = 1e-5,
              epochs: int = 5, steps: int = 20, people: int = 8, photos: int = 4, patience: int = 2,
              seed: int = 0, verbose: bool = True) -> dict[str, Any]:
    """Train the head on cached features; keep the best validation epoch. Returns the history."""
    loss_fn = MINING[mining]
    val = ~train
    val_persons = persons[val]
    train_idx = np.flatnonzero(train)
    by_person = [train_idx[persons[train_idx] == p] for p in np.unique(persons[train_idx])]
    rng = np.random.default_rng(seed)
    optimizer = keras.optimizers.Adam(learning_rate=learning_rate)
    weights = head.trainable_weights

    @tf.function
    def step(x, labels):
        with tf.GradientTape() as tape:
            loss = loss_fn(labels, head(x, training=False), alpha)
        optimizer.apply_gradients(zip(tape.gradient(loss, weights), weights, strict=True))
        return loss

    baseline = score(embed(head, features[0][val]), val_persons)
    best, best_weights, best_epoch, waited = baseline, None, 0, 0
    history: dict[str, Any] = {"baseline": {"tar_at_far_1e-3": baseline[0], "roc_auc": baseline[1]}, "epochs": []}
    if verbose:
        print(f"start: validation TAR@FAR1e-3 {baseline[0]:.4f}, AUC {baseline[1]:.4f}")
    for epoch in range(1, epochs + 1):
        bar = keras.utils.Progbar(steps, verbose=1 if verbose else 0)
        losses = []
        for _ in range(steps):
            idx, labels = sample_batch(rng, by_person, people, photos)
            flips = rng.integers(0, 2, size=len(idx))
            x = tf.constant(features[flips, idx])
            loss = float(step(x, tf.constant(labels)))
            losses.append(loss)
            bar.add(1, values=[("loss", loss)])
        current = score(embed(head, features[0][val]), val_persons)
        history["epochs"].append({"epoch": epoch, "loss": float(np.mean(losses)),
                                  "tar_at_far_1e-3": current[0], "roc_auc": current[1]})
        if verbose:
            print(f"epoch {epoch}: loss {np.mean(losses):.4f}, validation TAR@FAR1e-3 {current[0]:.4f}, "
                  f"AUC {current[1]:.4f}")
        if current > best:
            best, best_weights, best_epoch, waited = current, [w.numpy() for w in head.weights], epoch, 0
        else:
            waited += 1
            if waited >= patience:
                if verbose:
                    print(f"early stop: no improvement for {patience} epochs")
                break
    if best_weights is not None:
        for variable, value in zip(head.weights, best_weights, strict=True):
            variable.assign(value)
    history.update(best={"tar_at_far_1e-3": best[0], "roc_auc": best[1]}, best_epoch=best_epoch,
                   improved=best > baseline)
    return history


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("people_dir", type=Path, help="folder of <name>/*.jpg")
    parser.add_argument("--model", type=Path, default=Path("models/facenet/triplet_loss_model.h5"),
                        help="Keras FaceNet to start from (default models/facenet/triplet_loss_model.h5)")
    parser.add_argument("--out", type=Path, required=True, help="where to save the tuned .h5 (only if better)")
    parser.add_argument("--mining", choices=sorted(MINING), default="batch-hard")
    parser.add_argument("--train-from", default="Block8",
                        help=f"frozen up to here: {', '.join(CUTS)} or a layer name (default Block8)")
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20, help="batches per epoch (default 20)")
    parser.add_argument("--people", type=int, default=8, help="P, people per batch (default 8)")
    parser.add_argument("--photos", type=int, default=4, help="K, photos per person in a batch (default 4)")
    parser.add_argument("--lr", type=float, default=1e-5, help="Adam learning rate (default 1e-5)")
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="triplet margin (default 0.2)")
    parser.add_argument("--patience", type=int, default=2, help="epochs without improvement before stopping")
    parser.add_argument("--val-fraction", type=float, default=0.3, help="share of people held out (default 0.3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--mtcnn", type=Path, default=Path("models/mtcnn"))
    parser.add_argument("--crop", choices=("box", "aligned"), default="box")
    parser.add_argument("--margin", type=float, default=CropSpec().margin_px, help="crop margin in pixels")
    parser.add_argument("--crops-cache", type=Path, default=None, help="reuse detected crops from this .npz")
    parser.add_argument("--report", type=Path, default=None, help="write the training history as JSON")
    args = parser.parse_args(argv)
    for name in ("epochs", "steps", "people", "photos", "patience"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.people < 2 or not 0 < args.val_fraction < 1 or args.lr <= 0:
        parser.error("--people must be >= 2, --val-fraction within (0, 1), --lr > 0")
    if args.out.suffix != ".h5":
        parser.error(f"--out {args.out}: must end in .h5")
    if args.out.resolve() == args.model.resolve():
        parser.error("--out must differ from --model (the starting model is never overwritten)")
    try:
        gpus = tf.config.list_physical_devices("GPU")
        print(f"device: {'GPU ' + gpus[0].name if gpus else 'CPU'} (TensorFlow {tf.__version__})")
        model = load_triplet_model(args.model, compile=False)
        spec = CropSpec(args.crop, args.margin, int(model.input_shape[1] or 160))
        check_model(model, spec.size)
        photos = list_people(args.people_dir)
        started = time.perf_counter()
        faces = detect_crops(photos, args.mtcnn, spec, args.crops_cache)
        print(f"{len(photos)} photos, {len(faces.crops)} faces, no face on {len(faces.no_face)}")
        train, val = split_people(faces.persons, args.val_fraction, args.seed)
        print(f"train: {train.sum()} crops of {len(set(faces.persons[train]))} people; "
              f"validation: {val.sum()} crops of {len(set(faces.persons[val]))} people")
        trunk, head = split_model(model, args.train_from)
        features = trunk_features(trunk, faces.crops)
        history = fine_tune(features, faces.persons, train, head, mining=args.mining, alpha=args.alpha,
                            learning_rate=args.lr, epochs=args.epochs, steps=args.steps, people=args.people,
                            photos=args.photos, patience=args.patience, seed=args.seed)
    except EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    history.update(seconds=round(time.perf_counter() - started, 1), args={k: str(v) for k, v in vars(args).items()},
                   validation_people=sorted(set(faces.persons[val].tolist())))
    if args.report:
        args.report.write_text(json.dumps(history, indent=2) + "\n")
    base, best = history["baseline"], history["best"]
    summary = (f"validation TAR@FAR1e-3 {base['tar_at_far_1e-3']:.4f} -> {best['tar_at_far_1e-3']:.4f}, "
               f"AUC {base['roc_auc']:.4f} -> {best['roc_auc']:.4f}")
    if not history["improved"]:
        print(f"not saved: the tuned model is not better than the starting one ({summary})", file=sys.stderr)
        return NOT_BETTER
    save_model_atomic(model, args.out)
    print(f"wrote {args.out} (epoch {history['best_epoch']}: {summary})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
