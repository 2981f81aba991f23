"""Unknown-face review through its real interfaces: the daemon (real Mosquitto, mock pins, real photos,
the real pipeline), the review CLI and the enrollment tool. biden is the stranger, obama is enrolled.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from daemon_support import Running, scene
from gpiozero.pins.mock import MockFactory
from mosquitto import Broker, Subscriber

from edge.access_log import AccessLog
from edge.config import Config
from edge.daemon import Daemon, default_recognizer
from edge.images import load_image
from edge.unknown_faces import UnknownFaceStore, face_crop

REPO = Path(__file__).resolve().parent.parent


def run_stranger(tmp_path: Path, broker: Broker, pins: MockFactory, frames: Path, config) -> tuple[list[dict], Daemon]:
    """Run the daemon over the scene until it ends; the unknown events it published."""
    sub = Subscriber(broker, "test/#")
    daemon = Daemon(config, default_recognizer, pin_factory=pins)
    running = Running(daemon)
    try:
        assert running.wait(lambda: daemon.camera.ended, timeout=60), "the scene never ended"
    finally:
        running.stop()
    assert sub.wait_for(lambda m: any(t.endswith("/event/unknown") for _, t, _, _ in m), timeout=10)
    unknown = [json.loads(p) for p in sub.on("/event/unknown")]
    sub.close()
    return unknown, daemon


def with_gallery(config: Config, gallery: Path) -> Config:
    """real_config always points at the session's gallery; this test enrolls into its own copy."""
    return replace(config, gallery=replace(config.gallery, path=str(gallery)))


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edge.unknown_faces", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def enroll_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "tools/enroll.py", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=180)


