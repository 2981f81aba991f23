"""tools/train_triplet.py on a tiny Keras model and synthetic faces: splitting, sampling, refusal, errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from tools import train_triplet as tt  # noqa: E402
from tools.build_facenet import save_model_atomic  # noqa: E402

SIZE = 8


def tiny_model(size: int = SIZE, seed: int = 0) -> keras.Model:
    """Flatten -> Dense -> L2 norm, with a named cut like the real FaceNet."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((size, size, 3), name="input")
    x = keras.layers.Flatten(name="cut")(inputs)
    x = keras.layers.Dense(8, name="proj")(x)
    outputs = keras.layers.UnitNormalization(name="embeddings")(x)
    return keras.Model(inputs, outputs)


def synthetic_faces(people: int = 8, photos: int = 4, seed: int = 0) -> tt.Faces:
    """Identity lives in the red channel only; green and blue carry loud per-photo noise.

    A learned projection can generalize to unseen people by ignoring green and blue, which a
    random one does not, so fine-tuning has something real to find.
    """
    rng = np.random.default_rng(seed)
    crops, persons = [], []
    for p in range(people):
        red = rng.integers(30, 226, size=(SIZE, SIZE))
        for _ in range(photos):
            crop = np.empty((SIZE, SIZE, 3))
            crop[..., 0] = red + rng.normal(0, 10, size=red.shape)
            crop[..., 1:] = rng.integers(0, 256, size=(SIZE, SIZE, 2))
            crops.append(np.clip(crop, 0, 255).astype(np.uint8))
            persons.append(f"p{p}")
    crops.append(rng.integers(0, 256, size=(SIZE, SIZE, 3)).astype(np.uint8))
    persons.append("stranger")
    return tt.Faces(np.stack(crops), np.array(persons), [])


def test_split_people_never_splits_a_person():
    persons = np.array(["a"] * 3 + ["b"] * 2 + ["c"] * 2 + ["d"] * 4 + ["e"] * 2 + ["solo"])
    train, val = tt.split_people(persons, 0.3, seed=0)
    assert not (train & val).any() and (train | val).all()
    assert set(persons[train]).isdisjoint(set(persons[val]))
    assert "solo" in set(persons[val])
    assert len(set(persons[val]) - {"solo"}) == 2  # round(0.3 * 5) = 2 people with 2+ photos


def test_split_people_needs_enough_people():
    with pytest.raises(tt.EdgeError, match="at least 4 people"):
        tt.split_people(np.array(["a", "a", "b", "b", "c"]), 0.3, seed=0)


def test_sample_batch_is_p_people_by_k_photos():
    by_person = [np.array([0, 1, 2]), np.array([3, 4]), np.array([5, 6, 7, 8]), np.array([9, 10])]
    rng = np.random.default_rng(0)
    idx, labels = tt.sample_batch(rng, by_person, people=3, photos=4)
    assert len(idx) == 12 and np.bincount(labels).tolist() == [4, 4, 4]
    for label in range(3):
        owners = {next(i for i, pool in enumerate(by_person) if j in pool) for j in idx[labels == label]}
        assert len(owners) == 1  # one label, one person


def test_split_model_shares_layers_and_freezes_the_trunk():
    model = tiny_model()
    trunk, head = tt.split_model(model, "cut")
    x = np.random.default_rng(0).normal(size=(2, SIZE, SIZE, 3)).astype(np.float32)
    assert np.allclose(head(trunk(x)).numpy(), model(x).numpy(), atol=1e-6)
    assert [w.name for w in model.trainable_weights] == [w.name for w in head.trainable_weights]
    assert not model.get_layer("cut").trainable or not model.get_layer("cut").weights
    with pytest.raises(tt.ModelError, match="no layer"):
        tt.split_model(model, "nonexistent_layer")


def test_check_model_refuses_a_mismatched_model():
    with pytest.raises(tt.ModelError, match="input"):
        tt.check_model(tiny_model(size=SIZE), 160)


