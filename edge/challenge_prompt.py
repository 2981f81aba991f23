"""Telling the person at the door which way to turn: arrow LEDs and a buzzer through gpiozero.

The MQTT prompt event reaches a panel or a phone; these pins reach the person in front of the
camera. Every pin is optional. A failing pin is logged and never blocks the check: the prompt is
a courtesy, the yaw the camera measures is the evidence.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

from edge.config import ChallengePromptConfig

log = logging.getLogger("edge.challenge_prompt")


class ChallengePrompter:
    """`show(direction)` lights that side's LED and beeps; `clear()` turns everything off."""

    def __init__(self, config: ChallengePromptConfig, pin_factory: Any = None) -> None:
        from gpiozero import LED, Buzzer

        self.config = config
        self.leds: dict[str, Any] = {}
        for direction, pin in (("left", config.left_led_pin), ("right", config.right_led_pin)):
            if pin is not None:
                self.leds[direction] = LED(pin, initial_value=False, pin_factory=pin_factory)
        self.buzzer = Buzzer(config.buzzer_pin, initial_value=False, pin_factory=pin_factory) \
            if config.buzzer_pin is not None else None
        self._beep_timer: threading.Timer | None = None

    def show(self, direction: str) -> None:
        """Light `direction`'s LED (the other off) and give one beep."""
        try:
            for side, led in self.leds.items():
                led.on() if side == direction else led.off()
            if self.buzzer is not None:
                self.buzzer.on()
                self._beep_timer = threading.Timer(self.config.beep_s, self._beep_off)
                self._beep_timer.daemon = True
                self._beep_timer.start()
        except Exception as exc:
            log.error("challenge prompt: could not drive the prompt pins (%s)", exc)

    def _beep_off(self) -> None:
        try:
            if self.buzzer is not None:
                self.buzzer.off()
        except Exception as exc:
            log.error("challenge prompt: could not stop the buzzer (%s)", exc)

    def clear(self) -> None:
        """Everything off (the check ended, either way)."""
        if self._beep_timer is not None:
            self._beep_timer.cancel()
        self._beep_off()
        for led in self.leds.values():
            try:
                led.off()
            except Exception as exc:
                log.error("challenge prompt: could not turn an LED off (%s)", exc)

    def close(self) -> None:
        self.clear()
        for device in [*self.leds.values(), self.buzzer]:
            if device is not None:
                device.close()
