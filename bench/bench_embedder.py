"""Embedder latency per FaceNet variant: median of >= 50 single-crop runs on this machine.

    python bench/bench_embedder.py [--models models/facenet] [--threads 1] [--runs 50] [--json out.json]

Uses real face crops when ../shared/faces/reference_alignment is present (latency does not depend
on content for these nets, but it keeps the run honest), else the metadata check image. Loading
includes the check-vector verification; it is timed separately.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edge.embedder import Embedder  # noqa: E402
from edge.images import load_image  # noqa: E402
from edge.model_metadata import check_input  # noqa: E402

CROPS = REPO.parent / "shared" / "faces" / "reference_alignment" / "facenet_pytorch_mtcnn_160"


def crops_for(size: int) -> np.ndarray:
    paths = sorted(CROPS.glob("*/*.png"))
    if paths and size == 160:
        return np.stack([load_image(p) for p in paths])
    return check_input(size)


def bench(model: Path, threads: int, runs: int, warmup: int = 5, batch: int = 1) -> dict:
    start = time.perf_counter()
    embedder = Embedder(model, threads=threads)
    load_s = time.perf_counter() - start
    crops = crops_for(embedder.input_size)
    batch_crops = np.stack([crops[i % len(crops)] for i in range(batch)])
    for _ in range(warmup):
        embedder.embed(batch_crops)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        embedder.embed(batch_crops)
        times.append(time.perf_counter() - t0)
    return {
        "model": model.name, "mode": embedder.metadata.mode, "runtime": embedder.runtime, "threads": threads,
        "batch": batch, "runs": runs, "median_ms": 1000 * statistics.median(times),
        "p90_ms": 1000 * float(np.percentile(times, 90)), "min_ms": 1000 * min(times),
        "load_and_verify_s": load_s, "size_mb": model.stat().st_size / 1e6,
    }


def kernel_deviations(model: Path) -> dict[str, float]:
    """Check-vector deviation of the same model on LiteRT's other correct kernel paths.

    XNNPACK (default), the built-in optimized kernels without delegates, and the reference
    kernels: how far correct runtimes spread is what the metadata tolerance must allow.
    """
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    from edge import runtime
    from edge.model_metadata import check_deviation

    paths = {"xnnpack": OpResolverType.AUTO, "builtin": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES,
             "reference": OpResolverType.BUILTIN_REF}
    result = {}
    for name, resolver in paths.items():
        runtime.RUNTIMES[f"litert-{name}"] = (
            lambda path, threads, r=resolver: Interpreter(model_path=path, num_threads=threads,
                                                          experimental_op_resolver_type=r))
        embedder = Embedder(model, runtime=f"litert-{name}", verify=False)
        result[name] = check_deviation(embedder.metadata, embedder.embed(check_input(embedder.input_size)))
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=REPO / "models" / "facenet")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument("--check-kernels", action="store_true",
                        help="also report each model's check-vector deviation on LiteRT's other kernel paths")
    args = parser.parse_args(argv)
    if args.runs < 50:
        print("note: fewer than 50 runs; docs/models.md numbers use >= 50", file=sys.stderr)
    models = sorted(args.models.glob("facenet_*.tflite"))
    if not models:
        print(f"error: no facenet_*.tflite in {args.models}; build them with `make models`", file=sys.stderr)
        return 1
    results = []
    print(f"# {platform.machine()} {platform.processor() or ''} python {platform.python_version()}, "
          f"threads={args.threads}, batch={args.batch}, runs={args.runs}")
    print(f"{'model':<24}{'runtime':<9}{'size MB':>9}{'median ms':>11}{'p90 ms':>9}{'load s':>8}")
    for model in models:
        r = bench(model, args.threads, args.runs, batch=args.batch)
        results.append(r)
        print(f"{r['model']:<24}{r['runtime']:<9}{r['size_mb']:>9.1f}{r['median_ms']:>11.1f}{r['p90_ms']:>9.1f}"
              f"{r['load_and_verify_s']:>8.2f}", flush=True)
    if args.check_kernels:
        print(f"\n{'model':<24}{'tolerance':>10}  deviation per kernel path")
        for model, r in zip(models, results, strict=True):
            deviations = kernel_deviations(model)
            r["kernel_deviations"] = deviations
            tolerance = Embedder(model, verify=False).metadata.check.tolerance
            shown = "  ".join(f"{name} {value:.2e}" for name, value in deviations.items())
            print(f"{model.name:<24}{tolerance:>10g}  {shown}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
