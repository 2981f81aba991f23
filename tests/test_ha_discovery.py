"""Home Assistant MQTT discovery: payloads against HA's documented schema, and through a real broker.

The schema below is encoded from the Home Assistant docs (integrations/lock.mqtt, sensor.mqtt and the
"MQTT Discovery" page): keys each platform accepts, their types, and the required ones. A payload with
a misspelt or unknown key is ignored (with a log line) by HA, so unknown keys fail this test.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from typing import Any

import paho.mqtt.publish as mqtt_publish
import pytest
from daemon_support import DEVICE, BlankScene, Running, blank_frames, make_config
from gpiozero.pins.mock import MockFactory
from mosquitto import Broker, Subscriber
from test_relay import PinRecorder

from edge.config import Config, config_from_dict
from edge.daemon import Daemon
from edge.decision import Decision
from edge.errors import ConfigError
from edge.events import Topics, door_event, face_event
from edge.ha_discovery import HaLockCommands, discovery_payloads, ha_command_topic, node_id

# --- the schema, from the Home Assistant docs --------------------------------------------------------------

STR, BOOL, INT, DICT, LIST = str, bool, int, dict, list
# Keys every MQTT entity platform accepts (availability, device, entity options, JSON attributes).
COMMON: dict[str, type | tuple[type, ...]] = {
    "name": (STR, type(None)), "unique_id": STR, "object_id": STR, "default_entity_id": STR, "icon": STR,
    "availability_topic": STR, "payload_available": STR, "payload_not_available": STR,
    "availability": LIST, "availability_mode": STR, "availability_template": STR, "device": DICT,
    "origin": DICT, "enabled_by_default": BOOL, "entity_category": STR, "entity_picture": STR,
    "encoding": STR, "json_attributes_topic": STR, "json_attributes_template": STR, "qos": INT,
}
PLATFORMS: dict[str, dict[str, Any]] = {
    "lock": {
        "required": {"command_topic"},
        "keys": {**COMMON, "command_topic": STR, "command_template": STR, "state_topic": STR,
                 "value_template": STR, "state_locked": STR, "state_unlocked": STR, "state_locking": STR,
                 "state_unlocking": STR, "state_jammed": STR, "state_open": STR, "state_opening": STR,
                 "payload_lock": STR, "payload_unlock": STR, "payload_open": STR, "payload_reset": STR,
                 "code_format": STR, "optimistic": BOOL, "retain": BOOL, "platform": STR},
    },
    "sensor": {
        "required": {"state_topic"},
        "keys": {**COMMON, "state_topic": STR, "value_template": STR, "device_class": STR, "state_class": STR,
                 "unit_of_measurement": STR, "expire_after": INT, "force_update": BOOL,
                 "last_reset_value_template": STR, "suggested_display_precision": INT, "options": LIST,
                 "platform": STR},
    },
}
DEVICE_KEYS = {"identifiers": LIST, "connections": LIST, "name": STR, "model": STR, "model_id": STR,
               "manufacturer": STR, "sw_version": STR, "hw_version": STR, "serial_number": STR,
               "suggested_area": STR, "configuration_url": STR, "via_device": STR}
ORIGIN_KEYS = {"name": STR, "sw_version": STR, "support_url": STR}
SENSOR_DEVICE_CLASSES = {"timestamp", "date", "duration", "enum"}  # the ones that fit these sensors
TOPIC_RE = re.compile(r"^(?P<prefix>[^#+]+)/(?P<component>[a-z_]+)/(?P<node>[a-zA-Z0-9_-]+)/"
                      r"(?P<object>[a-zA-Z0-9_-]+)/config$")


def check_payload(component: str, payload: dict[str, Any]) -> list[str]:
    """Every way `payload` breaks HA's schema for `component` (empty list: valid)."""
    problems = []
    spec = PLATFORMS[component]
    for key in spec["required"] - set(payload):
        problems.append(f"missing required {key}")
    for key, value in payload.items():
        allowed = spec["keys"].get(key)
        if allowed is None:
            problems.append(f"unknown key {key}")
        elif not isinstance(value, allowed) or (allowed is INT and isinstance(value, bool)):
            problems.append(f"{key}: wrong type {type(value).__name__}")
    device = payload.get("device", {})
    for key, value in device.items():
        if key not in DEVICE_KEYS or not isinstance(value, DEVICE_KEYS[key]):
            problems.append(f"device.{key}: unknown or wrong type")
    if not (device.get("identifiers") or device.get("connections")):
        problems.append("device needs identifiers or connections")
    for key, value in payload.get("origin", {}).items():
        if key not in ORIGIN_KEYS or not isinstance(value, ORIGIN_KEYS[key]):
            problems.append(f"origin.{key}: unknown or wrong type")
    if "origin" in payload and "name" not in payload["origin"]:
        problems.append("origin.name is required")
    if payload.get("qos", 0) not in (0, 1, 2):
        problems.append("qos must be 0, 1 or 2")
    if component == "sensor" and "device_class" in payload and payload["device_class"] not in SENSOR_DEVICE_CLASSES:
        problems.append(f"unexpected device_class {payload['device_class']}")
    if "availability_topic" in payload and "availability" in payload:
        problems.append("availability and availability_topic are mutually exclusive")
    return problems


