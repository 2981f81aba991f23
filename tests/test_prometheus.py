"""The metrics endpoint over real HTTP against a running daemon (real broker, real pipeline, real photos)."""

from __future__ import annotations

import math
import re
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from daemon_support import BlankScene, Running, blank_frames, make_config, scene
from gpiozero.pins.mock import MockFactory
from mosquitto import Broker, free_port

from edge.daemon import Daemon, default_recognizer
from edge.errors import ConfigError

SAMPLE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)$')


def scrape(port: int) -> tuple[dict[str, float], dict[str, str]]:
    """{'name{labels}': value} and {'name': type} from the text format; fails on any malformed line."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        text = response.read().decode()
    samples: dict[str, float] = {}
    types: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, kind = line.split()
            types[name] = kind
            continue
        if line.startswith("#") or not line:
            continue
        match = SAMPLE.match(line)
        assert match, f"malformed sample line: {line!r}"
        samples[match.group(1) + (match.group(2) or "")] = float(match.group(3))
    return samples, types


def test_metrics_move_with_a_recognized_visitor(tmp_path: Path, broker: Broker, pins: MockFactory,
                                                fr_images: dict[str, Path], real_config) -> None:
    frames = scene(tmp_path / "frames", [fr_images["obama2"]])
    port = free_port()
    config = real_config(frames, camera={"image_hold_s": 3.0}, metrics={"enabled": True, "port": port})
    daemon = Daemon(config, default_recognizer, pin_factory=pins)
    running = Running(daemon)
    try:
        assert running.wait(lambda: daemon.mqtt.connected.is_set(), timeout=30)
        before, types = scrape(port)
        assert types["edge_face_stage_seconds"] == "histogram" and types["edge_face_events_total"] == "counter"
        assert types["edge_face_queue_depth"] == "gauge"
        assert before["edge_face_mqtt_connected"] == 1
        assert running.wait(lambda: daemon.camera.ended, timeout=90), "the scene never ended"
        after, _ = scrape(port)
    finally:
        running.stop()
    assert after["edge_face_frames_processed_total"] > before["edge_face_frames_processed_total"]
    assert after["edge_face_frames_processed_total"] == daemon.stats["frames_analysed"]
    assert after['edge_face_events_total{kind="recognized"}'] == 1
    assert after['edge_face_events_total{kind="status"}'] >= 1
    for stage in ("detect", "embed", "match", "recognize", "decide"):
        count = after[f'edge_face_stage_seconds_count{{stage="{stage}"}}']
        assert count >= 1, stage
        assert after[f'edge_face_stage_seconds_bucket{{le="+Inf",stage="{stage}"}}'] == count
        assert after[f'edge_face_stage_seconds_sum{{stage="{stage}"}}'] > 0
    # Buckets are cumulative.
    detect = [after[f'edge_face_stage_seconds_bucket{{le="{b}",stage="detect"}}']
              for b in ("0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5")]
    assert detect == sorted(detect)
    age = after["edge_face_last_frame_age_seconds"]
    assert not math.isnan(age) and 0 <= age < 30
    assert after["edge_face_queue_depth"] >= 0 and after["edge_face_unlocks_total"] == 1


def test_metrics_are_off_by_default_and_404_elsewhere(tmp_path: Path, broker: Broker,
                                                      pins: MockFactory) -> None:
    frames = blank_frames(tmp_path / "frames")
    default = Daemon(make_config(tmp_path, broker, frames, relay={"enabled": False}), lambda c: BlankScene(),
                     pin_factory=pins)
    assert default.metrics_server is None
    default.queue.close()
    assert default.access_log is not None
    default.access_log.close()
    port = free_port()
    config = make_config(tmp_path, broker, frames, camera={"loop": True}, metrics={"enabled": True, "port": port})
    daemon = Daemon(config, lambda c: BlankScene(), pin_factory=pins)
    running = Running(daemon)
    try:
        assert running.wait(lambda: daemon.stats["frames_analysed"] >= 1, timeout=30)
        with pytest.raises(urllib.error.HTTPError) as missing:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10)
        assert missing.value.code == 404
        samples, _ = scrape(port)
        assert samples["edge_face_frames_processed_total"] >= 1
        # A second daemon on the same port is refused at start with the key named.
        with pytest.raises(ConfigError, match="metrics.port: cannot listen"):
            Daemon(config, lambda c: BlankScene(), pin_factory=MockFactory())
    finally:
        running.stop()
