"""MQTT output of the daemon (paho-mqtt 2.x, callback API version 2).

Durable events go through the on-disk `EventQueue`; one sender thread publishes the oldest with
QoS 1 and deletes it only when the broker's PUBACK arrives, so events reach the broker in order
and survive broker outages and restarts (at-least-once: consumers de-duplicate by event id).
Paho keeps an unacknowledged message and resends it itself after reconnecting, so the sender never
republishes: it just keeps waiting for that message's acknowledgement. The availability topic is
retained, set to `online` on every connect and to `offline` by the last will or a clean stop.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt

from edge.config import MqttConfig
from edge.event_queue import EventQueue
from edge.events import Topics, encode

log = logging.getLogger("edge.mqtt")


class MqttLink:
    """Connection, last will, command subscription and the ordered sender."""

    def __init__(self, config: MqttConfig, device_id: str, queue: EventQueue,
                 on_command: Callable[[bytes], None] | None = None) -> None:
        self.config = config
        self.device_id = device_id
        self.queue = queue
        self.topics = Topics(config.topic_prefix, device_id)
        self.on_command = on_command
        self.connected = threading.Event()
        self.delivered = 0
        self._stop = threading.Event()
        self._acked: set[int] = set()
        self._ack_cond = threading.Condition()
        self._reported_dropped = queue.dropped
        self._sender: threading.Thread | None = None
        # Extra subscriptions and on-connect publishers (Home Assistant discovery and its lock topic).
        self._handlers: dict[str, Callable[[bytes], None]] = {}
        self._connect_hooks: list[Callable[[mqtt.Client], None]] = []
        self.client: mqtt.Client | None = None
        if config.enabled:
            self.client = self._make_client()

    def _make_client(self) -> mqtt.Client:
        c = self.config
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=c.client_id or f"edge-face-{self.device_id}",
                             clean_session=True, protocol=mqtt.MQTTv311)
        if c.username is not None:
            client.username_pw_set(c.username, c.password)
        if c.tls.enabled:
            client.tls_set(ca_certs=c.tls.ca_file, certfile=c.tls.cert_file, keyfile=c.tls.key_file,
                           cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            client.tls_insecure_set(c.tls.insecure)
        client.will_set(self.topics.availability, b"offline", qos=1, retain=True)
        client.reconnect_delay_set(min_delay=max(1, round(c.reconnect_min_s)),
                                   max_delay=max(1, round(c.reconnect_max_s)))
        client.max_inflight_messages_set(20)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_message = self._on_message
        return client

    # --- paho callbacks (network thread) -------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        if reason_code.is_failure:
            log.warning("MQTT broker %s:%s refused the connection: %s", self.config.host, self.config.port, reason_code)
            return
        log.info("MQTT connected to %s:%s", self.config.host, self.config.port)
        client.publish(self.topics.availability, b"online", qos=1, retain=True)
        if self.on_command is not None:
            client.subscribe(self.topics.command, qos=1)
        for topic in self._handlers:
            client.subscribe(topic, qos=1)
        for hook in self._connect_hooks:
            try:
                hook(client)
            except Exception:  # a hook must never kill the network thread
                log.exception("on-connect hook failed")
        self.connected.set()

    def _on_disconnect(self, _client: mqtt.Client, _userdata: Any, _flags: Any, reason_code: Any, _props: Any) -> None:
        if self.connected.is_set():
            log.warning("MQTT disconnected (%s); events are queued on disk until it returns", reason_code)
        self.connected.clear()

    def _on_publish(self, _client: mqtt.Client, _userdata: Any, mid: int, _reason: Any, _props: Any) -> None:
        with self._ack_cond:
            self._acked.add(mid)
            self._ack_cond.notify_all()

    def _on_message(self, _client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        handler = self.on_command if message.topic == self.topics.command else self._handlers.get(message.topic)
        if handler is None:
            return
        try:
            handler(bytes(message.payload))
        except Exception:  # a command must never kill the network thread
            log.exception("command handler failed")

    # --- public ------------------------------------------------------------------------------------

    def add_handler(self, topic: str, handler: Callable[[bytes], None]) -> None:
        """Subscribe to `topic` on every connect and pass its payloads to `handler` (call before start)."""
        self._handlers[topic] = handler

    def add_connect_hook(self, hook: Callable[[mqtt.Client], None]) -> None:
        """Run `hook(client)` on every connect, e.g. to (re)publish retained discovery messages."""
        self._connect_hooks.append(hook)

    def start(self) -> None:
        """Connect in the background (retrying with backoff) and start delivering the queue."""
        if self.client is None:
            return
        self.client.connect_async(self.config.host, self.config.port, keepalive=self.config.keepalive_s)
        self.client.loop_start()
        self._sender = threading.Thread(target=self._send_loop, name="mqtt-sender", daemon=True)
        self._sender.start()

    def publish(self, topic: str, event: dict[str, Any], retain: bool = False, durable: bool = True) -> None:
        """Send an event: durable ones are queued on disk first, others only sent while connected."""
        if self.client is None:
            return
        payload = encode(event)
        if durable:
            dropped = self.queue.put(topic, payload, retain)
            if dropped:
                log.warning("event queue full (%d): dropped the %d oldest event(s); %d dropped in total",
                            self.queue.max_events, dropped, self.queue.dropped)
        elif self.connected.is_set():
            self.client.publish(topic, payload, qos=1, retain=retain)

    def _wait_ack(self, mid: int) -> bool:
        with self._ack_cond:
            while mid not in self._acked:
                if self._stop.is_set():
                    return False
                self._ack_cond.wait(0.2)
            self._acked.clear()
            return True

    def _send_loop(self) -> None:
        assert self.client is not None
        while not self._stop.is_set():
            if not self.connected.wait(0.2):
                continue
            message = self.queue.peek(timeout=0.2)
            if message is None:
                continue
            with self._ack_cond:
                self._acked.clear()  # acks of non-durable messages; ours cannot have arrived yet
            # Not under _ack_cond: paho calls on_publish holding its own lock, which publish() also takes.
            info = self.client.publish(message.topic, message.payload, qos=1, retain=message.retain)
            if info.rc not in (mqtt.MQTT_ERR_SUCCESS, mqtt.MQTT_ERR_NO_CONN):
                log.warning("MQTT publish of queued event %d failed: %s", message.seq, mqtt.error_string(info.rc))
                self._stop.wait(1.0)
                continue
            # Paho resends this message itself after a reconnect, so wait for its PUBACK however long.
            if not self._wait_ack(info.mid):
                return
            self.queue.remove(message.seq)
            self.delivered += 1
            dropped = self.queue.dropped
            if dropped > self._reported_dropped:
                log.warning("%d event(s) were dropped while the broker was unreachable",
                            dropped - self._reported_dropped)
                self._reported_dropped = dropped

    def flush(self, timeout: float) -> bool:
        """Wait until the queue is empty (True) or `timeout` passes (False)."""
        deadline = threading.Event()
        waited = 0.0
        while len(self.queue) and waited < timeout and self.connected.is_set():
            deadline.wait(0.05)
            waited += 0.05
        return len(self.queue) == 0

    def stop(self, flush_s: float = 2.0) -> None:
        """Deliver what can be delivered quickly, publish `offline`, disconnect; the rest stays on disk."""
        if self.client is None:
            return
        self.flush(flush_s)
        self._stop.set()
        self.queue.wake()
        if self._sender is not None:
            self._sender.join(timeout=2.0)
        if self.connected.is_set():
            info = self.client.publish(self.topics.availability, b"offline", qos=1, retain=True)
            with contextlib.suppress(RuntimeError, ValueError):
                info.wait_for_publish(timeout=2.0)
        self.client.disconnect()
        self.client.loop_stop()
        self.connected.clear()
