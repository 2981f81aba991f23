"""The access log through its real interfaces: the CLI in a subprocess, and a daemon run with a real broker."""

from __future__ import annotations

import csv
import json
import stat
import subprocess
import sys
import time
from pathlib import Path

import paho.mqtt.publish as mqtt_publish
from daemon_support import DEVICE, SECRET, BlankScene, Running, blank_frames, make_config, scene
from gpiozero.pins.mock import MockFactory
from mosquitto import Broker, Subscriber

from edge.access_log import AccessLog
from edge.commands import sign_command
from edge.daemon import Daemon, default_recognizer
from edge.events import Topics

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edge.access_log", *args], cwd=REPO, capture_output=True,
                          text=True, timeout=60)


def sample_log(path: Path) -> None:
    log = AccessLog(path)
    log.append("unlock", "unlocked", person="alice", distance=0.61, when="2026-05-01T08:00:00.000Z")
    log.append("unknown", "refused", distance=1.4, when="2026-05-01T09:30:00.000Z")
    log.append("unlock", "unlocked", person="bob", distance=0.7, when="2026-05-02T08:00:00.000Z")
    log.append("denied", "refused", person="alice", distance=0.65, detail="outside schedule",
               when="2026-05-03T23:00:00.000Z")
    log.append("command", "accepted", detail="unlock", when="2026-05-04T12:00:00.000Z")
    log.close()


def listed(result: subprocess.CompletedProcess[str]) -> list[list[str]]:
    assert result.returncode == 0, result.stderr
    return [line.split() for line in result.stdout.splitlines()]


def test_cli_lists_and_filters(tmp_path: Path) -> None:
    db = tmp_path / "access.db"
    sample_log(db)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    every = listed(cli("--db", str(db), "list"))
    assert [row[1] for row in every] == ["unlock", "unknown", "unlock", "denied", "command"]
    alice = listed(cli("--db", str(db), "list", "--person", "alice"))
    assert [(row[1], row[3]) for row in alice] == [("unlock", "alice"), ("denied", "alice")]
    window = listed(cli("--db", str(db), "list", "--since", "2026-05-01T09:00:00Z", "--until", "2026-05-03"))
    assert [row[0] for row in window] == ["2026-05-01T09:30:00.000Z", "2026-05-02T08:00:00.000Z"]
    # A zone in the filter is honoured: 10:00+02:00 is 08:00Z, so bob's entry is included.
    zoned = listed(cli("--db", str(db), "list", "--since", "2026-05-02T10:00:00+02:00", "--kind", "unlock"))
    assert [row[3] for row in zoned] == ["bob"]


def test_cli_exports_csv_with_the_same_filters(tmp_path: Path) -> None:
    db = tmp_path / "access.db"
    sample_log(db)
    out = tmp_path / "visits.csv"
    result = cli("--db", str(db), "export", "--csv", str(out), "--kind", "unlock")
    assert result.returncode == 0, result.stderr
    assert "2 entries written" in result.stderr
    rows = list(csv.DictReader(out.open(newline="")))
    assert [r["person"] for r in rows] == ["alice", "bob"]
    assert rows[0]["time"] == "2026-05-01T08:00:00.000Z" and float(rows[0]["distance"]) == 0.61
    assert set(rows[0]) == {"time", "kind", "person", "result", "distance", "detail", "event_id"}


def test_cli_refuses_bad_input_with_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "access.db"
    sample_log(db)
    bad_date = cli("--db", str(db), "list", "--since", "yesterday")
    assert bad_date.returncode == 2 and "--since: not an ISO 8601 date" in bad_date.stderr
    backwards = cli("--db", str(db), "list", "--since", "2026-05-03", "--until", "2026-05-01")
    assert backwards.returncode == 2 and "--until: must be after --since" in backwards.stderr
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not SQLite" * 100)
    broken = cli("--db", str(corrupt), "list")
    assert broken.returncode == 2 and "not a usable access log" in broken.stderr
    missing = cli("--db", str(tmp_path / "nope.db"), "export", "--csv", str(tmp_path / "x.csv"))
    assert missing.returncode == 2 and "no such access log" in missing.stderr
    assert not (tmp_path / "nope.db").exists() and not (tmp_path / "x.csv").exists()
    unwritable = cli("--db", str(db), "export", "--csv", str(tmp_path / "no" / "dir" / "x.csv"))
    assert unwritable.returncode == 2 and "cannot write" in unwritable.stderr


