"""Face crops -> L2-normalized FaceNet embeddings on LiteRT (no TensorFlow on the device).

The model file must carry its metadata JSON; at load the file's sha256 is compared with it and the
check vector is run, so a swapped model or a runtime computing wrong results is refused before a
single face is matched.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edge.errors import ModelError
from edge.model_metadata import (
    ModelMetadata,
    check_deviation,
    check_input,
    input_sha256,
    read_metadata,
    sha256_file,
)
from edge.runtime import load_interpreter

_NP_DTYPES = {"float32": np.float32, "int8": np.int8, "uint8": np.uint8}


class Embedder:
    """Runs one FaceNet .tflite model; `embed(uint8 crops) -> (N, D)` unit rows."""

    def __init__(self, model_path: str | Path, threads: int = 1, runtime: str = "auto", verify: bool = True) -> None:
        self.model_path = Path(model_path)
        if not self.model_path.is_file():
            raise ModelError(f"{self.model_path}: model file not found (build it with `make models`)")
        self.metadata: ModelMetadata = read_metadata(self.model_path)
        if verify:
            actual = sha256_file(self.model_path)
            if actual != self.metadata.model_sha256:
                raise ModelError(f"{self.model_path}: sha256 {actual[:12]}... does not match its metadata "
                                 f"({self.metadata.model_sha256[:12]}...): model or metadata was replaced")
        self.interpreter, self.runtime = load_interpreter(self.model_path, threads=threads, runtime=runtime)
        self.threads = threads
        inputs, outputs = self.interpreter.get_input_details(), self.interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ModelError(f"{self.model_path}: expected 1 input and 1 output, "
                             f"found {len(inputs)} and {len(outputs)}")
        self._input, self._output = inputs[0], outputs[0]
        size, dim = self.metadata.input_size, self.metadata.embedding_size
        shape = tuple(int(v) for v in self._input["shape"])
        if shape[1:] != (size, size, 3):
            raise ModelError(f"{self.model_path}: input shape {shape} does not match metadata input_size {size}")
        if int(self._output["shape"][-1]) != dim:
            raise ModelError(f"{self.model_path}: output width {self._output['shape'][-1]} does not match "
                             f"metadata embedding_size {dim}")
        for key, detail in (("input_dtype", self._input), ("output_dtype", self._output)):
            if np.dtype(detail["dtype"]) != np.dtype(_NP_DTYPES[getattr(self.metadata, key)]):
                raise ModelError(f"{self.model_path}: tensor dtype {np.dtype(detail['dtype'])} does not match "
                                 f"metadata {key} {getattr(self.metadata, key)}")
        self._batch = self._fixed_batch = int(shape[0])
        self._loop = False
        self.deviation: float | None = None
        if verify:
            self.verify()

    @property
    def model_id(self) -> str:
        return self.metadata.model_id

    @property
    def threshold(self) -> float:
        return self.metadata.threshold

    @property
    def input_size(self) -> int:
        return self.metadata.input_size

    def verify(self) -> float:
        """Run the check vector; ModelError naming the runtime and the deviation if it is off."""
        check = self.metadata.check
        image = check_input(self.metadata.input_size, check.seed)
        if input_sha256(image) != check.input_sha256:
            raise ModelError(f"{self.model_path}: this device regenerates a different check input than the "
                             "converter did (check.input_sha256 differs); cannot verify the runtime")
        deviation = check_deviation(self.metadata, self.embed(image))
        self.deviation = deviation
        if not deviation <= check.tolerance:
            raise ModelError(f"{self.model_path}: runtime {self.runtime} computes wrong embeddings: check vector "
                             f"deviates by L2 {deviation:.3g} (tolerance {check.tolerance:g}); refusing this model")
        return deviation

    def _prepare(self, crops: np.ndarray) -> np.ndarray:
        meta = self.metadata
        mean, scale = np.float32(meta.normalization["mean"]), np.float32(meta.normalization["scale"])
        x = (crops.astype(np.float32) - mean) / scale
        dtype = _NP_DTYPES[meta.input_dtype]
        if dtype is np.float32:
            return x
        scale, zero = self._input["quantization"]
        info = np.iinfo(dtype)
        return np.clip(np.round(x / scale + zero), info.min, info.max).astype(dtype)

    def _set_batch(self, n: int) -> None:
        if n != self._batch:
            size = self.metadata.input_size
            self.interpreter.resize_tensor_input(self._input["index"], [n, size, size, 3])
            self.interpreter.allocate_tensors()
            self._batch = n

    def embed(self, crops: np.ndarray) -> np.ndarray:
        """uint8 (N, S, S, 3) crops -> float32 (N, D) L2-normalized embeddings; N may be 0."""
        crops = np.asarray(crops)
        size, dim = self.metadata.input_size, self.metadata.embedding_size
        if crops.ndim == 3:
            crops = crops[None]
        if crops.ndim != 4 or crops.shape[1:] != (size, size, 3):
            raise ValueError(f"crops must have shape (N, {size}, {size}, 3), got {crops.shape}")
        if crops.dtype != np.uint8:
            raise ValueError(f"crops must be uint8 RGB, got {crops.dtype}")
        if len(crops) == 0:
            return np.zeros((0, dim), dtype=np.float32)
        if self._loop:
            return np.concatenate([self._run(crop[None]) for crop in crops])
        try:
            self._set_batch(len(crops))
        except (RuntimeError, ValueError) as exc:
            if self._fixed_batch != 1:
                raise ModelError(f"{self.model_path}: runtime {self.runtime} cannot resize the input to batch "
                                 f"{len(crops)} ({exc})") from None
            # A runtime that cannot resize: go back to batch 1 and loop.
            self._set_batch(1)
            self._loop = True
            return self.embed(crops)
        return self._run(crops)

    def _run(self, crops: np.ndarray) -> np.ndarray:
        dim = self.metadata.embedding_size
        self.interpreter.set_tensor(self._input["index"], self._prepare(crops))
        self.interpreter.invoke()
        raw = self.interpreter.get_tensor(self._output["index"])
        if self.metadata.output_dtype != "float32":
            scale, zero = self._output["quantization"]
            raw = (raw.astype(np.float32) - zero) * scale
        out = np.asarray(raw, dtype=np.float32).reshape(len(crops), dim)
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        if not np.all(np.isfinite(out)) or np.any(norms == 0):
            raise ModelError(f"{self.model_path}: runtime {self.runtime} returned non-finite or zero embeddings")
        return out / norms