def render_field(template: str, message: dict[str, Any]) -> Any:
    """Evaluate the `{{ value_json.KEY }}` templates used here against a real event (no Jinja needed)."""
    match = re.fullmatch(r"\{\{ value_json\.(\w+) \}\}", template)
    assert match, f"template {template!r} is not a plain value_json lookup"
    assert match.group(1) in message, f"{match.group(1)} not in {sorted(message)}"
    return message[match.group(1)]


def config(**ha: Any) -> Config:
    return config_from_dict({"device_id": "door.1", "mqtt": {"topic_prefix": "site/edge"}, "homeassistant": ha})


# --- payloads ---------------------------------------------------------------------------------------------


def test_every_payload_matches_the_documented_schema() -> None:
    payloads = discovery_payloads(config())
    components = []
    for topic, payload in payloads.items():
        match = TOPIC_RE.match(topic)
        assert match, topic
        assert match["prefix"] == "homeassistant" and match["node"] == "door_1"
        components.append(match["component"])
        assert check_payload(match["component"], payload) == [], (topic, check_payload(match["component"], payload))
        assert payload["availability_topic"] == "site/edge/door.1/availability"
        assert (payload["payload_available"], payload["payload_not_available"]) == ("online", "offline")
        assert payload["device"]["identifiers"] == ["edge-face-door.1"]
        assert {"name", "model", "sw_version"} <= set(payload["device"])
    assert sorted(components) == ["lock", "sensor", "sensor", "sensor"]
    unique = [p["unique_id"] for p in payloads.values()]
    assert len(set(unique)) == len(unique)
    assert len({json.dumps(p["device"], sort_keys=True) for p in payloads.values()}) == 1


def test_schema_check_catches_broken_payloads() -> None:
    good = next(p for t, p in discovery_payloads(config()).items() if "/lock/" in t)
    assert check_payload("lock", good) == []
    assert "missing required command_topic" in check_payload("lock", {k: v for k, v in good.items()
                                                                      if k != "command_topic"})
    assert "unknown key stat_topic" in check_payload("lock", {**good, "stat_topic": "x"})
    assert "qos: wrong type str" in check_payload("lock", {**good, "qos": "1"})
    assert check_payload("lock", {**good, "device": {"name": "x"}}) == ["device needs identifiers or connections"]


