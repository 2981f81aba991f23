"""MQTT link and on-disk queue against a real Mosquitto broker that the tests stop and restart."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from mosquitto import Broker, Subscriber

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


def test_events_arrive_in_order_with_availability(broker: Broker, tmp_path: Path) -> None:
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


def test_broker_outage_loses_nothing_and_keeps_order(broker: Broker, tmp_path: Path) -> None:
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
    # The broker's acknowledgement of the last event can arrive just after the subscriber saw it;
    # only then is the event removed from the on-disk queue.
    deadline = time.monotonic() + 10
    while len(link.queue) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(link.queue) == 0
    link.stop()
    sub.close()


def test_overflow_drops_oldest_and_counts(broker: Broker, tmp_path: Path) -> None:
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


def test_last_will_announces_offline_when_connection_dies(broker: Broker, tmp_path: Path) -> None:
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


def test_commands_reach_the_handler(broker: Broker, tmp_path: Path) -> None:
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


def _openssl(*args: str, cwd: Path) -> None:
    import subprocess

    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def test_mutual_tls(tmp_path: Path) -> None:
    """TLS with a private CA and a client certificate, against a broker that requires one."""
    import shutil

    from mosquitto import MOSQUITTO, free_port

    if shutil.which("openssl") is None:
        pytest.skip("openssl is not installed here")
    pki = tmp_path / "pki"
    pki.mkdir()
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
             "-subj", "/CN=test-ca", cwd=pki)
    for name in ("server", "client"):
        _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
                 "-subj", f"/CN={'localhost' if name == 'server' else 'door-t'}", cwd=pki)
        (pki / f"{name}.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
                 "-out", f"{name}.pem", "-days", "2", "-extfile", f"{name}.ext", cwd=pki)
    port = free_port()
    conf = tmp_path / "tls.conf"
    conf.write_text(f"user root\nlistener {port} 127.0.0.1\nallow_anonymous true\ncafile {pki}/ca.pem\n"
                    f"certfile {pki}/server.pem\nkeyfile {pki}/server.key\nrequire_certificate true\n")
    import subprocess

    proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        from edge.config import config_from_dict

        def link_for(tls: dict, name: str) -> MqttLink:
            config = config_from_dict({"mqtt": {"host": "127.0.0.1", "port": port, "topic_prefix": "tls",
                                                "tls": tls}}).mqtt
            return MqttLink(config, DEVICE, EventQueue(tmp_path / f"{name}.db", 10))

        good = link_for({"enabled": True, "ca_file": str(pki / "ca.pem"), "cert_file": str(pki / "client.pem"),
                         "key_file": str(pki / "client.key")}, "good")
        good.start()
        assert good.connected.wait(10), "mutual TLS connection failed"
        good.publish(good.topics.status, status_event(DEVICE, None, "tls-ok"))
        assert good.flush(10)
        good.stop()
        no_cert = link_for({"enabled": True, "ca_file": str(pki / "ca.pem")}, "nocert")
        no_cert.start()
        assert not no_cert.connected.wait(3), "the broker must refuse a client without certificate"
        no_cert.stop(flush_s=0)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
