"""Config validation: the shipped file is valid and documents every option; bad values name their key."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from edge.config import Config, config_from_dict, iter_fields, load_config
from edge.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "config.yaml"


def test_shipped_config_is_valid_and_matches_defaults() -> None:
    assert load_config(SHIPPED) == Config()


def test_shipped_config_lists_every_option_with_a_comment() -> None:
    data = yaml.safe_load(SHIPPED.read_text())
    lines = SHIPPED.read_text().splitlines()
    for key, fdef in iter_fields():
        node = data
        for part in key.split("."):
            assert part in node, f"config.yaml lacks {key}"
            node = node[part]
        assert fdef.metadata["title"] and fdef.metadata["description"], key
        leaf = key.split(".")[-1]
        index = next(i for i, line in enumerate(lines) if line.strip().startswith(f"{leaf}:"))
        above = [line.strip() for line in lines[max(0, index - 12):index]]
        assert any(line.startswith("#") for line in above), f"{key} has no comment above it"


def test_required_outside_keys_exist() -> None:
    config = Config()
    for key in ("device_id", "camera.source", "gallery.path", "model.path", "mqtt.host", "mqtt.port",
                "mqtt.topic_prefix", "relay.pin"):
        obj = config
        for part in key.split("."):
            obj = getattr(obj, part)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"mqtt": {"port": "abc"}}, "mqtt.port: must be an integer, got 'abc'"),
        ({"mqtt": {"port": 70000}}, "mqtt.port: must be an integer 1-65535, got 70000"),
        ({"mqtt": {"prot": 1883}}, "mqtt.prot: unknown key"),
        ({"bogus": 1}, "bogus: unknown key"),
        ({"relay": {"unlock_s": -1}}, "relay.unlock_s: must be > 0"),
        ({"relay": {"active_high": "yes"}}, "relay.active_high: must be true or false"),
        ({"relay": {"pin": 99}}, "relay.pin: must be a GPIO number 0-63"),
        ({"decision": {"votes_k": 4, "votes_n": 3}}, "decision.votes_k: must be <= decision.votes_n"),
        ({"decision": {"schedules": {"Ann": [{"days": ["mon", "funday"]}]}}}, "decision.schedules.Ann[0].days"),
        ({"decision": {"schedules": {"Ann": [{"start": "25:00"}]}}}, "decision.schedules.Ann[0].start"),
        ({"decision": {"timezone": "Mars/Olympus"}}, "decision.timezone: unknown time zone"),
        ({"mqtt": {"topic_prefix": "a/#"}}, "mqtt.topic_prefix: must be a non-empty MQTT topic"),
        ({"mqtt": {"tls": {"enabled": True, "ca_file": "/nonexistent.pem"}}}, "mqtt.tls.ca_file: no such file"),
        ({"commands": {"enabled": True}}, "commands.secret: required"),
        ({"commands": {"enabled": True, "secret": "short"}}, "commands.secret: must be at least 16"),
        ({"device_id": "door one"}, "device_id: must be 1-64 characters"),
        ({"camera": "front"}, "camera: must be a mapping"),
        ({"logging": {"level": "LOUD"}}, "logging.level: must be one of"),
        ({"model": {"threshold": 9}}, "model.threshold: must be an L2 distance"),
        ({"queue": {"max_events": 0}}, "queue.max_events: must be > 0"),
        ([1, 2], "config: must be a mapping"),
    ],
)
def test_bad_values_name_the_key(data: object, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        config_from_dict(data)
    assert message in str(info.value)


def test_types_are_converted() -> None:
    config = config_from_dict({"camera": {"source": "/dev/video0", "fps": 5}, "relay": {"pin": "GPIO22"}})
    assert config.camera.source == "/dev/video0" and config.camera.fps == 5.0 and isinstance(config.camera.fps, float)
    assert config.relay.pin == "GPIO22"
    assert config_from_dict(None) == Config()


def test_load_config_errors_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("mqtt: {port: [1\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_daemon_refuses_a_bad_config_with_exit_status(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text("device_id: door-1\nmqtt:\n  port: abc\n")
    result = subprocess.run([sys.executable, "-m", "edge.daemon", "--config", str(bad)], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "mqtt.port: must be an integer" in result.stderr and "abc" in result.stderr
    good = subprocess.run([sys.executable, "-m", "edge.daemon", "--config", str(SHIPPED), "--check-config"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert good.returncode == 0, good.stderr


def test_secrets_stay_out_of_the_config_repr() -> None:
    config = config_from_dict({"mqtt": {"username": "door", "password": "hunter2-broker"},
                               "commands": {"enabled": True, "secret": "s3cret-command-key-123"}})
    text = repr(config)
    assert "hunter2-broker" not in text and "s3cret-command-key-123" not in text
    assert "door" in text  # the rest is still there


def test_stream_password_is_redacted_for_logs_and_events() -> None:
    from edge.camera import OpenCVSource, redact_url

    assert redact_url("rtsp://admin:pa55@cam.local:554/stream1") == "rtsp://admin:***@cam.local:554/stream1"
    assert redact_url("rtsp://cam.local/stream") == "rtsp://cam.local/stream"
    assert redact_url(0) == "0"
    assert "pa55" not in OpenCVSource("rtsp://admin:pa55@127.0.0.1:9/x").name
