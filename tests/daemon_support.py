"""Helpers for tests that run the daemon: configs against a test broker, frame folders, a running daemon.

Their fixtures (`pins`, `enrolled_gallery`, `real_config`, and `broker` from mosquitto.py) live in
conftest.py, so every test module gets them without importing them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from mosquitto import Broker

from edge.config import Config, config_from_dict
from edge.daemon import Daemon

SECRET = "test-secret-0123456789"
DEVICE = "door-t"


# --- helpers -------------------------------------------------------------------------------------------------


def blank_frames(folder: Path, count: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        image = np.full((240, 320, 3), 90, np.uint8)
        cv2.imwrite(str(folder / f"{i:02d}_blank.png"), image)
    return folder


def scene(folder: Path, photos: list[Path]) -> Path:
    """A frame folder: a blank image first (empty hallway), then links to the given photos."""
    blank_frames(folder, 1)
    for i, photo in enumerate(photos, start=1):
        (folder / f"{i:02d}_{photo.name}").symlink_to(photo)
    return folder


def make_config(tmp_path: Path, server: Broker, frames: Path, **sections: dict[str, Any]) -> Config:
    data: dict[str, Any] = {
        "device_id": DEVICE,
        "camera": {"source": str(frames), "fps": 10.0, "image_hold_s": 1.0, "retry_s": 0.3, "retry_max_s": 1.0,
                   "width": 640, "height": 480},
        "mqtt": {"host": server.host, "port": server.port, "topic_prefix": "test", "reconnect_min_s": 1.0,
                 "reconnect_max_s": 1.0},
        "queue": {"path": str(tmp_path / "events.db")},
        "gallery": {"path": str(tmp_path / "gallery.db")},
        "relay": {"pin": 17, "unlock_s": 0.5, "mock": "always"},
        "health": {"interval_s": 3600.0},
        "commands": {"nonce_path": str(tmp_path / "nonces.json")},
        # These tests are about identity, MQTT and the relay; tests/test_liveness_daemon.py turns liveness on.
        "liveness": {"mode": "off"},
    }
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data)


class BlankScene:
    """For tests about the camera, commands and signals: counts the frames it is asked to analyse."""

    def __init__(self) -> None:
        self.calls = 0

    def recognize(self, image: np.ndarray) -> list[Any]:
        self.calls += 1
        return []


class Running:
    """A daemon running in a background thread."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.status: int | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.status = self.daemon.run()

    def stop(self) -> None:
        self.daemon.request_stop("test")
        self.thread.join(timeout=20)
        assert not self.thread.is_alive(), "daemon did not stop"

    def wait(self, predicate: Callable[[], bool], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if predicate():
                return True
            time.sleep(0.05)
        return False

    def events(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in list(self.daemon.recent_events) if e["type"] == kind]
