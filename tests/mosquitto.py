"""A real Mosquitto broker for tests, on a free port, that tests can stop and restart.

Persistence is on (in the test's temp folder) so a subscriber with a persistent session keeps
receiving QoS 1 messages published while it was disconnected, across broker restarts.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Broker:
    """One mosquitto process bound to 127.0.0.1:port."""

    def __init__(self, folder: Path, port: int | None = None) -> None:
        self.folder = folder
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.process: subprocess.Popen | None = None
        self.conf = folder / "mosquitto.conf"
        self.log = folder / "mosquitto.log"
        self.conf.write_text(
            # `user root`: stay the invoking user (as root it would switch to `mosquitto`, who cannot read tmp_path).
            f"user root\nlistener {self.port} 127.0.0.1\nallow_anonymous true\npersistence true\n"
            f"persistence_location {folder}/\nlog_dest file {self.log}\nlog_type all\n"
        )

    def start(self) -> None:
        self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.conf)], stdout=subprocess.DEVNULL,
                                        stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                raise RuntimeError(f"mosquitto exited: {err}")
            try:
                with socket.create_connection((self.host, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"mosquitto did not listen on port {self.port}")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)
        self.process = None

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None


class Subscriber:
    """Collects every message under a topic filter, with arrival times; survives broker restarts."""

    def __init__(self, broker: Broker, topic: str, client_id: str = "test-subscriber") -> None:
        self.topic = topic
        self.messages: list[tuple[float, str, bytes, bool]] = []
        self.cond = threading.Condition()
        self.connected = threading.Event()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
        self.client.on_connect = self._on_connect
        self.client.on_message = self._on_message
        self.client.on_disconnect = lambda *a: self.connected.clear()
        self.client.reconnect_delay_set(1, 1)
        self.client.connect(broker.host, broker.port, keepalive=10)
        self.client.loop_start()
        assert self.connected.wait(10), "test subscriber could not connect"

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        client.subscribe(self.topic, qos=1)
        self.connected.set()

    def _on_message(self, client, userdata, message) -> None:
        with self.cond:
            self.messages.append((time.monotonic(), message.topic, bytes(message.payload), bool(message.retain)))
            self.cond.notify_all()

    def wait_for(self, predicate, timeout: float = 20.0) -> bool:
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate(self.messages):
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)
            return True

    def on(self, suffix: str) -> list[bytes]:
        with self.cond:
            return [payload for _, topic, payload, _ in self.messages if topic.endswith(suffix)]

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[Broker]:
    if not Path(MOSQUITTO).exists():
        pytest.fail(f"{MOSQUITTO} not found: these tests need a real Mosquitto broker")
    folder = tmp_path / "broker"
    folder.mkdir()
    instance = Broker(folder)
    instance.start()
    yield instance
    instance.stop()
