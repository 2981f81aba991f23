"""Gallery match speed at door-access scale (target: <= 2 ms per match at 10,000 people),
and, on real faces, whether a person's distance should be the minimum over their enrolled
embeddings or the distance to their mean embedding.

    python bench/bench_gallery.py [--people 10000] [--per-person 1 3] [--dim 512] [--repeat 300]
    python bench/bench_gallery.py --faces ../shared/faces/people [--model M] [--enrolled 1 2 3 5]

Random unit vectors stand in for embeddings: matching cost depends only on the matrix size,
not on the values. The gallery lives in a temporary directory; the timings are of `match()`
(one probe, the daemon's case), `match_many()` per probe, and `refresh()` when nothing changed
(what the daemon calls once per frame) and after a change (a full reload).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from edge.gallery import Gallery  # noqa: E402


def _unit(rng: np.random.Generator, n: int, dim: int) -> np.ndarray:
    vectors = rng.normal(size=(n, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def _percentiles(samples: list[float]) -> dict[str, float]:
    ms = np.array(samples) * 1000
    return {"median_ms": round(float(np.median(ms)), 4), "p95_ms": round(float(np.percentile(ms, 95)), 4),
            "min_ms": round(float(ms.min()), 4)}


def bench(people: int, per_person: int, dim: int, repeat: int, seed: int = 0) -> dict:
    """Fill a fresh gallery and time its operations."""
    rng = np.random.default_rng(seed)
    with tempfile.TemporaryDirectory() as tmp:
        gallery = Gallery(Path(tmp) / "bench.db", "bench-model")
        start = time.perf_counter()
        batch = 500
        for first in range(0, people, batch):
            gallery.add_many([
                {"name": f"person{i:05d}", "embeddings": _unit(rng, per_person, dim),
                 "image_sha256": [hashlib.sha256(f"{i}-{k}".encode()).hexdigest() for k in range(per_person)],
                 "source": [f"p{i}_{k}.jpg" for k in range(per_person)]}
                for i in range(first, min(first + batch, people))])
        fill_s = time.perf_counter() - start
        start = time.perf_counter()
        gallery.refresh()
        reload_s = time.perf_counter() - start
        probes = _unit(rng, repeat, dim)
        for probe in probes[:20]:  # warm-up
            gallery.match(probe, 1.0)
        single = []
        for probe in probes:
            t0 = time.perf_counter()
            gallery.match(probe, 1.0)
            single.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        gallery.match_many(probes, 1.0)
        many_per_probe = (time.perf_counter() - t0) / len(probes)
        idle = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            gallery.refresh()
            idle.append(time.perf_counter() - t0)
        gallery.close()
        db_bytes = (Path(tmp) / "bench.db").stat().st_size
    return {
        "people": people, "per_person": per_person, "dim": dim, "embeddings": people * per_person,
        "match": _percentiles(single), "match_many_per_probe_ms": round(many_per_probe * 1000, 4),
        "refresh_unchanged": _percentiles(idle), "reload_ms": round(reload_s * 1000, 1),
        "fill_s": round(fill_s, 1), "db_mib_before_checkpoint": round(db_bytes / 2**20, 1),
    }


def embed_people(folder: Path, model: str, mtcnn_dir: str) -> tuple[np.ndarray, list[str]]:
    """Largest-face embedding of every photo of `folder/<name>/`, with the names."""
    from edge.images import list_images, load_image
    from edge.recognizer import Recognizer

    recognizer = Recognizer.from_paths(model, None, mtcnn_dir=mtcnn_dir, min_face_size=20)
    embeddings, labels = [], []
    for person in sorted(p for p in folder.iterdir() if p.is_dir()):
        for photo in list_images(person):
            image = load_image(photo)
            faces = recognizer.detector.detect(image)
            if faces:
                embeddings.append(recognizer.embed_faces(image, faces[:1])[0])
                labels.append(person.name)
    return np.stack(embeddings), labels


def compare_min_mean(embeddings: np.ndarray, labels: list[str], enrolled: int, seeds: int = 20) -> dict:
    """Open-set verification of probes against enrolled people, scoring a person by min or mean.

    People with more than `enrolled` photos get `enrolled` random photos enrolled and are probed
    with the rest; everyone else (and the left-out photos' owners' rivals) are impostors: each
    probe is compared with every enrolled person, genuine when it is the probe's own person.
    """
    from edge import metrics

    names = np.array(labels)
    result: dict[str, list[float]] = {}
    for seed in range(seeds):
        rng = np.random.default_rng(seed)
        gallery: dict[str, np.ndarray] = {}
        probes: list[int] = []
        for name in sorted(set(labels)):
            idx = np.flatnonzero(names == name)
            if len(idx) > enrolled:
                rng.shuffle(idx)
                gallery[name] = idx[:enrolled]
                probes.extend(idx[enrolled:])
            else:
                probes.extend(idx)  # strangers: never enrolled
        people = sorted(gallery)
        centroids = np.stack([embeddings[gallery[p]].mean(axis=0) for p in people])
        centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)
        for mode in ("min", "mean"):
            distances, same, rank1 = [], [], []
            for i in probes:
                probe = embeddings[i]
                if mode == "min":
                    d = np.array([np.linalg.norm(embeddings[gallery[p]] - probe, axis=1).min() for p in people])
                else:
                    d = np.linalg.norm(centroids - probe, axis=1)
                distances.extend(d)
                same.extend(np.array(people) == labels[i])
                if labels[i] in gallery:
                    rank1.append(people[int(np.argmin(d))] == labels[i])
            distances_a, same_a = np.array(distances), np.array(same)
            tar3, _ = metrics.tar_at_far(distances_a, same_a, 1e-3)
            tar2, _ = metrics.tar_at_far(distances_a, same_a, 1e-2)
            for key, value in ((f"{mode}_auc", metrics.roc_auc(distances_a, same_a)), (f"{mode}_tar@1e-3", tar3),
                               (f"{mode}_tar@1e-2", tar2), (f"{mode}_rank1", float(np.mean(rank1)))):
                result.setdefault(key, []).append(value)
        result.setdefault("people", []).append(len(people))
        result.setdefault("genuine", []).append(int(same_a.sum()))
        result.setdefault("impostor", []).append(int((~same_a).sum()))
    return {key: round(float(np.mean(values)), 4) for key, values in result.items()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--per-person", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--dim", type=int, default=512, help="embedding size (FaceNet 2018: 512)")
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="one JSON object per configuration")
    parser.add_argument("--faces", type=Path, help="people folder: compare min vs mean distance on real faces")
    parser.add_argument("--model", default="models/facenet/facenet_dynamic.tflite")
    parser.add_argument("--mtcnn-dir", default="models/mtcnn")
    parser.add_argument("--enrolled", type=int, nargs="+", default=[1, 2, 3, 5])
    args = parser.parse_args(argv)
    if args.faces:
        embeddings, labels = embed_people(args.faces, args.model, args.mtcnn_dir)
        print(f"{len(labels)} photos with a face, {len(set(labels))} people (20 random enrollments each)")
        for enrolled in args.enrolled:
            result = compare_min_mean(embeddings, labels, enrolled)
            print(json.dumps({"enrolled_per_person": enrolled, **result}) if args.json else
                  f"enrolled {enrolled}/person ({result['people']:.0f} people, {result['genuine']:.0f} genuine / "
                  f"{result['impostor']:.0f} impostor comparisons): "
                  f"min  AUC {result['min_auc']:.4f} TAR@1e-3 {result['min_tar@1e-3']:.3f} "
                  f"TAR@1e-2 {result['min_tar@1e-2']:.3f} rank-1 {result['min_rank1']:.3f} | "
                  f"mean AUC {result['mean_auc']:.4f} TAR@1e-3 {result['mean_tar@1e-3']:.3f} "
                  f"TAR@1e-2 {result['mean_tar@1e-2']:.3f} rank-1 {result['mean_rank1']:.3f}")
        return 0
    for people in args.people:
        for per_person in args.per_person:
            result = bench(people, per_person, args.dim, args.repeat)
            if args.json:
                print(json.dumps(result))
            else:
                m = result["match"]
                print(f"{people:6d} people x {per_person} emb (dim {args.dim}): match median {m['median_ms']:.3f} ms "
                      f"p95 {m['p95_ms']:.3f} ms | match_many {result['match_many_per_probe_ms']:.3f} ms/probe | "
                      f"refresh idle {result['refresh_unchanged']['median_ms']:.3f} ms | reload "
                      f"{result['reload_ms']:.0f} ms | fill {result['fill_s']:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
