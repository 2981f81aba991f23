"""The one place that turns files and bytes into RGB uint8 arrays."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from edge.errors import ImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".pgm", ".ppm", ".tif", ".tiff")


def decode_image(data: bytes, name: str = "<bytes>") -> np.ndarray:
    """Decode encoded image bytes into an RGB uint8 array (grayscale is expanded to 3 channels)."""
    if not data:
        raise ImageError(f"{name}: empty image data")
    buffer = np.frombuffer(data, dtype=np.uint8)
    bgr = cv2.imdecode(buffer, cv2.IMREAD_COLOR)
    if bgr is None or bgr.size == 0:
        raise ImageError(f"{name}: not a readable image (corrupt or unsupported format)")
    return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)


def read_image_bytes(path: str | Path) -> bytes:
    """The raw bytes of an image file (hashed for provenance, then decoded), with clear errors."""
    path = Path(path)
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise ImageError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImageError(f"{path}: is a directory, not an image") from None
    except OSError as exc:
        raise ImageError(f"{path}: cannot read ({exc.strerror})") from None


def load_image(path: str | Path) -> np.ndarray:
    """Read an image file into an RGB uint8 array."""
    return decode_image(read_image_bytes(path), str(path))


def list_images(folder: str | Path) -> list[Path]:
    """Image files directly inside a folder, sorted by name (the order enrollment relies on)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ImageError(f"{folder}: not a directory")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def expand_image_args(paths: list[str | Path]) -> list[Path]:
    """Files stay as given; directories expand to the images inside them."""
    result: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            result.extend(list_images(path))
        else:
            result.append(path)
    return result
