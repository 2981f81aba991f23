"""The JSON written beside every model: what it expects, what it outputs, and proof it still computes right.

The converter writes `<model>.json`; the device reads it without TensorFlow. Besides the input
format and the recommended threshold it holds a *check vector*: a fixed deterministic input image
and the embedding the model produced for it at build time. At load time the embedder runs that
input and refuses the model (ModelError) if the runtime's answer deviates beyond the tolerance:
this is what catches a runtime computing wrong results without an error.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edge.errors import ModelError

FORMAT = "edge-face-model/1"
MODES = ("fp32", "fp16", "dynamic", "int8")
IO_DTYPES = ("float32", "int8", "uint8")
NORMALIZATION_MEAN = 127.5
NORMALIZATION_SCALE = 128.0
# Largest deviation a correct runtime may show, as the L2 distance between the check embedding it
# computes and the stored one (the unit the matching threshold, ~1.0, is in). Measured spread
# between LiteRT's correct kernel paths (XNNPACK, built-in, reference): fp32/fp16 ~2e-7,
# dynamic 0.007, int8 0.046; a one-pixel shift of the input moves the embedding by ~0.14 and a
# swapped channel order by ~0.24 (bench/bench_embedder.py --check-kernels, docs/models.md).
DEFAULT_TOLERANCE = {"fp32": 5e-3, "fp16": 5e-2, "dynamic": 3e-2, "int8": 8e-2}


def sha256_file(path: str | Path) -> str:
    """Hex sha256 of a file, streamed."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_input(size: int, seed: int = 0) -> np.ndarray:
    """A deterministic face-sized uint8 test image (1, size, size, 3) built from integer arithmetic.

    Smooth gradients plus a hashed texture, so every layer sees varied activations; integer-only
    math keeps it identical on every machine and numpy version.
    """
    y, x = np.mgrid[0:size, 0:size].astype(np.int64)
    channels = []
    for c in range(3):
        texture = ((x * 73856093) ^ (y * 19349663) ^ ((c + 1 + seed) * 83492791)) % 61
        smooth = (x * (c + 1) * 255 // max(size - 1, 1) + y * (3 - c) * 255 // max(size - 1, 1)) // 4
        channels.append((smooth + texture * 2 + 30 * c) % 256)
    return np.stack(channels, axis=-1).astype(np.uint8)[None]


@dataclass
class CheckVector:
    """A fixed input (by seed) and the embedding the model gave for it when it was built."""

    seed: int
    expected: list[float]
    tolerance: float
    input_sha256: str

    def expected_array(self) -> np.ndarray:
        return np.asarray(self.expected, dtype=np.float32)


@dataclass
class ModelMetadata:
    """Everything the runtime needs to know about a model file, read from `<model>.json`."""

    model_file: str
    model_sha256: str
    mode: str
    input_size: int
    embedding_size: int
    threshold: float
    check: CheckVector
    input_dtype: str = "float32"
    output_dtype: str = "float32"
    normalization: dict[str, Any] = field(default_factory=lambda: {
        "formula": "(x - 127.5) / 128", "mean": NORMALIZATION_MEAN, "scale": NORMALIZATION_SCALE})
    family: str = "facenet"
    source_file: str = ""
    source_sha256: str = ""
    threshold_source: str = ""
    tools: dict[str, str] = field(default_factory=dict)
    options: dict[str, Any] = field(default_factory=dict)
    quality: dict[str, Any] = field(default_factory=dict)
    format: str = FORMAT

    @property
    def model_id(self) -> str:
        """Names the embedding space of this exact model file."""
        return f"{self.family}-{self.mode}-{self.model_sha256[:12]}"

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2, sort_keys=True) + "\n"


def metadata_path(model_path: str | Path) -> Path:
    """Where the metadata of a model lives: same name, .json suffix."""
    return Path(model_path).with_suffix(".json")