def test_templates_read_the_daemons_real_events() -> None:
    cfg = config()
    topics = Topics(cfg.mqtt.topic_prefix, cfg.device_id)
    payloads = {t.split("/")[-2]: p for t, p in discovery_payloads(cfg).items()}
    lock = payloads["door_lock"]
    assert lock["state_topic"] == topics.door and lock["command_topic"] == ha_command_topic(topics)
    for state in ("locked", "unlocked"):
        value = render_field(lock["value_template"], door_event(cfg.device_id, state, "closed", "test"))
        assert value == lock[f"state_{state}"]
    seen = Decision("unlock", "alice", 0.5, (1, 2, 3, 4), 2, 3, 2)
    recognized = face_event(seen, cfg.device_id, "door", "facenet-x", unlock_s=3.0)
    assert payloads["last_recognized"]["state_topic"] == topics.recognized
    assert render_field(payloads["last_recognized"]["value_template"], recognized) == "alice"
    assert payloads["last_recognized_time"]["device_class"] == "timestamp"
    assert render_field(payloads["last_recognized_time"]["value_template"], recognized).endswith("Z")
    stranger = face_event(Decision("unknown", None, 1.2, (1, 2, 3, 4), 2, 3, 2), cfg.device_id, "door", "m")
    assert payloads["last_unknown_time"]["state_topic"] == topics.unknown
    assert payloads["last_unknown_time"]["device_class"] == "timestamp"
    assert render_field(payloads["last_unknown_time"]["value_template"], stranger) == stranger["time"]


def test_config_defaults_and_validation() -> None:
    assert Config().homeassistant.enabled and Config().homeassistant.discovery_prefix == "homeassistant"
    assert not Config().homeassistant.unlock_command
    custom = discovery_payloads(config(discovery_prefix="ha/disc"))
    assert all(t.startswith("ha/disc/") for t in custom)
    for bad, key in (({"discovery_prefix": "home/#"}, "homeassistant.discovery_prefix"),
                     ({"enabled": "yes"}, "homeassistant.enabled"), ({"lock": True}, "homeassistant.lock")):
        with pytest.raises(ConfigError, match=re.escape(key)):
            config(**bad)
    assert node_id("door.1 a") == "door_1_a"


def test_ha_lock_handler_accepts_only_exact_payloads() -> None:
    calls: list[str] = []
    handler = HaLockCommands(lambda: calls.append("unlock"), lambda: calls.append("lock"))
    for raw in (b"unlock", b"UNLOCK please", b"\xff\xfe", b"", b'{"state":"UNLOCK"}', b"OPEN"):
        handler.handle(raw)
    assert calls == [] and handler.ignored == 6
    handler.handle(b"UNLOCK")
    handler.handle(b"LOCK\n")
    assert calls == ["unlock", "lock"] and handler.accepted == 2


# --- through a real broker ---------------------------------------------------------------------------------


def _discovery(sub: Subscriber) -> dict[str, tuple[dict[str, Any], bool]]:
    with sub.cond:
        return {t: (json.loads(p), r) for _, t, p, r in sub.messages if t.startswith("homeassistant/")}


def test_daemon_publishes_retained_discovery(tmp_path: Path, broker: Broker, pins: MockFactory) -> None:
    cfg = make_config(tmp_path, broker, blank_frames(tmp_path / "frames"), camera={"loop": True})
    daemon = Daemon(cfg, lambda c: BlankScene(), pin_factory=pins)
    running = Running(daemon)
    try:
        assert running.wait(lambda: daemon.mqtt.connected.is_set(), timeout=20)
        # A subscriber arriving later (HA starting after the daemon) gets them as retained messages.
        sub = Subscriber(broker, "homeassistant/#", client_id="ha-late")
        assert sub.wait_for(lambda m: len({t for _, t, _, _ in m}) >= 4, timeout=10)
    finally:
        running.stop()
    received = _discovery(sub)
    assert set(received) == set(discovery_payloads(cfg))
    for topic, (payload, retained) in received.items():
        assert retained, topic
        component = TOPIC_RE.match(topic)["component"]  # type: ignore[index]
        assert check_payload(component, payload) == []
        assert payload["availability_topic"] == Topics("test", DEVICE).availability
    sub.close()


