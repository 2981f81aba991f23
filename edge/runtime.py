"""Inference runtimes behind one factory.

LiteRT (`ai-edge-litert`) is the runtime we support. `tflite-runtime` is dead (no wheels for
Python >= 3.12, breaks under numpy 2, and was measured returning wrong embeddings without an
error), so it is only tried when LiteRT is absent and explicitly allowed; the embedder's check
vector refuses it when it computes wrong results.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from edge.errors import ModelError

Interpreter = Any  # the runtimes share the tf.lite.Interpreter API but no common base class


def _litert_interpreter(path: str, threads: int) -> Interpreter:
    module = importlib.import_module("ai_edge_litert.interpreter")
    return module.Interpreter(model_path=path, num_threads=threads)


def _tflite_runtime_interpreter(path: str, threads: int) -> Interpreter:
    module = importlib.import_module("tflite_runtime.interpreter")
    return module.Interpreter(model_path=path, num_threads=threads)


RUNTIMES: dict[str, Callable[[str, int], Interpreter]] = {
    "litert": _litert_interpreter,
    "tflite-runtime": _tflite_runtime_interpreter,
}

DEFAULT_ORDER = ("litert", "tflite-runtime")


def available_runtimes() -> list[str]:
    """Names of the runtimes that can be imported here, in preference order."""
    names = []
    for name, module in (("litert", "ai_edge_litert.interpreter"), ("tflite-runtime", "tflite_runtime.interpreter")):
        try:
            importlib.import_module(module)
        except ImportError:
            continue
        names.append(name)
    return names


def load_interpreter(path: str | Path, threads: int = 1, runtime: str = "auto") -> tuple[Interpreter, str]:
    """Load a .tflite file and allocate its tensors; returns (interpreter, runtime name)."""
    path = Path(path)
    if threads < 1:
        raise ModelError(f"threads must be >= 1, got {threads}")
    if not path.is_file():
        raise ModelError(f"{path}: model file not found (build it with `make models`)")
    if path.stat().st_size < 16:
        raise ModelError(f"{path}: model file is truncated ({path.stat().st_size} bytes)")
    with path.open("rb") as handle:
        header = handle.read(8)
    if header[4:8] != b"TFL3":
        raise ModelError(f"{path}: not a TFLite flatbuffer (missing the TFL3 identifier)")
    if runtime == "auto":
        order = DEFAULT_ORDER
    elif runtime in RUNTIMES:
        order = (runtime,)
    else:
        raise ModelError(f"unknown runtime {runtime!r}; choose one of: auto, {', '.join(RUNTIMES)}")
    failures = []
    for name in order:
        try:
            interpreter = RUNTIMES[name](str(path), threads)
            interpreter.allocate_tensors()
        except ImportError as exc:
            failures.append(f"{name}: not installed ({exc})")
            continue
        except (ValueError, RuntimeError) as exc:
            raise ModelError(f"{path}: {name} cannot load this model: {exc}") from None
        return interpreter, name
    raise ModelError(f"no TFLite runtime available: {'; '.join(failures)}")
