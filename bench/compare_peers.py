"""Our pipeline with every model variant against ageitgey/face_recognition, on the same photos, in one run.

    python bench/compare_peers.py [PEOPLE_DIR] [--variants fp32 fp16 dynamic int8] [--no-peer]
                                  [--out docs/benchmarks.md] [--plot docs/benchmarks.png]

PEOPLE_DIR defaults to ../shared/faces/people. Each pipeline runs in its own fresh process with
one inference thread (and OMP/BLAS pinned to one thread), so model load time and peak resident
memory belong to that pipeline alone. A worker times every photo's detection and embedding, then
enrolls per the open-set protocol of tools/evaluate.py and times one match per probe (our
`Gallery.match` on SQLite; the peer's `face_distance` + tolerance). The parent computes the
accuracy figures from the workers' embeddings with tools/evaluate.py and writes a markdown table
(machine from `lscpu`, versions) and a plot (ROC curves and per-stage latency).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tools import evaluate as ev  # noqa: E402

VARIANTS = ("fp32", "fp16", "dynamic", "int8")
PEER = "peer"
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
              "VECLIB_MAXIMUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1"}


# ----------------------------------------------------------------------------- worker (one pipeline)

def _enrollment(photos: list[ev.Photo], found: np.ndarray) -> tuple[list[int], list[int]]:
    """Rows to enroll and probe rows, both with a face, per tools/evaluate.py's open-set protocol."""
    enroll, probes = ev.enrollment_plan([p.person for p in photos])
    return [i for i in enroll if found[i]], [i for i in probes if found[i]]


def _time_matches_ours(pipeline: ev.EdgePipeline, collected: ev.Collected) -> list[float]:
    from edge.gallery import Gallery

    enroll, probes = _enrollment(collected.photos, collected.found)
    with tempfile.TemporaryDirectory() as tmp:
        gallery = Gallery(Path(tmp) / "gallery.db", pipeline.embedder.model_id)
        for i in enroll:
            photo = collected.photos[i]
            digest = hashlib.sha256(photo.path.read_bytes()).hexdigest()
            gallery.add(photo.person, collected.embeddings[i][None, :], [digest], [str(photo.path)])
        times = []
        for i in probes:
            start = time.perf_counter()
            gallery.match(collected.embeddings[i], pipeline.threshold)
            times.append(time.perf_counter() - start)
        gallery.close()
    return times


def _time_matches_peer(pipeline: Any, collected: ev.Collected) -> list[float]:
    enroll, probes = _enrollment(collected.photos, collected.found)
    known = collected.embeddings[enroll]
    names = [collected.photos[i].person for i in enroll]
    times = []
    for i in probes:
        start = time.perf_counter()
        pipeline.match(collected.embeddings[i], known, names)
        times.append(time.perf_counter() - start)
    return times


