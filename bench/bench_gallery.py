"""Gallery match speed at door-access scale (target: <= 2 ms per match at 10,000 people).

    python bench/bench_gallery.py [--people 10000] [--per-person 1 3] [--dim 512] [--repeat 300]

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, nargs="+", default=[1000, 10000])
    parser.add_argument("--per-person", type=int, nargs="+", default=[1, 3])
    parser.add_argument("--dim", type=int, default=512, help="embedding size (FaceNet 2018: 512)")
    parser.add_argument("--repeat", type=int, default=300)
    parser.add_argument("--json", action="store_true", help="one JSON object per configuration")
    args = parser.parse_args(argv)
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
