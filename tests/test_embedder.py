"""The device-side embedder: batches, quantized I/O, and refusal of tampered models or wrong runtimes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from edge import runtime
from edge.crop import standardize
from edge.embedder import Embedder
from edge.errors import ModelError
from edge.model_metadata import check_input, read_metadata

SIZE = 32
DIM = 16


@pytest.fixture(scope="module")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """A tiny embedding model converted fp32 and int8 (TensorFlow is only used to build it)."""
    pytest.importorskip("tensorflow")
    import keras

    from tools.convert_to_tflite import convert

    keras.utils.set_random_seed(2)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.UnitNormalization()(keras.layers.Dense(DIM)(x))
    model = keras.Model(inputs, outputs)
    folder = tmp_path_factory.mktemp("models")
    model.save(folder / "tiny.h5")
    rng = np.random.default_rng(3)
    calibration = rng.integers(0, 256, size=(16, SIZE, SIZE, 3)).astype(np.uint8)
    paths = {}
    for mode in ("fp32", "int8"):
        paths[mode] = folder / f"tiny_{mode}.tflite"
        convert(folder / "tiny.h5", paths[mode], mode, calibration=calibration)
    crops = rng.integers(0, 256, size=(5, SIZE, SIZE, 3)).astype(np.uint8)
    np.save(folder / "crops.npy", crops)
    np.save(folder / "keras.npy", np.asarray(model(standardize(crops))))
    paths["crops"], paths["keras"] = folder / "crops.npy", folder / "keras.npy"
    return paths


def copy_model(src: Path, dst_dir: Path) -> Path:
    dst = dst_dir / src.name
    shutil.copy(src, dst)
    shutil.copy(src.with_suffix(".json"), dst.with_suffix(".json"))
    return dst


def test_embed_shapes_norms_and_batches(tiny_models: dict[str, Path]) -> None:
    embedder = Embedder(tiny_models["fp32"], threads=2)
    crops = np.load(tiny_models["crops"])
    out = embedder.embed(crops)
    assert out.shape == (5, DIM) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(out, np.load(tiny_models["keras"]), atol=1e-5)
    singles = np.concatenate([embedder.embed(c[None]) for c in crops])
    np.testing.assert_allclose(out, singles, atol=1e-5)
    assert embedder.embed(crops[:0]).shape == (0, DIM)
    assert embedder.embed(crops[0]).shape == (1, DIM)  # a single (S, S, 3) crop is a batch of one
    assert embedder.threshold == read_metadata(tiny_models["fp32"]).threshold
    with pytest.raises(ValueError, match="uint8"):
        embedder.embed(crops.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        embedder.embed(np.zeros((1, SIZE + 1, SIZE, 3), np.uint8))


def test_int8_io_is_quantized_and_close_to_float(tiny_models: dict[str, Path]) -> None:
    embedder = Embedder(tiny_models["int8"])
    assert embedder.metadata.input_dtype == "int8"
    assert embedder._input["dtype"] == np.int8
    out = embedder.embed(np.load(tiny_models["crops"]))
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(out * np.load(tiny_models["keras"]), axis=1)
    assert cosine.min() > 0.95


def test_tampered_model_is_refused(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model = copy_model(tiny_models["fp32"], tmp_path)
    data = bytearray(model.read_bytes())
    data[-100] ^= 0xFF
    model.write_bytes(bytes(data))
    with pytest.raises(ModelError, match="does not match its metadata"):
        Embedder(model)


def test_tampered_check_vector_is_refused_naming_runtime(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    model = copy_model(tiny_models["fp32"], tmp_path)
    meta_path = model.with_suffix(".json")
    data = json.loads(meta_path.read_text())
    data["check"]["expected"][0] += 0.5
    meta_path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=r"runtime litert computes wrong embeddings: check vector deviates by L2 0\.5"):
        Embedder(model)
    Embedder(model, verify=False)  # explicitly unverified loads still work (used by the converter)


class _SkewedInterpreter:
    """Wraps a correct interpreter and perturbs its output, like a broken runtime would."""

    def __init__(self, inner) -> None:
        self._inner = inner

    def __getattr__(self, name):
        return getattr(self._inner, name)

    def get_tensor(self, index):
        value = self._inner.get_tensor(index)
        return value[..., ::-1].copy() if index == self._inner.get_output_details()[0]["index"] else value


def test_wrong_runtime_is_refused(tiny_models: dict[str, Path], monkeypatch) -> None:
    real = runtime.RUNTIMES["litert"]
    monkeypatch.setitem(runtime.RUNTIMES, "broken-rt", lambda path, threads: _SkewedInterpreter(real(path, threads)))
    with pytest.raises(ModelError, match="runtime broken-rt computes wrong embeddings") as info:
        Embedder(tiny_models["fp32"], runtime="broken-rt")
    assert "deviates by" in str(info.value)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("check"), "'check' is missing"),
        (lambda d: d.update(mode="int3"), "'mode' is 'int3'"),
        (lambda d: d.update(threshold=5.0), "'threshold' is 5.0"),
        (lambda d: d.update(input_size="160"), "'input_size' has the wrong type"),
        (lambda d: d.update(format="other/9"), "format 'other/9'"),
        (lambda d: d["check"].update(expected=[0.1, 0.2]), "check vector has 2 values"),
        (lambda d: d.update(input_size=64), "does not match metadata input_size 64"),
        (lambda d: d.update(input_dtype="uint8"), "does not match metadata input_dtype"),
    ],
)
def test_bad_metadata_is_refused(tiny_models: dict[str, Path], tmp_path: Path, edit, message: str) -> None:
    model = copy_model(tiny_models["fp32"], tmp_path)
    meta_path = model.with_suffix(".json")
    data = json.loads(meta_path.read_text())
    edit(data)
    meta_path.write_text(json.dumps(data))
    with pytest.raises(ModelError, match=message):
        Embedder(model)


def test_missing_or_corrupt_files(tiny_models: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="model file not found"):
        Embedder(tmp_path / "nothing.tflite")
    model = copy_model(tiny_models["fp32"], tmp_path)
    model.with_suffix(".json").write_text("{not json")
    with pytest.raises(ModelError, match="not valid JSON"):
        Embedder(model)
    model.with_suffix(".json").unlink()
    with pytest.raises(ModelError, match="metadata not found"):
        Embedder(model)
    foreign = tmp_path / "foreign.tflite"
    foreign.write_bytes(b"\x00" * 64)
    shutil.copy(tiny_models["fp32"].with_suffix(".json"), foreign.with_suffix(".json"))
    with pytest.raises(ModelError, match="foreign.tflite"):
        Embedder(foreign)


def test_check_input_is_deterministic() -> None:
    a, b = check_input(160, 0), check_input(160, 0)
    assert a.shape == (1, 160, 160, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b) and not np.array_equal(a, check_input(160, 1))
    assert a.std() > 30  # varied enough to exercise every layer


@pytest.mark.slow
def test_real_model_separates_people(facenet_model: Path, shared_faces: Path) -> None:
    """The built default model: one person's two crops are closer than the threshold, strangers are not."""
    from edge.images import load_image

    embedder = Embedder(facenet_model)
    folder = shared_faces / "reference_alignment" / "facenet_pytorch_mtcnn_160"
    crops = np.stack([load_image(p) for p in sorted(folder.glob("*/*.png"))])
    emb = embedder.embed(crops)
    distances = np.linalg.norm(emb[:, None] - emb[None], axis=2)[np.triu_indices(len(emb), 1)]
    assert distances.min() > embedder.threshold * 0.9  # five different people
    flipped = embedder.embed(crops[:, :, ::-1].copy())
    assert np.all(np.linalg.norm(emb - flipped, axis=1) < embedder.threshold)  # mirror image: same person