def fit_frame(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Scale an image down (never up) to fit a camera frame of width x height, as the door sees it."""
    import cv2

    scale = min(width / image.shape[1], height / image.shape[0], 1.0)
    if scale >= 1.0:
        return image
    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def run_worker(kind: str, people_dir: Path, models: Path, result: Path, frame: tuple[int, int]) -> None:
    """Load one pipeline and run it twice over every photo; save embeddings and timings to `result` (.npz).

    First pass: photos scaled to fit a camera frame (the door's working conditions; its peak RSS
    is read right after). Second pass: the photos as they are (the accuracy figures, and the
    detection cost of large photos).
    """
    photos = ev.list_people(people_dir)
    start = time.perf_counter()
    if kind == PEER:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from peer_face_recognition import FaceRecognitionPipeline

        pipeline: Any = FaceRecognitionPipeline()
    else:
        pipeline = ev.EdgePipeline(models / "facenet" / f"facenet_{kind}.tflite", models / "mtcnn", threads=1)
    load_s = time.perf_counter() - start
    progress = sys.stderr.isatty()
    framed = ev.collect(pipeline, photos, progress=progress, prepare=lambda image: fit_frame(image, *frame))
    frame_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
    collected = ev.collect(pipeline, photos, progress=progress)
    match_s = _time_matches_peer(pipeline, collected) if kind == PEER else _time_matches_ours(pipeline, collected)
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    def views(c: ev.Collected) -> tuple[np.ndarray, np.ndarray]:
        """The enrollment templates (ours) as (rows, stacked arrays) for the npz."""
        rows = np.array(sorted(c.enroll_views), dtype=np.int64)
        stacked = np.stack([c.enroll_views[i][0] for i in rows]) if len(rows) else np.zeros((0, 1), np.float32)
        return rows, stacked

    enroll_rows, enroll_templates = views(collected)
    frame_enroll_rows, frame_enroll_templates = views(framed)
    np.savez(result, embeddings=collected.embeddings, found=collected.found,
             enroll_rows=enroll_rows, enroll_templates=enroll_templates,
             frame_enroll_rows=frame_enroll_rows, frame_enroll_templates=frame_enroll_templates,
             detect_s=np.array(collected.detect_s), embed_s=np.array(collected.embed_s),
             match_s=np.array(match_s), load_s=load_s, rss_mib=rss_mib, name=pipeline.name,
             threshold=pipeline.threshold, frame_embeddings=framed.embeddings, frame_found=framed.found,
             frame_detect_s=np.array(framed.detect_s), frame_embed_s=np.array(framed.embed_s),
             frame_rss_mib=frame_rss_mib)


# ----------------------------------------------------------------------------- parent (report)

def machine() -> str:
    """CPU model, cores and memory from `lscpu` and /proc/meminfo."""
    fields = {}
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
        for line in out.splitlines():
            key, _, value = line.partition(":")
            fields[key.strip()] = value.strip()
    except (OSError, subprocess.CalledProcessError):
        pass
    mem = ""
    try:
        meminfo = Path("/proc/meminfo").read_text().splitlines()
        kib = int(next(x for x in meminfo if x.startswith("MemTotal")).split()[1])
        mem = f", {kib / 1024 ** 2:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    cpu = fields.get("Model name", platform.processor() or "unknown CPU")
    arch = fields.get("Architecture", platform.machine())
    return f"{cpu} ({arch}), {fields.get('CPU(s)', os.cpu_count())} CPUs{mem}"


def versions() -> dict[str, str]:
    """Versions of everything the measured pipelines run on."""
    out = {"python": platform.python_version()}
    for package in ("numpy", "ai-edge-litert", "opencv-python-headless", "dlib-bin", "face_recognition",
                    "face_recognition_models"):
        try:
            out[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            out[package] = "not installed"
    return out


def revision() -> str:
    """The commit measured, and whether the pipeline's code differed from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no", "--", "edge",
                                "tools/evaluate.py", "bench/compare_peers.py", "bench/peer_face_recognition.py"],
                               cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"commit {head}" + (" with uncommitted changes to the measured code" if dirty else "")


def _ms(values: np.ndarray, q: float) -> float:
    return float(np.percentile(values, q) * 1000.0) if len(values) else float("nan")


def spawn(kind: str, people_dir: Path, models: Path, tmp: Path, frame: tuple[int, int]) -> dict[str, Any]:
    """Run one worker in a fresh single-threaded process; load its results."""
    result = tmp / f"{kind}.npz"
    env = {**os.environ, **ONE_THREAD}
    command = [sys.executable, str(Path(__file__).resolve()), str(people_dir), "--models", str(models),
               "--worker", kind, "--result", str(result), "--frame", f"{frame[0]}x{frame[1]}"]
    print(f"measuring {kind} ...", file=sys.stderr, flush=True)
    subprocess.run(command, env=env, check=True)
    with np.load(result, allow_pickle=False) as data:
        return {key: data[key] for key in data.files}


def _speed(raw: dict[str, Any], prefix: str, stages: tuple[str, ...]) -> dict[str, dict[str, float]]:
    return {stage: {"median_ms": _ms(raw[f"{prefix}{stage}_s"], 50), "p90_ms": _ms(raw[f"{prefix}{stage}_s"], 90),
                    "n": int(len(raw[f"{prefix}{stage}_s"]))} for stage in stages}


