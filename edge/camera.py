"""Frame sources and the capture thread that always hands over the newest frame.

Recognition is slower than a camera, so a queue of frames would only grow stale: the capture
thread keeps reading at the source's pace and overwrites a single slot; the consumer takes the
newest frame and everything it missed is dropped. A failing source is reopened with a doubling
delay, and every failure and recovery is reported through a status callback.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol
from urllib.parse import urlsplit, urlunsplit

import cv2
import numpy as np

from edge.config import CameraConfig
from edge.errors import EdgeError, ImageError
from edge.images import list_images, load_image

log = logging.getLogger("edge.camera")


class CameraError(EdgeError):
    """The video source cannot be opened or stopped delivering frames."""


class FrameSource(Protocol):
    """Anything that yields RGB frames: `read()` returns None at the end of a finite source."""

    name: str

    def open(self) -> None: ...
    def read(self) -> np.ndarray | None: ...
    def close(self) -> None: ...


class ImageFolderSource:
    """A folder of images shown in name order, each for `hold_s` seconds, at `fps` frames per second.

    With `fit` (width, height) each image is scaled down to fit inside it, as a camera of that size would
    deliver it (photos can be many megapixels).
    """

    def __init__(self, folder: str | Path, fps: float = 10.0, hold_s: float = 1.0, loop: bool = False,
                 fit: tuple[int, int] | None = None) -> None:
        self.folder = Path(folder)
        self.fit = fit
        self.name = str(self.folder)
        self.fps, self.hold_s, self.loop = fps, hold_s, loop
        self._files: list[Path] = []
        self._cache: tuple[int, np.ndarray] | None = None
        self._start = 0.0
        self._next = 0.0

    def open(self) -> None:
        try:
            self._files = list_images(self.folder)
        except ImageError as exc:
            raise CameraError(f"camera.source: {exc}") from None
        if not self._files:
            raise CameraError(f"camera.source: {self.folder} holds no images")
        self._cache = None
        self._start = self._next = time.monotonic()

    def read(self) -> np.ndarray | None:
        delay = self._next - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self._next = max(self._next + 1.0 / self.fps, time.monotonic())
        if not self.folder.is_dir():
            raise CameraError(f"camera.source: {self.folder} disappeared")
        index = int((time.monotonic() - self._start) / self.hold_s)
        if index >= len(self._files):
            if not self.loop:
                return None
            index %= len(self._files)
        if self._cache is None or self._cache[0] != index:
            try:
                image = load_image(self._files[index])
            except ImageError as exc:
                raise CameraError(f"camera.source: {exc}") from None
            if self.fit is not None:
                scale = min(self.fit[0] / image.shape[1], self.fit[1] / image.shape[0])
                if scale < 1:
                    size = (max(1, round(image.shape[1] * scale)), max(1, round(image.shape[0] * scale)))
                    image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            self._cache = (index, image)
        return self._cache[1].copy()

    def close(self) -> None:
        self._cache = None


def redact_url(source: int | str) -> str:
    """A source as it may appear in logs and events: the password of a stream URL replaced."""
    text = str(source)
    parts = urlsplit(text) if "://" in text else None
    if parts is None or parts.password is None:
        return text
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{host}"))


class OpenCVSource:
    """A V4L2 device, a video file or a network stream through cv2.VideoCapture."""

    def __init__(self, source: int | str, width: int | None = None, height: int | None = None, fps: float = 10.0,
                 loop: bool = False, read_timeout_s: float = 5.0) -> None:
        self.source = source
        self.name = redact_url(source)  # logged and published: never the stream's password
        self.width, self.height, self.fps, self.loop = width, height, fps, loop
        self.read_timeout_s = read_timeout_s
        self.is_file = isinstance(source, str) and Path(source).is_file() and not source.startswith("/dev/")
        self._cap: cv2.VideoCapture | None = None
        self._next = 0.0

    def open(self) -> None:
        timeout_ms = int(self.read_timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, timeout_ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, timeout_ms]
        cap = cv2.VideoCapture(self.source, cv2.CAP_ANY, params)
        if not cap.isOpened():
            cap.release()
            raise CameraError(f"camera.source: cannot open {self.name!r}")
        if self.width:
            cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.width)
        if self.height:
            cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.height)
        if self.is_file:
            file_fps = cap.get(cv2.CAP_PROP_FPS)
            if file_fps and file_fps > 0:
                self.fps = min(self.fps, file_fps)
        self._cap = cap
        self._next = time.monotonic()

    def read(self) -> np.ndarray | None:
        if self._cap is None:
            raise CameraError("camera.source: not open")
        if self.is_file:  # a file would be read as fast as the CPU allows; play it at its frame rate
            delay = self._next - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            self._next = max(self._next + 1.0 / self.fps, time.monotonic())
        ok, bgr = self._cap.read()
        if not ok or bgr is None:
            if self.is_file:
                if not self.loop:
                    return None
                self._cap.set(cv2.CAP_PROP_POS_FRAMES, 0)
                ok, bgr = self._cap.read()
            if not ok or bgr is None:
                raise CameraError(f"camera.source: {self.name!r} stopped delivering frames")
        if bgr.ndim == 2:
            return cv2.cvtColor(bgr, cv2.COLOR_GRAY2RGB)
        return cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)

    def close(self) -> None:
        if self._cap is not None:
            self._cap.release()
            self._cap = None


class Picamera2Source:
    """The Raspberry Pi camera module through picamera2 (only importable on Raspberry Pi OS)."""

    def __init__(self, width: int | None, height: int | None) -> None:
        self.name = "picamera2"
        self.size = (width or 640, height or 480)
        self._cam = None

    def open(self) -> None:
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise CameraError("camera.source: 'picamera2' is not installed (apt install python3-picamera2)") from None
        try:
            cam = Picamera2()
            cam.configure(cam.create_video_configuration(main={"size": self.size, "format": "RGB888"}))
            cam.start()
        except Exception as exc:
            raise CameraError(f"camera.source: picamera2 failed to start ({exc})") from None
        self._cam = cam

    def read(self) -> np.ndarray | None:
        if self._cam is None:
            raise CameraError("camera.source: not open")
        try:
            frame = self._cam.capture_array("main")
        except Exception as exc:
            raise CameraError(f"camera.source: picamera2 capture failed ({exc})") from None
        # picamera2's "RGB888" is BGR in memory order.
        return np.ascontiguousarray(frame[:, :, 2::-1])

    def close(self) -> None:
        if self._cam is not None:
            try:
                self._cam.stop()
                self._cam.close()
            finally:
                self._cam = None


def make_source(config: CameraConfig) -> FrameSource:
    """Pick the source kind from `camera.source`."""
    source = config.source
    if isinstance(source, str):
        if source == "picamera2":
            return Picamera2Source(config.width, config.height)
        if Path(source).is_dir():
            fit = (config.width, config.height) if config.width and config.height else None
            return ImageFolderSource(source, config.fps, config.image_hold_s, config.loop, fit)
        if source.isdigit():
            source = int(source)
    return OpenCVSource(source, config.width, config.height, config.fps, config.loop, config.read_timeout_s)


@dataclass(frozen=True)
class Frame:
    image: np.ndarray
    seq: int
    captured: float  # time.monotonic() when read


class Camera:
    """Capture thread with a newest-frame slot, reopen backoff and status reports."""

    def __init__(self, source_factory: Callable[[], FrameSource], retry_s: float = 1.0, retry_max_s: float = 30.0,
                 on_status: Callable[[str, str], None] | None = None) -> None:
        self.source_factory = source_factory
        self.retry_s, self.retry_max_s = retry_s, retry_max_s
        self.on_status = on_status or (lambda state, detail: None)
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._taken = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.frames_read = 0
        self.failures = 0
        self.ok = False
        self.ended = False

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="camera", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=5.0)

    def latest(self, timeout: float) -> Frame | None:
        """The newest frame not handed out before, waiting up to `timeout`; None if none came."""
        with self._cond:
            if self._frame is None or self._frame.seq <= self._taken:
                self._cond.wait(timeout)
            frame = self._frame
            if frame is None or frame.seq <= self._taken:
                return None
            self._taken = frame.seq
            return frame

    def _run(self) -> None:
        delay = self.retry_s
        seq = 0
        streak = 0
        while not self._stop.is_set():
            source = None
            try:
                source = self.source_factory()
                source.open()
                opened = time.monotonic()
                while not self._stop.is_set():
                    image = source.read()
                    if image is None:
                        self.ok = False
                        self.ended = True
                        log.info("camera source %s ended", source.name)
                        self.on_status("camera_ended", f"{source.name} reached its end")
                        return
                    seq += 1
                    self.frames_read += 1
                    if not self.ok:
                        self.ok = True
                        log.info("camera source %s delivering frames", source.name)
                        self.on_status("camera_ok", f"{source.name} delivering frames")
                    if time.monotonic() - opened > 5.0:
                        delay = self.retry_s  # healthy for a while: start the backoff over next time
                    with self._cond:
                        self._frame = Frame(image, seq, time.monotonic())
                        self._cond.notify_all()
            except Exception as exc:  # any failure of any backend: report and retry, never die
                self.failures += 1
                streak = 1 if self.ok else streak + 1
                self.ok = False
                detail = str(exc) if isinstance(exc, EdgeError) else f"{type(exc).__name__}: {exc}"
                log.warning("camera failure (%s); retry %d in %.1f s", detail, streak, delay)
                if streak & (streak - 1) == 0:  # report failures 1, 2, 4, 8, ... of a streak, not every retry
                    self.on_status("camera_error", f"{detail}; retry {streak} in {delay:.1f} s")
                self._stop.wait(delay)
                delay = min(delay * 2, self.retry_max_s)
            finally:
                if source is not None:
                    try:
                        source.close()
                    except Exception:
                        log.exception("closing the camera source failed")