def test_fine_tune_improves_validation_and_keeps_the_best_epoch():
    faces = synthetic_faces(people=12, photos=5)
    model = tiny_model()
    trunk, head = tt.split_model(model, "cut")
    train, _ = tt.split_people(faces.persons, 0.3, seed=0)
    features = tt.trunk_features(trunk, faces.crops)
    history = tt.fine_tune(features, faces.persons, train, head, learning_rate=1e-2, epochs=6, steps=10,
                           people=4, photos=4, patience=6, verbose=False)
    assert history["improved"]
    assert history["best"]["roc_auc"] > history["baseline"]["roc_auc"]
    # The weights left in the model are those of the best epoch.
    val = ~train
    assert tt.score(tt.embed(head, features[0][val]), faces.persons[val]) == pytest.approx(
        (history["best"]["tar_at_far_1e-3"], history["best"]["roc_auc"]))


def _run_main(tmp_path: Path, monkeypatch, lr: str) -> tuple[int, Path]:
    model_path = save_model_atomic(tiny_model(), tmp_path / "start.h5")
    faces = synthetic_faces(people=12, photos=5)
    monkeypatch.setattr(tt, "list_people", lambda folder: [])
    monkeypatch.setattr(tt, "detect_crops", lambda photos, mtcnn, spec, cache: faces)
    out = tmp_path / "tuned.h5"
    code = tt.main([str(tmp_path), "--model", str(model_path), "--out", str(out), "--train-from", "cut",
                    "--lr", lr, "--epochs", "2", "--steps", "3", "--people", "4", "--photos", "3"])
    return code, out


def test_refuses_to_save_a_model_that_is_not_better(tmp_path, monkeypatch, capsys):
    code, out = _run_main(tmp_path, monkeypatch, lr="1e-12")  # weights barely move: no improvement
    assert code == tt.NOT_BETTER
    assert not out.exists()
    assert "not saved" in capsys.readouterr().err


def test_saves_a_better_model(tmp_path, monkeypatch):
    code, out = _run_main(tmp_path, monkeypatch, lr="1e-2")
    assert code == 0 and out.is_file()


def test_not_a_keras_model_is_a_clear_error(tmp_path, capsys):
    bogus = tmp_path / "bogus.h5"
    bogus.write_bytes(b"not hdf5 at all")
    assert tt.main([str(tmp_path), "--model", str(bogus), "--out", str(tmp_path / "o.h5")]) == 2
    assert "bogus.h5" in capsys.readouterr().err


def test_model_mismatch_is_refused(tmp_path, capsys):
    """A Keras model whose output is a feature map, not an embedding vector."""
    (tmp_path / "people").mkdir()
    inputs = keras.Input((SIZE, SIZE, 3))
    save_model_atomic(keras.Model(inputs, keras.layers.Conv2D(2, 1)(inputs)), tmp_path / "conv.h5")
    assert tt.main([str(tmp_path / "people"), "--model", str(tmp_path / "conv.h5"), "--out",
                    str(tmp_path / "o.h5")]) == 2
    assert "expected (batch, embedding)" in capsys.readouterr().err
    assert not (tmp_path / "o.h5").exists()


def test_empty_people_folder_is_a_clear_error(tmp_path, capsys):
    model_path = save_model_atomic(tiny_model(), tmp_path / "start.h5")
    (tmp_path / "people").mkdir()
    assert tt.main([str(tmp_path / "people"), "--model", str(model_path), "--out", str(tmp_path / "o.h5")]) == 2
    assert "no photos found" in capsys.readouterr().err


def test_out_must_not_overwrite_the_starting_model(tmp_path):
    with pytest.raises(SystemExit):
        tt.main([str(tmp_path), "--model", str(tmp_path / "m.h5"), "--out", str(tmp_path / "m.h5")])