def measure(kind: str, raw: dict[str, Any], photos: list[ev.Photo]) -> tuple[dict[str, Any], tuple]:
    """Accuracy (tools/evaluate.py) and speed figures of one worker's results, plus its ROC curve."""
    def templates(prefix: str) -> dict[int, np.ndarray]:
        return {int(i): raw[f"{prefix}enroll_templates"][k][None, :] for k, i in enumerate(raw[f"{prefix}enroll_rows"])}

    collected = ev.Collected(photos, raw["embeddings"], raw["found"].astype(bool), enroll_views=templates(""))
    threshold = float(raw["threshold"])
    report = ev.summarize(collected, threshold, str(raw["name"]))
    framed = ev.Collected(photos, raw["frame_embeddings"], raw["frame_found"].astype(bool),
                          enroll_views=templates("frame_"))
    report.update(
        kind=kind, speed=_speed(raw, "", ("detect", "embed", "match")), load_s=float(raw["load_s"]),
        peak_rss_mib=float(raw["rss_mib"]),
        frame={"speed": _speed(raw, "frame_", ("detect", "embed")), "peak_rss_mib": float(raw["frame_rss_mib"]),
               "no_face": int((~framed.found).sum()),
               "open_set": ev.open_set(framed.embeddings, framed.found, [p.person for p in photos], threshold,
                                       framed.enroll_views)},
    )
    return report, ev.roc_curve(collected)


def label(report: dict[str, Any]) -> str:
    return "face_recognition" if report["kind"] == PEER else f"ours {report['kind']}"


def _cell(speed: dict[str, float], digits: int = 1) -> str:
    return f"{speed['median_ms']:.{digits}f} / {speed['p90_ms']:.{digits}f}"


