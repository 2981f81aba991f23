"""The converter on a tiny Keras embedding model: every mode, metadata, atomic output, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")

import keras  # noqa: E402

from edge.embedder import Embedder  # noqa: E402
from edge.errors import ModelError  # noqa: E402
from edge.model_metadata import read_metadata, sha256_file  # noqa: E402
from tools.convert_to_tflite import convert, main  # noqa: E402
from tools.quality import FaceSet  # noqa: E402
from tools.triplet import TripletLoss  # noqa: E402

SIZE = 32
DIM = 16


def tiny_model() -> keras.Model:
    """A small conv embedding net shaped like FaceNet (image in, unit vector out)."""
    keras.utils.set_random_seed(1)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(DIM)(x)
    outputs = keras.layers.UnitNormalization()(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss=TripletLoss(0.2))
    return model


@pytest.fixture(scope="module")
def tiny_h5(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("tiny") / "tiny.h5"
    tiny_model().save(path)
    return path


def face_like_crops(n: int = 24) -> np.ndarray:
    """Deterministic smooth images (real faces are used by the slow tests and the quality report)."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(n, 4, 4, 3)).astype(np.float32)
    up = np.kron(base, np.ones((1, SIZE // 4, SIZE // 4, 1), dtype=np.float32))
    return np.clip(up + rng.normal(0, 12, up.shape), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("mode", ["fp32", "fp16", "dynamic", "int8"])
def test_each_mode_converts_and_verifies(tiny_h5: Path, tmp_path: Path, mode: str) -> None:
    out = tmp_path / f"tiny_{mode}.tflite"
    crops = face_like_crops()
    meta = convert(tiny_h5, out, mode, calibration=crops if mode == "int8" else None)
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.with_suffix(".json").name, out.name]
    assert meta.mode == mode and meta.input_size == SIZE and meta.embedding_size == DIM
    stored = read_metadata(out)
    assert stored.model_sha256 == sha256_file(out)
    assert stored.source_sha256 == sha256_file(tiny_h5)
    assert stored.normalization["formula"] == "(x - 127.5) / 128"
    assert stored.tools.get("ai-edge-litert")
    embedder = Embedder(out)
    assert embedder.deviation is not None and embedder.deviation <= stored.check.tolerance
    assert embedder.model_id == f"facenet-{mode}-{stored.model_sha256[:12]}"
    emb = embedder.embed(crops)
    reference = np.asarray(keras.models.load_model(tiny_h5, compile=False)((crops.astype(np.float32) - 127.5) / 128))
    cosine = np.sum(emb * reference, axis=1)
    assert cosine.min() > (0.999 if mode in ("fp32", "fp16") else 0.95), cosine.min()
    if mode == "int8":
        assert stored.input_dtype == "int8" and stored.output_dtype == "int8"


def test_int8_float_io_and_sizes(tiny_h5: Path, tmp_path: Path) -> None:
    crops = face_like_crops()
    meta = convert(tiny_h5, tmp_path / "f.tflite", "int8", calibration=crops, io_type="float32")
    assert meta.input_dtype == "float32"
    assert Embedder(tmp_path / "f.tflite").embed(crops[:2]).shape == (2, DIM)


def test_quality_report_and_gate(tiny_h5: Path, tmp_path: Path) -> None:
    crops = face_like_crops()
    labels = [f"p{i // 3}" for i in range(len(crops))]
    faces = FaceSet(crops, labels, [f"{i}.jpg" for i in range(len(crops))], "test", [])
    meta = convert(tiny_h5, tmp_path / "ok.tflite", "fp32", quality=faces, max_drop=0.01)
    assert meta.quality["cosine_to_float_mean"] > 0.9999
    assert 0.0 <= meta.quality["roc_auc"] <= 1.0 and meta.quality["genuine_pairs"] == 8 * 3
    # The threshold recorded is the measured one, not the default.
    assert meta.threshold_source.startswith("threshold at FAR 1e-3")
    with pytest.raises(ModelError, match="rejected"):
        convert(tiny_h5, tmp_path / "bad.tflite", "int8", calibration=crops, quality=faces, max_drop=1e-7)
    assert not (tmp_path / "bad.tflite").exists() and not (tmp_path / "bad.json").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ok.json", "ok.tflite"]


def test_cli_bad_inputs(tiny_h5: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "out"
    out.mkdir()
    missing = tmp_path / "missing.h5"
    assert main([str(missing), "--out", str(out / "m.tflite")]) == 1
    assert "not found" in capsys.readouterr().err

    truncated = tmp_path / "truncated.h5"
    truncated.write_bytes(tiny_h5.read_bytes()[:4096])
    assert main([str(truncated), "--out", str(out / "t.tflite")]) == 1
    assert "truncated.h5" in capsys.readouterr().err

    foreign = tmp_path / "foreign.h5"
    foreign.write_bytes(b"this is not HDF5 at all" * 10)
    assert main([str(foreign), "--out", str(out / "f.tflite")]) == 1
    assert "not an HDF5" in capsys.readouterr().err

    import h5py

    with h5py.File(tmp_path / "data.h5", "w") as handle:
        handle["x"] = np.arange(10)
    assert main([str(tmp_path / "data.h5"), "--out", str(out / "d.tflite")]) == 1
    assert "cannot load as a Keras model" in capsys.readouterr().err

    pb = tmp_path / "foreign.pb"
    pb.write_bytes(b"\x00\x01garbage protobuf")
    assert main([str(pb), "--out", str(out / "p.tflite")]) == 1
    assert "foreign.pb" in capsys.readouterr().err

    assert main([str(tiny_h5), "--mode", "int4", "--out", str(out / "u.tflite")]) == 1
    assert "unknown mode 'int4'" in capsys.readouterr().err

    assert main([str(tiny_h5), "--mode", "int8", "--out", str(out / "c.tflite")]) == 1
    assert "--calibration" in capsys.readouterr().err

    empty = tmp_path / "empty_faces"
    empty.mkdir()
    assert main([str(tiny_h5), "--mode", "int8", "--calibration", str(empty), "--out", str(out / "e.tflite")]) == 1
    assert "no image files" in capsys.readouterr().err
    assert list(out.iterdir()) == []


@pytest.mark.slow
def test_calibration_folder_without_faces(tiny_h5: Path, tmp_path: Path, shared_faces: Path, capsys) -> None:
    out = tmp_path / "out"
    code = main([str(tiny_h5), "--mode", "int8", "--calibration", str(shared_faces / "noface"),
                 "--out", str(out / "n.tflite")])
    assert code == 1
    assert "contains a detectable face" in capsys.readouterr().err
    assert not out.exists() or list(out.iterdir()) == []


def test_metadata_json_is_complete(tiny_h5: Path, tmp_path: Path) -> None:
    convert(tiny_h5, tmp_path / "m.tflite", "dynamic")
    data = json.loads((tmp_path / "m.json").read_text())
    for key in ("input_size", "normalization", "embedding_size", "mode", "model_sha256", "source_sha256",
                "tools", "threshold", "check"):
        assert key in data, key
    assert len(data["check"]["expected"]) == DIM
    assert data["check"]["tolerance"] > 0


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fp32", "fp16", "dynamic", "int8"])
def test_built_facenet_models_meet_quality(models_dir: Path, mode: str) -> None:
    """`make models` output: every variant verifies on LiteRT and stays close to the float model on real faces."""
    path = models_dir / "facenet" / f"facenet_{mode}.tflite"
    if not path.is_file():
        pytest.fail(f"{path} is missing: build the models first with `make models`")
    embedder = Embedder(path)
    meta = embedder.metadata
    assert (meta.input_size, meta.embedding_size, meta.mode) == (160, 512, mode)
    quality = meta.quality
    assert quality["faces"] >= 4 and quality["cosine_to_float_mean"] >= 0.99, quality
    assert quality["float_roc_auc"] - quality["roc_auc"] <= 0.01, quality
    assert 0.5 < meta.threshold < 1.5


def test_build_cache_is_keyed_and_install_is_idempotent(tmp_path: Path, monkeypatch) -> None:
    """tools.build_models: a key is built once, a failed build leaves no cache entry, installs skip identical files."""
    from tools import build_models

    monkeypatch.setattr(build_models, "CACHE", tmp_path / "cache")
    calls = []

    def build(folder: Path) -> None:
        calls.append(folder)
        (folder / "a.bin").write_bytes(b"artifact")

    key = build_models.digest("a.bin", {"mode": "fp32"}, [1, 2])
    assert key != build_models.digest("a.bin", {"mode": "fp16"}, [1, 2])
    first = build_models.cached_build(key, ["a.bin"], build)
    again = build_models.cached_build(key, ["a.bin"], build)
    assert first == again and len(calls) == 1

    def broken(folder: Path) -> None:
        (folder / "half.bin").write_bytes(b"x")
        raise ModelError("conversion failed")

    other = build_models.digest("other")
    with pytest.raises(ModelError, match="conversion failed"):
        build_models.cached_build(other, ["b.bin"], broken)
    assert sorted(p.name for p in (tmp_path / "cache" / "models").iterdir()) == [key]

    out = tmp_path / "out" / "a.bin"
    assert build_models.install(first / "a.bin", out) is True
    assert build_models.install(first / "a.bin", out) is False
    out.write_bytes(b"edited by hand")
    assert build_models.install(first / "a.bin", out) is True and out.read_bytes() == b"artifact"
