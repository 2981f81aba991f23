"""Home Assistant MQTT discovery: retained config messages that make the door appear in HA by itself.

HA reads `<discovery_prefix>/<component>/<node_id>/<object_id>/config` and builds entities that read the
daemon's own topics, so nothing new is published for state: the lock follows the retained door topic,
the sensors follow the face events, availability follows the retained last-will topic.

Unlocking from HA: HA cannot compute the HMAC that the command path requires, so HA gets its own topic
`<prefix>/<device_id>/ha/lock/set` that the daemon only listens to when `homeassistant.unlock_command`
is true (off by default; the broker's ACLs must let only HA publish there). `UNLOCK` is the same timed
pulse as a face (`relay.unlock_s`), `LOCK` only ends a pulse early, anything else is ignored.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable
from typing import Any

from edge import __version__
from edge.config import Config
from edge.events import Topics

log = logging.getLogger("edge.ha")

PAYLOAD_LOCK = "LOCK"
PAYLOAD_UNLOCK = "UNLOCK"
_ID_RE = re.compile(r"[^a-zA-Z0-9_-]")  # HA's node_id / object_id alphabet


def node_id(device_id: str) -> str:
    """device_id in the characters HA accepts in a discovery topic (a '.' becomes '_')."""
    return _ID_RE.sub("_", device_id)


def ha_command_topic(topics: Topics) -> str:
    """The HA-only lock command topic (acted on only with homeassistant.unlock_command: true)."""
    return f"{topics.base}/ha/lock/set"


def device_block(config: Config) -> dict[str, Any]:
    """The shared `device` block: groups the entities under one device in HA."""
    return {"identifiers": [f"edge-face-{config.device_id}"], "name": f"Door {config.device_id}",
            "model": "edge-face door controller", "manufacturer": "edge-face-access", "sw_version": __version__}


def _common(config: Config, topics: Topics, object_id: str, name: str) -> dict[str, Any]:
    return {
        "name": name,
        "unique_id": f"edge_face_{node_id(config.device_id)}_{object_id}",
        "availability_topic": topics.availability,
        "payload_available": "online",
        "payload_not_available": "offline",
        "device": device_block(config),
        "origin": {"name": "edge-face-access", "sw_version": __version__},
        "qos": 1,
    }


def discovery_payloads(config: Config) -> dict[str, dict[str, Any]]:
    """{config topic: payload} for the lock and the three sensors; pure, so tests check it directly."""
    topics = Topics(config.mqtt.topic_prefix, config.device_id)
    prefix, node = config.homeassistant.discovery_prefix, node_id(config.device_id)

    def topic(component: str, object_id: str) -> str:
        return f"{prefix}/{component}/{node}/{object_id}/config"

    lock = _common(config, topics, "door_lock", "Door")
    lock.update({
        "state_topic": topics.door,
        "value_template": "{{ value_json.lock }}",
        "state_locked": "locked",
        "state_unlocked": "unlocked",
        "command_topic": ha_command_topic(topics),
        "payload_lock": PAYLOAD_LOCK,
        "payload_unlock": PAYLOAD_UNLOCK,
        "optimistic": False,
        "retain": False,
        "json_attributes_topic": topics.door,
        "json_attributes_template": "{{ {'door': value_json.door, 'reason': value_json.reason} | tojson }}",
        "icon": "mdi:door",
    })
    person = _common(config, topics, "last_recognized", "Last recognized person")
    person.update({
        "state_topic": topics.recognized,
        "value_template": "{{ value_json.person }}",
        "json_attributes_topic": topics.recognized,
        "json_attributes_template": ("{{ {'time': value_json.time, 'distance': value_json.distance, "
                                     "'camera': value_json.camera} | tojson }}"),
        "icon": "mdi:account-check",
    })
    person_time = _common(config, topics, "last_recognized_time", "Last recognized time")
    person_time.update({
        "state_topic": topics.recognized,
        "value_template": "{{ value_json.time }}",
        "device_class": "timestamp",
    })
    unknown = _common(config, topics, "last_unknown_time", "Last unknown face")
    unknown.update({
        "state_topic": topics.unknown,
        "value_template": "{{ value_json.time }}",
        "device_class": "timestamp",
        "icon": "mdi:account-question",
    })
    return {
        topic("lock", "door_lock"): lock,
        topic("sensor", "last_recognized"): person,
        topic("sensor", "last_recognized_time"): person_time,
        topic("sensor", "last_unknown_time"): unknown,
    }


def publish_discovery(client: Any, config: Config) -> int:
    """Publish every discovery message retained (QoS 1) on `client`; called on each (re)connect."""
    payloads = discovery_payloads(config)
    for topic, payload in payloads.items():
        client.publish(topic, json.dumps(payload, separators=(",", ":")).encode(), qos=1, retain=True)
    return len(payloads)


class HaLockCommands:
    """Handles the HA-only lock topic: UNLOCK is one timed pulse, LOCK ends it, the rest is ignored."""

    def __init__(self, unlock: Callable[[], None], lock: Callable[[], None]) -> None:
        self._unlock = unlock
        self._lock = lock
        self.accepted = 0
        self.ignored = 0

    def handle(self, raw: bytes) -> None:
        try:
            text = raw.decode("ascii").strip()
        except UnicodeDecodeError:
            text = None
        if text == PAYLOAD_UNLOCK:
            self.accepted += 1
            log.info("Home Assistant: unlock (one timed pulse)")
            self._unlock()
        elif text == PAYLOAD_LOCK:
            self.accepted += 1
            log.info("Home Assistant: lock")
            self._lock()
        else:
            self.ignored += 1
            log.warning("Home Assistant lock command ignored: %r", raw[:64])