def _require(data: dict, key: str, kind: type | tuple[type, ...], where: Path) -> Any:
    if key not in data:
        raise ModelError(f"{where}: metadata key {key!r} is missing")
    value = data[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ModelError(f"{where}: metadata key {key!r} has the wrong type ({type(value).__name__}: {value!r:.60})")
    return value


def parse_metadata(data: Any, where: Path) -> ModelMetadata:
    """Validate a decoded JSON object; every problem names the key and value at fault."""
    if not isinstance(data, dict):
        raise ModelError(f"{where}: metadata must be a JSON object, got {type(data).__name__}")
    fmt = _require(data, "format", str, where)
    if fmt != FORMAT:
        raise ModelError(f"{where}: metadata format {fmt!r} is not {FORMAT!r}")
    mode = _require(data, "mode", str, where)
    if mode not in MODES:
        raise ModelError(f"{where}: metadata key 'mode' is {mode!r}; expected one of {', '.join(MODES)}")
    input_size = _require(data, "input_size", int, where)
    embedding_size = _require(data, "embedding_size", int, where)
    if not 8 <= input_size <= 1024:
        raise ModelError(f"{where}: metadata key 'input_size' is {input_size}, outside 8..1024")
    if not 1 <= embedding_size <= 65536:
        raise ModelError(f"{where}: metadata key 'embedding_size' is {embedding_size}, outside 1..65536")
    threshold = float(_require(data, "threshold", (int, float), where))
    if not 0.0 < threshold < 2.0:
        raise ModelError(f"{where}: metadata key 'threshold' is {threshold}; an L2 distance between unit "
                         "vectors must lie in (0, 2)")
    sha = _require(data, "model_sha256", str, where)
    if len(sha) != 64 or any(c not in "0123456789abcdef" for c in sha):
        raise ModelError(f"{where}: metadata key 'model_sha256' is not a hex sha256: {sha!r:.70}")
    for key in ("input_dtype", "output_dtype"):
        value = _require(data, key, str, where)
        if value not in IO_DTYPES:
            raise ModelError(f"{where}: metadata key {key!r} is {value!r}; expected one of {', '.join(IO_DTYPES)}")
    norm = _require(data, "normalization", dict, where)
    mean, scale = norm.get("mean"), norm.get("scale")
    if not isinstance(mean, int | float) or not isinstance(scale, int | float) or scale <= 0:
        raise ModelError(f"{where}: metadata key 'normalization' needs numeric 'mean' and positive 'scale', "
                         f"got {norm!r:.80}")
    raw_check = _require(data, "check", dict, where)
    try:
        check = CheckVector(seed=int(raw_check["seed"]), expected=[float(v) for v in raw_check["expected"]],
                            tolerance=float(raw_check["tolerance"]), input_sha256=str(raw_check["input_sha256"]))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelError(f"{where}: metadata key 'check' is malformed ({type(exc).__name__}: {exc})") from None
    if len(check.expected) != embedding_size:
        raise ModelError(f"{where}: check vector has {len(check.expected)} values, embedding_size is {embedding_size}")
    if not np.all(np.isfinite(check.expected)) or not 0 < check.tolerance < 1:
        raise ModelError(f"{where}: check vector holds non-finite values or tolerance {check.tolerance} outside (0, 1)")
    known = {f for f in ModelMetadata.__dataclass_fields__}
    fields = {k: v for k, v in data.items() if k in known}
    fields.update(mode=mode, input_size=input_size, embedding_size=embedding_size, threshold=threshold, check=check)
    try:
        return ModelMetadata(**fields)
    except TypeError as exc:
        raise ModelError(f"{where}: metadata is missing keys ({exc})") from None


def read_metadata(model_path: str | Path) -> ModelMetadata:
    """Read and validate `<model>.json`; ModelError names the file and key at fault."""
    path = metadata_path(model_path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ModelError(f"{path}: model metadata not found (it is written by tools/convert_to_tflite.py "
                         "beside the model)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ModelError(f"{path}: cannot read model metadata ({exc})") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ModelError(f"{path}: model metadata is not valid JSON ({exc})") from None
    return parse_metadata(data, path)


def write_metadata(metadata: ModelMetadata, model_path: str | Path) -> Path:
    """Write `<model>.json` through a temporary file and a rename (never half-written)."""
    path = metadata_path(model_path)
    parse_metadata(json.loads(metadata.to_json()), path)  # refuse to write what we could not read back
    atomic_write_bytes(path, metadata.to_json().encode("utf-8"))
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    """Write a file via a temporary sibling + fsync + rename."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def input_sha256(image: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(image).tobytes()).hexdigest()


def check_deviation(metadata: ModelMetadata, embedding: np.ndarray) -> float:
    """L2 distance between a computed check embedding and the stored one (inf if shapes differ)."""
    expected = metadata.check.expected_array()
    embedding = np.asarray(embedding, dtype=np.float32).reshape(-1)
    if embedding.shape != expected.shape:
        return float("inf")
    return float(np.linalg.norm(embedding - expected))
