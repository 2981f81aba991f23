"""MQTT link and on-disk queue against a real Mosquitto broker that the tests stop and restart."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from mosquitto import Broker, Subscriber, broker  # noqa: F401  (fixture)

from edge.config import MqttConfig
from edge.event_queue import EventQueue
from edge.events import Topics, base_event, status_event
from edge.mqtt_client import MqttLink

DEVICE = "door-t"


def make_link(server: Broker, tmp_path: Path, max_events: int = 1000, on_command=None) -> MqttLink:
    config = MqttConfig(host=server.host, port=server.port, topic_prefix="test", reconnect_min_s=1.0,
                        reconnect_max_s=1.0, keepalive_s=5)
    return MqttLink(config, DEVICE, EventQueue(tmp_path / "queue.db", max_events), on_command=on_command)


def ids(payloads: list[bytes]) -> list[str]:
    return [json.loads(p)["id"] for p in payloads]


def dedupe(values: list[str]) -> list[str]:
    seen: set[str] = set()
    return [v for v in values if not (v in seen or seen.add(v))]


def test_queue_is_ordered_bounded_and_persistent(tmp_path: Path) -> None:
    queue = EventQueue(tmp_path / "q.db", max_events=3)
    for i in range(5):
        queue.put("t", f"{i}".encode())
    assert len(queue) == 3 and queue.dropped == 2
    queue.close()
    reopened = EventQueue(tmp_path / "q.db", max_events=3)
    head = reopened.peek()
    assert head is not None and head.payload == b"2"
    reopened.remove(head.seq)
    assert [reopened.peek().payload] == [b"3"]
    assert reopened.dropped == 2
    assert oct((tmp_path / "q.db").stat().st_mode & 0o777) == "0o600"


def test_corrupt_queue_file_is_a_clear_error(tmp_path: Path) -> None:
    from edge.errors import ConfigError

    bad = tmp_path / "q.db"
    bad.write_bytes(b"not a database at all" * 100)
    with pytest.raises(ConfigError, match="queue.path"):
        EventQueue(bad, 10)


def test_events_arrive_in_order_with_availability(broker: Broker, tmp_path: Path) -> None:  # noqa: F811
    sub = Subscriber(broker, "test/#")
    link = make_link(broker, tmp_path)
    link.start()
    topics = Topics("test", DEVICE)
    sent = [status_event(DEVICE, "cam", "tick", str(i)) for i in range(20)]
    for event in sent:
        link.publish(topics.status, event)
    assert sub.wait_for(lambda m: len([x for x in m if x[1] == topics.status]) >= 20)
    assert ids(sub.on("/status")) == [e["id"] for e in sent]
    assert sub.on("/availability")[0] == b"online"
    link.stop()
    assert sub.wait_for(lambda m: m[-1][2] == b"offline")
    sub.close()


def test_broker_outage_loses_nothing_and_keeps_order(broker: Broker, tmp_path: Path) -> None:  # noqa: F811
    sub = Subscriber(broker, "test/#", client_id="persistent-sub")
    link = make_link(broker, tmp_path)
    link.start()
    assert link.connected.wait(10)
    topics = Topics("test", DEVICE)
    sent = []
    for i in range(30):
        event = base_event("recognized", DEVICE, "cam", person="p", n=i)
        sent.append(event["id"])
        link.publish(topics.recognized, event)
        if i == 10:
            broker.stop()  # the broker dies while people pass
        time.sleep(0.02)
    assert not link.connected.wait(0.5)
    assert len(link.queue) > 0
    broker.start()
    assert sub.wait_for(lambda m: set(sent) <= {json.loads(p)["id"] for _, t, p, _ in m if t.endswith("recognized")},
                        timeout=30), f"delivered {len(sub.on('recognized'))} of {len(sent)}"
    assert dedupe(ids(sub.on("recognized"))) == sent
    assert len(link.queue) == 0
    link.stop()
    sub.close()


def test_overflow_drops_oldest_and_counts(broker: Broker, tmp_path: Path) -> None:  # noqa: F811
    broker.stop()
    link = make_link(broker, tmp_path, max_events=5)
    link.start()
    topics = Topics("test", DEVICE)
    sent = []
    for i in range(8):
        event = base_event("unknown", DEVICE, "cam", n=i)
        sent.append(event["id"])
        link.publish(topics.unknown, event)
    assert link.queue.dropped == 3
    broker.start()
    sub = Subscriber(broker, "test/#")
    assert sub.wait_for(lambda m: len([x for x in m if x[1].endswith("unknown")]) >= 5, timeout=30)
    assert dedupe(ids(sub.on("unknown"))) == sent[3:]
    link.stop()
    sub.close()


def test_last_will_announces_offline_when_connection_dies(broker: Broker, tmp_path: Path) -> None:  # noqa: F811
    sub = Subscriber(broker, "test/+/availability")
    link = make_link(broker, tmp_path)
    link.start()
    assert sub.wait_for(lambda m: any(p == b"online" for _, _, p, _ in m))
    sock = link.client.socket()
    sock.shutdown(2)  # connection lost without DISCONNECT: the broker publishes the will
    assert sub.wait_for(lambda m: any(p == b"offline" for _, _, p, _ in m), timeout=20)
    assert sub.wait_for(lambda m: [p for _, _, p, _ in m][-1] == b"online", timeout=20), "no reconnect"
    link.stop()
    sub.close()


def test_commands_reach_the_handler(broker: Broker, tmp_path: Path) -> None:  # noqa: F811
    got: list[bytes] = []
    done = threading.Event()
    link = make_link(broker, tmp_path, on_command=lambda raw: (got.append(raw), done.set()))
    link.start()
    assert link.connected.wait(10)
    time.sleep(0.3)  # let the subscription settle
    import paho.mqtt.publish as publish

    publish.single(Topics("test", DEVICE).command, b"hello", qos=1, hostname=broker.host, port=broker.port)
    assert done.wait(10) and got == [b"hello"]
    link.stop()