def test_retention_by_rows_and_by_age(tmp_path: Path) -> None:
    by_rows = AccessLog(tmp_path / "rows.db", max_rows=3)
    for i in range(5):
        by_rows.append("unlock", "unlocked", person=f"p{i}")
    assert [e.person for e in by_rows.query()] == ["p2", "p3", "p4"]
    by_rows.close()
    by_age = AccessLog(tmp_path / "age.db", max_days=30)
    by_age.append("unlock", "unlocked", person="old", when="2020-01-01T00:00:00Z")
    by_age.append("unlock", "unlocked", person="new")
    assert [e.person for e in by_age.query()] == ["new"]
    by_age.close()


def test_daemon_logs_recognized_and_unknown(tmp_path: Path, broker: Broker, pins: MockFactory,
                                            fr_images: dict[str, Path], real_config) -> None:
    frames = scene(tmp_path / "frames", [fr_images["obama2"], fr_images["biden"]])
    config = real_config(frames, camera={"image_hold_s": 3.0})
    daemon = Daemon(config, default_recognizer, pin_factory=pins)
    running = Running(daemon)
    try:
        assert running.wait(lambda: daemon.camera.ended, timeout=90), "the scene never ended"
    finally:
        running.stop()
    db = tmp_path / "access.db"  # the default: beside the queue (make_config puts it in tmp_path)
    assert stat.S_IMODE(db.stat().st_mode) == 0o600
    rows = listed(cli("--db", str(db), "list"))
    assert [(row[1], row[2], row[3]) for row in rows] == [("unlock", "unlocked", "obama"),
                                                         ("unknown", "refused", "-")], rows
    ids = {e["id"] for e in daemon.recent_events if e["type"] in ("recognized", "unknown")}
    out = tmp_path / "log.csv"
    assert cli("--db", str(db), "export", "--csv", str(out)).returncode == 0
    assert {r["event_id"] for r in csv.DictReader(out.open(newline=""))} == ids


def test_daemon_logs_commands_and_reloads(tmp_path: Path, broker: Broker, pins: MockFactory) -> None:
    frames = blank_frames(tmp_path / "frames")
    db = tmp_path / "log" / "door-access.db"
    config = make_config(tmp_path, broker, frames, camera={"loop": True},
                         commands={"enabled": True, "secret": SECRET}, access_log={"path": str(db)})
    sub = Subscriber(broker, "test/#")
    daemon = Daemon(config, lambda c: BlankScene(), pin_factory=pins)
    running = Running(daemon)
    topic = Topics("test", DEVICE).command
    try:
        assert running.wait(lambda: daemon.mqtt.connected.is_set(), timeout=30)
        time.sleep(0.5)
        good = sign_command(SECRET.encode(), DEVICE, "unlock", {"duration_s": 1})
        forged = sign_command(b"wrong-secret-0123456789", DEVICE, "unlock", {})
        for payload in (good, forged):
            mqtt_publish.single(topic, payload, qos=1, hostname=broker.host, port=broker.port)
        assert running.wait(lambda: daemon.stats["commands_rejected"] == 1 and daemon.stats["commands_accepted"] == 1)
        daemon.request_reload()
        assert running.wait(lambda: any(json.loads(p).get("state") == "reloaded" for p in sub.on("/status")))
    finally:
        running.stop()
        sub.close()
    rows = listed(cli("--db", str(db), "list", "--kind", "command")) + listed(cli("--db", str(db), "list",
                                                                                  "--kind", "reload"))
    assert sorted((row[1], row[2]) for row in rows) == [("command", "accepted"), ("command", "rejected"),
                                                        ("reload", "done")], rows