def test_discovery_off_publishes_nothing(tmp_path: Path, broker: Broker, pins: MockFactory) -> None:
    cfg = make_config(tmp_path, broker, blank_frames(tmp_path / "frames"), camera={"loop": True},
                      homeassistant={"enabled": False})
    sub = Subscriber(broker, "#", client_id="ha-off")
    daemon = Daemon(cfg, lambda c: BlankScene(), pin_factory=pins)
    running = Running(daemon)
    try:
        assert sub.wait_for(lambda m: any(p == b"online" for _, _, p, _ in m), timeout=20)
        assert sub.wait_for(lambda m: any(t.endswith("/door") for _, t, _, _ in m), timeout=10)
        time.sleep(1.0)
    finally:
        running.stop()
    assert _discovery(sub) == {}
    sub.close()


def test_ha_unlock_topic_pulses_once_and_ignores_malformed(
        tmp_path: Path, broker: Broker, pins: MockFactory) -> None:
    cfg = make_config(tmp_path, broker, blank_frames(tmp_path / "frames"), camera={"loop": True},
                      relay={"unlock_s": 0.4}, homeassistant={"unlock_command": True})
    topic = ha_command_topic(Topics("test", DEVICE))
    daemon = Daemon(cfg, lambda c: BlankScene(), pin_factory=pins)
    recorder = PinRecorder(pins.pin(17))
    running = Running(daemon)
    assert daemon.ha_lock is not None
    try:
        assert running.wait(lambda: daemon.mqtt.connected.is_set(), timeout=20)
        time.sleep(0.3)
        for raw in (b"unlock", b"\x00garbage", b'{"command":"unlock"}', b"UNLOCK" * 100, b""):
            mqtt_publish.single(topic, raw, qos=1, hostname=broker.host, port=broker.port)
        assert running.wait(lambda: daemon.ha_lock.ignored == 5, timeout=10)
        assert pins.pin(17).state == 0 and recorder.pulses() == []
        mqtt_publish.single(topic, b"UNLOCK", qos=1, hostname=broker.host, port=broker.port)
        assert running.wait(lambda: daemon.ha_lock.accepted == 1, timeout=10)
        time.sleep(0.8)  # the pulse ends by itself
        assert pins.pin(17).state == 0
        # LOCK ends a running pulse early, and on a locked door does nothing.
        mqtt_publish.single(topic, b"UNLOCK", qos=1, hostname=broker.host, port=broker.port)
        assert running.wait(lambda: pins.pin(17).state == 1, timeout=10)
        mqtt_publish.single(topic, b"LOCK", qos=1, hostname=broker.host, port=broker.port)
        assert running.wait(lambda: daemon.ha_lock.accepted == 3 and pins.pin(17).state == 0, timeout=10)
    finally:
        running.stop()
        recorder.close()
    pulses = recorder.pulses()
    assert len(pulses) == 2 and 0.35 <= pulses[0] <= 0.7 and pulses[1] < 0.35, pulses


def test_ha_unlock_topic_is_ignored_unless_configured(
        tmp_path: Path, broker: Broker, pins: MockFactory) -> None:
    cfg = make_config(tmp_path, broker, blank_frames(tmp_path / "frames"), camera={"loop": True},
                      relay={"unlock_s": 0.4})
    daemon = Daemon(cfg, lambda c: BlankScene(), pin_factory=pins)
    recorder = PinRecorder(pins.pin(17))
    running = Running(daemon)
    try:
        assert running.wait(lambda: daemon.mqtt.connected.is_set(), timeout=20)
        time.sleep(0.3)
        mqtt_publish.single(ha_command_topic(Topics("test", DEVICE)), b"UNLOCK", qos=1, hostname=broker.host,
                            port=broker.port)
        time.sleep(1.0)
    finally:
        running.stop()
        recorder.close()
    assert daemon.ha_lock is None and recorder.pulses() == []