def markdown(reports: list[dict[str, Any]], people_dir: Path, command: str, png: Path | None,
             load: float, frame: tuple[int, int]) -> str:
    """The docs/benchmarks.md page."""
    v = versions()
    o0 = reports[0]["open_set"]
    fw, fh = frame
    crop = ev.DEFAULT_CROP
    lines = [
        "# Benchmarks: our pipeline against face_recognition",
        "",
        f"Measured {datetime.now(UTC).strftime('%Y-%m-%d %H:%M UTC')} at {revision()} by `{command}`",
        "(regenerate with the same command; it rewrites this page and the plot).",
        "",
        f"- **Machine:** {machine()}; load average {load:.1f} when the run started (other processes share "
        "the CPUs, which makes timings noisier). One inference thread for every pipeline; OMP/BLAS pinned to "
        "one thread; each pipeline in a fresh process.",
        "- **Versions:** " + ", ".join(f"{k} {val}" for k, val in v.items()) + ".",
        f"- **Photos:** `{people_dir}`: {reports[0]['images']} photos of {reports[0]['people']} people; "
        f"{o0['enrolled'] + o0['enroll_no_face']} people enrolled from their first photo, "
        f"{o0['genuine']} genuine probes, {o0['strangers']} stranger photos. Sizes range from 150 px chips "
        "to 4,600 px press photos. Each pipeline sees every photo twice: as it is (accuracy below, and the "
        f"cost of large photos) and scaled down to fit a {fw}x{fh} camera frame (the door's working "
        "conditions).",
        f"- **Ours:** MTCNN (LiteRT) + FaceNet Inception-ResNet-v1 (LiteRT), {crop.method} crop with a "
        f"{crop.margin_px:g} px margin (padded) at {crop.size} px, no flip-averaging when probing, enrollment "
        "template per photo (tools/enroll.py: mean of margin/mirror views, docs/crops.md), threshold from each "
        "model's metadata. **Peer:** face_recognition 1.3.0 (dlib HOG detector upsampled "
        "once, ResNet 128-D embeddings, tolerance 0.6), its defaults.",
        "",
        "## Accuracy",
        "",
        "Verification over all pairs of photos with a face; 10-fold accuracy as in the LFW protocol on all "
        "genuine pairs plus as many random impostor pairs. Open set as the door sees it, at each model's "
        "threshold (see `tools/evaluate.py`). SVM: linear SVM over embeddings, 5-fold stratified, over the "
        "people with at least 5 photos with a face (their number in brackets).",
        "",
        "| pipeline | no face | ROC AUC | EER | TAR@FAR 1e-2 | TAR@FAR 1e-3 | 10-fold acc. | threshold | "
        "correct accepts | false rejects | wrong-person accepts | strangers accepted | SVM acc. |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        o = r["open_set"]
        svm = "n/a" if r["svm_accuracy"] is None else f"{r['svm_accuracy']:.3f} ({r['svm_people']})"
        lines.append(
            f"| {label(r)} | {r['no_face']} | {r['roc_auc']:.4f} | {r['eer']:.4f} | {r['tar_at_far_1e-2']:.3f} | "
            f"{r['tar_at_far_1e-3']:.3f} | {r['accuracy_10fold']:.3f} | {r['threshold']:.3f} | "
            f"{o['correct_accept']}/{o['genuine']} ({o['correct_accept'] / max(o['genuine'], 1):.3f}) | "
            f"{o['false_reject']} | {o['wrong_accept']} | {o['stranger_accept']}/{o['strangers']} | {svm} |")
    lines += [
        "",
        f"The same open-set counts with every photo scaled to fit {fw}x{fh} (enrollment photos too):",
        "",
        "| pipeline | no face | correct accepts | false rejects | wrong-person accepts | strangers accepted |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        o = r["frame"]["open_set"]
        lines.append(f"| {label(r)} | {r['frame']['no_face']} | {o['correct_accept']}/{o['genuine']} "
                     f"({o['correct_accept'] / max(o['genuine'], 1):.3f}) | {o['false_reject']} | "
                     f"{o['wrong_accept']} | {o['stranger_accept']}/{o['strangers']} |")
    lines += [
        "",
        "## Speed and memory (one thread)",
        "",
        "Latency cells are median / p90 over all photos, in ms. Per photo: detect = finding faces in the "
        "whole image; embed = crop + embedding of the largest "
        "face; match = one probe against the enrolled gallery (ours: `Gallery.match` on SQLite-backed "
        "arrays; the peer: `face_distance` + tolerance). Load = constructing the pipeline (model files "
        "read, checked and allocated; for the peer, importing face_recognition, which loads dlib's models). "
        f"Peak RSS = the worker process's maximum resident memory after the {fw}x{fh} pass, and after "
        "both passes; the second figure includes detection on photos up to 4,600 px, so the first is the "
        "one that applies to a door camera.",
        "",
        f"| pipeline | detect {fw}x{fh} (ms) | embed {fw}x{fh} (ms) | detect as-is photos (ms) | "
        "embed as-is (ms) | match (ms) | load (s) | peak RSS after frames / after all (MiB) |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in reports:
        s, f = r["speed"], r["frame"]["speed"]
        lines.append(f"| {label(r)} | {_cell(f['detect'])} | {_cell(f['embed'])} | {_cell(s['detect'])} | "
                     f"{_cell(s['embed'])} | {_cell(s['match'], 3)} | {r['load_s']:.2f} | "
                     f"{r['frame']['peak_rss_mib']:.0f} / {r['peak_rss_mib']:.0f} |")
    if png is not None:
        lines += ["", f"![ROC curves and per-stage latency]({png.name})"]
    if any(r["no_face_files"] for r in reports):
        lines += ["", "## Photos (as they are) where a pipeline found no face", ""]
        for r in reports:
            if r["no_face_files"]:
                lines.append(f"- {label(r)}: " + ", ".join(f"`{Path(f).parent.name}/{Path(f).name}`"
                                                           for f in r["no_face_files"]))
    return "\n".join(lines) + "\n"


def plot(reports: list[dict[str, Any]], curves: list[tuple], out: Path, frame: tuple[int, int]) -> None:
    """ROC curves (left) and median per-stage latency (right) in one small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (roc_ax, bar_ax) = plt.subplots(1, 2, figsize=(10, 4), dpi=80)
    for r, (far, tar) in zip(reports, curves, strict=True):
        roc_ax.step(np.maximum(far, 1e-5), tar, where="post", label=label(r), linewidth=1.2)
    # Zoom on the part of the curves that differs: from just below the lowest TAR at FAR 1e-4.
    lowest = min(float(tar[np.searchsorted(far, 1e-4, side="right") - 1]) for far, tar in curves)
    floor = max(0.0, np.floor(lowest * 20) / 20 - 0.05)
    roc_ax.set(xscale="log", xlim=(1e-4, 1), ylim=(floor, 1.005), xlabel="false accept rate (log)",
               ylabel="true accept rate", title="ROC, all pairs")
    roc_ax.grid(True, which="both", alpha=0.3)
    roc_ax.legend(loc="lower right", fontsize=8)
    names = [label(r) for r in reports]
    bottom = np.zeros(len(reports))
    for stage in ("detect", "embed", "match"):
        source = [r["speed"] if stage == "match" else r["frame"]["speed"] for r in reports]
        values = np.array([speed[stage]["median_ms"] for speed in source])
        bar_ax.bar(names, values, bottom=bottom, label=stage)
        bottom += values
    bar_ax.set(ylabel="median ms per frame (one thread)", title=f"latency per stage, {frame[0]}x{frame[1]} frames")
    bar_ax.tick_params(axis="x", labelrotation=20, labelsize=8)
    bar_ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)


def frame_size(text: str) -> tuple[int, int]:
    """argparse type for WxH."""
    try:
        width, height = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected WIDTHxHEIGHT, e.g. 640x480") from None
    if width < 32 or height < 32:
        raise argparse.ArgumentTypeError(f"{text!r}: frame must be at least 32x32")
    return width, height


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("people_dir", type=Path, nargs="?", default=REPO.parent / "shared" / "faces" / "people")
    parser.add_argument("--models", type=Path, default=REPO / "models")
    parser.add_argument("--variants", nargs="*", choices=VARIANTS, default=list(VARIANTS))
    parser.add_argument("--no-peer", action="store_true", help="skip face_recognition")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--plot", type=Path, default=REPO / "docs" / "benchmarks.png")
    parser.add_argument("--json", type=Path, default=None, help="also write every figure as JSON")
    parser.add_argument("--frame", type=frame_size, default=(640, 480),
                        help="camera frame WxH the photos are scaled to fit for the door pass (default 640x480)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--result", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        run_worker(args.worker, args.people_dir, args.models, args.result, args.frame)
        return 0
    load = os.getloadavg()[0]
    try:
        photos = ev.list_people(args.people_dir)
        for variant in args.variants:
            model = args.models / "facenet" / f"facenet_{variant}.tflite"
            if not model.is_file():
                raise ev.EdgeError(f"{model}: model not found (build the models with `make models`)")
        kinds = list(args.variants) + ([] if args.no_peer else [PEER])
        if not kinds:
            raise ev.EdgeError("nothing to measure: no variants and --no-peer")
        reports, curves = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for kind in kinds:
                report, curve = measure(kind, spawn(kind, args.people_dir, args.models, Path(tmp), args.frame), photos)
                print(ev.format_report(report), file=sys.stderr)
                reports.append(report)
                curves.append(curve)
    except ev.EdgeError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except subprocess.CalledProcessError as exc:
        print(f"error: a benchmark worker failed (exit {exc.returncode}): {' '.join(exc.cmd)}", file=sys.stderr)
        return 2
    png = args.plot
    plot(reports, curves, png, args.frame)
    shown_people = args.people_dir
    try:
        shown_people = args.people_dir.resolve().relative_to(REPO.parent)
        shown_people = Path("..") / shown_people
    except ValueError:
        pass
    command = "python bench/compare_peers.py" + ("" if args.variants == list(VARIANTS) else
                                                  " --variants " + " ".join(args.variants))
    command += " --no-peer" if args.no_peer else ""
    command += "" if args.frame == (640, 480) else f" --frame {args.frame[0]}x{args.frame[1]}"
    args.out.write_text(markdown(reports, shown_people, command, png, load, args.frame))
    if args.json:
        args.json.write_text(json.dumps(reports, indent=2, default=float) + "\n")
    print(f"wrote {args.out} and {png} ({png.stat().st_size // 1024} KB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