def test_stranger_crop_kept_named_by_event_then_enrolled_with_one_command(
        tmp_path: Path, broker: Broker, pins: MockFactory, fr_images: dict[str, Path],
        real_config, enrolled_gallery: Path, facenet_model: Path, mtcnn_dir: Path) -> None:
    gallery = tmp_path / "gallery.db"
    shutil.copyfile(enrolled_gallery, gallery)  # the session's gallery stays as it is
    gallery.chmod(0o600)
    crops = tmp_path / "review"
    frames = scene(tmp_path / "frames", [fr_images["biden"]])
    config = with_gallery(real_config(frames, camera={"image_hold_s": 4.0},
                                      unknown_faces={"enabled": True, "path": str(crops)}), gallery)
    unknown, _ = run_stranger(tmp_path, broker, pins, frames, config)

    assert len(unknown) == 1, unknown
    event = unknown[0]
    stored = sorted(crops.iterdir())
    assert [p.name for p in stored] == [f"{event['id']}.jpg"] and event["crop"] == stored[0].name
    assert stat.S_IMODE(stored[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(crops.stat().st_mode) == 0o700
    crop = load_image(stored[0])
    box = event["box"]
    assert box["w"] <= crop.shape[1] < 640 and box["h"] <= crop.shape[0] < 480  # the face, not the frame
    log = AccessLog(tmp_path / "access.db")  # the same id links the crop to the access log
    try:
        assert [e.event_id for e in log.query(kind="unknown")] == [event["id"]]
    finally:
        log.close()

    listed = cli("--dir", str(crops), "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith(event["id"] + "\t") and f"\t{stored[0].stat().st_size} bytes" in listed.stdout
    shown = cli("--dir", str(crops), "show", event["id"])
    assert shown.returncode == 0 and shown.stdout.strip() == str(stored[0])

    enrolled = enroll_cli("--gallery", str(gallery), "--model", str(facenet_model), "--mtcnn-dir", str(mtcnn_dir),
                          "add", "biden", "--from-unknown", event["id"], "--unknown-dir", str(crops))
    assert enrolled.returncode == 0, enrolled.stdout + enrolled.stderr
    assert "enrolled 1 photo(s) of 'biden'" in enrolled.stdout
    assert list(crops.iterdir()) == []  # the gallery keeps no image

    later = scene(tmp_path / "later", [fr_images["biden"]])
    config = with_gallery(real_config(later, camera={"image_hold_s": 4.0}), gallery)
    sub = Subscriber(broker, "test/#", client_id="later-sub")
    daemon = Daemon(config, default_recognizer, pin_factory=MockFactory())
    running = Running(daemon)
    try:
        assert running.wait(lambda: daemon.camera.ended, timeout=60)
    finally:
        running.stop()
    decided = [(e["type"], e.get("person"), e.get("distance")) for e in daemon.recent_events
               if e["type"] in ("recognized", "unknown", "denied")]
    assert decided and decided[0][:2] == ("recognized", "biden"), decided
    assert sub.wait_for(lambda m: any(t.endswith("/event/recognized") for _, t, _, _ in m), timeout=10)
    assert [json.loads(p)["person"] for p in sub.on("/event/recognized")] == ["biden"]
    assert sub.on("/event/unknown") == []
    sub.close()


def test_off_by_default_keeps_nothing(tmp_path: Path, broker: Broker, pins: MockFactory,
                                      fr_images: dict[str, Path], real_config) -> None:
    frames = scene(tmp_path / "frames", [fr_images["biden"]])
    config = real_config(frames, camera={"image_hold_s": 4.0})
    assert config.unknown_faces.enabled is False
    unknown, _ = run_stranger(tmp_path, broker, pins, frames, config)
    assert len(unknown) == 1 and "crop" not in unknown[0]
    assert not (tmp_path / "unknown_faces").exists()
    assert [p for p in tmp_path.rglob("*.jpg") if p.parent != frames] == []  # only the scene's own photo


def _photo(fr_images: dict[str, Path]) -> np.ndarray:
    return load_image(fr_images["biden"])


def test_retention_by_age_and_size(tmp_path: Path, fr_images: dict[str, Path]) -> None:
    image = _photo(fr_images)
    box = (100.0, 80.0, 120.0, 140.0)
    store = UnknownFaceStore(tmp_path / "crops", max_days=2.0)
    old = store.save("old-1", image, box)
    now = time.time()
    os.utime(old, (now - 3 * 86400, now - 3 * 86400))
    recent = store.save("recent-1", image, box)
    os.utime(recent, (now - 1 * 86400, now - 1 * 86400))
    store.save("new-1", image, box)  # each write enforces the limits
    assert [c.id for c in store.crops()] == ["recent-1", "new-1"]

    one = recent.stat().st_size
    capped = UnknownFaceStore(tmp_path / "capped", max_mb=2.5 * one / (1024 * 1024))
    for i in range(4):
        path = capped.save(f"c{i}", image, box)
        os.utime(path, (now + i, now + i))  # distinct, increasing times: oldest is c0
    assert [c.id for c in capped.crops()] == ["c2", "c3"]  # oldest deleted first, total under the cap
    assert sum(c.size for c in capped.crops()) <= capped.max_mb * 1024 * 1024

    tiny = UnknownFaceStore(tmp_path / "tiny", max_mb=1e-6)  # a cap below one crop still keeps the latest
    tiny.save("a", image, box)
    tiny.save("b", image, box)
    assert [c.id for c in tiny.crops()] == ["b"]


def test_crop_is_the_face_with_a_margin(fr_images: dict[str, Path]) -> None:
    image = _photo(fr_images)
    crop = face_crop(image, (100.0, 80.0, 40.0, 60.0))
    assert crop.shape[:2] == (120, 80)
    edge = face_crop(image, (0.0, 0.0, 40.0, 40.0))  # clipped at the frame, never padded with invented pixels
    assert edge.shape[:2] == (60, 60)
    with pytest.raises(ValueError):
        face_crop(image, (5000.0, 5000.0, 10.0, 10.0))


def test_cli_purge_and_bad_input(tmp_path: Path, fr_images: dict[str, Path], facenet_model: Path,
                                 mtcnn_dir: Path) -> None:
    image = _photo(fr_images)
    store = UnknownFaceStore(tmp_path / "crops")
    for crop_id in ("aaa", "bbb", "ccc"):
        store.save(crop_id, image, (100.0, 80.0, 120.0, 140.0))
    folder = str(store.directory)

    missing = cli("--dir", folder, "show", "nope")
    assert missing.returncode == 2 and "no unknown-face crop 'nope'" in missing.stderr
    traversal = cli("--dir", folder, "show", "../crops/aaa")
    assert traversal.returncode == 2 and "not a crop id" in traversal.stderr
    partly = cli("--dir", folder, "purge", "aaa", "nope")
    assert partly.returncode == 2 and len(store.crops()) == 3  # nothing deleted when one id is wrong

    one = cli("--dir", folder, "purge", "aaa")
    assert one.returncode == 0 and [c.id for c in store.crops()] == ["bbb", "ccc"]

    (store.directory / "bad.jpg").write_bytes(b"\xff\xd8 this is no jpeg")
    corrupt = cli("--dir", folder, "show", "bad")
    assert corrupt.returncode == 2 and "not a readable image" in corrupt.stderr
    gallery = tmp_path / "gallery.db"
    enroll_args = ["--gallery", str(gallery), "--model", str(facenet_model), "--mtcnn-dir", str(mtcnn_dir), "add",
                   "someone", "--unknown-dir", folder, "--from-unknown"]
    corrupt = enroll_cli(*enroll_args, "bad")
    assert corrupt.returncode == 2 and "not a readable image" in corrupt.stderr
    unknown = enroll_cli(*enroll_args, "nope")
    assert unknown.returncode == 2 and "no unknown-face crop 'nope'" in unknown.stderr
    assert (store.directory / "bad.jpg").exists() and len(store.crops()) == 3  # failures delete nothing

    everything = cli("--dir", folder, "purge")
    assert everything.returncode == 0 and "deleted 3 crop(s)" in everything.stdout
    assert cli("--dir", folder, "list").stdout == ""
    assert cli("--dir", str(tmp_path / "absent"), "list").returncode == 2


def test_config_validates_unknown_faces() -> None:
    from edge.config import config_from_dict
    from edge.errors import ConfigError

    config = config_from_dict({"queue": {"path": "/srv/q/events.db"}})
    assert config.unknown_faces.resolved_path(config.queue.path) == Path("/srv/q/unknown_faces")
    with pytest.raises(ConfigError, match="unknown_faces.max_mb: must be > 0"):
        config_from_dict({"unknown_faces": {"max_mb": 0}})
    with pytest.raises(ConfigError, match="unknown_faces.enabled: must be true or false"):
        config_from_dict({"unknown_faces": {"enabled": "yes"}})

