"""Keyboard/mouse → world actions, and the sound output queue.

Controls (DOOM-like):

    W/S or ↑/↓   forward / back          A/D          strafe left / right
    ←/→          turn left / right       mouse        turn (x) and look (y); click the window to capture it
    left click   fire (also Ctrl)        E or Space   use (open doors)
    Shift        run                     Esc          release the mouse; Esc again quits
    P            pause / resume          F1           HUD on/off
    F5 / F9      save / restore a snapshot            F12          screenshot (PNG)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

KEYMAP = {  # pygame key name → button of the ViZDoom schema
    "w": "forward", "up": "forward", "s": "back", "down": "back", "a": "strafe_left", "d": "strafe_right",
    "left": "turn_left", "right": "turn_right", "left ctrl": "attack", "right ctrl": "attack",
    "e": "use", "space": "use", "left shift": "run", "right shift": "run",
}
CONTROLS_HELP = __doc__.split("Controls (DOOM-like):", 1)[1].strip("\n")
MAX_MOUSE_DEG = 30.0  # one tick's turn is clipped here: a flick of the mouse is not a teleport


@dataclass
class InputState:
    """Accumulates mouse motion between ticks; :meth:`action` samples the keyboard too."""

    buttons: list[str]
    sensitivity: float = 0.15  # degrees per pixel of mouse motion
    grabbed: bool = False
    dx: float = 0.0
    dy: float = 0.0
    _codes: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        import pygame

        self._codes = {pygame.key.key_code(k): b for k, b in KEYMAP.items() if b in self.buttons}

    def grab(self, on: bool) -> None:
        import pygame

        self.grabbed = on
        pygame.event.set_grab(on)  # grabbed + hidden cursor = SDL's relative mouse mode
        pygame.mouse.set_visible(not on)

    def motion(self, rel: tuple[int, int]) -> None:
        if self.grabbed:
            self.dx += rel[0] * self.sensitivity
            self.dy += rel[1] * self.sensitivity

    def action(self) -> dict[str, Any]:
        import pygame

        pressed = pygame.key.get_pressed()
        keys = {b for code, b in self._codes.items() if pressed[code]}
        if self.grabbed and pygame.mouse.get_pressed()[0] and "attack" in self.buttons:
            keys.add("attack")
        a = {"keys": sorted(keys), "mouse": [float(np.clip(self.dx, -MAX_MOUSE_DEG, MAX_MOUSE_DEG)),
                                             float(np.clip(self.dy, -MAX_MOUSE_DEG, MAX_MOUSE_DEG))]}
        self.dx = self.dy = 0.0
        return a


class AudioOut:
    """Each tick's sound goes to one mixer channel: played at once when the channel is idle,
    queued behind the playing chunk otherwise, and dropped when one is already queued, so
    the sound is never more than two ticks behind the picture (no growing lag)."""

    def __init__(self, spec: dict[str, int] | None, mute: bool = False):
        import pygame

        self.channel = None
        self.queued = self.dropped = 0
        self.error = None
        if mute or not spec:
            return
        try:
            pygame.mixer.pre_init(frequency=int(spec["sample_rate"]), size=-16, channels=int(spec["channels"]),
                                  buffer=512)
            pygame.mixer.init()
            if pygame.mixer.get_init() is not None:
                self.channel = pygame.mixer.Channel(0)
        except pygame.error as e:
            self.error = str(e)

    @property
    def on(self) -> bool:
        return self.channel is not None

    def push(self, audio: np.ndarray | None) -> None:
        import pygame

        if self.channel is None or audio is None:
            return
        snd = pygame.mixer.Sound(buffer=np.ascontiguousarray(audio, np.int16).tobytes())
        if not self.channel.get_busy():
            self.channel.play(snd)
        elif self.channel.get_queue() is None:
            self.channel.queue(snd)
        else:
            self.dropped += 1
            return
        self.queued += 1

    def pause(self, on: bool) -> None:
        if self.channel is not None:
            self.channel.pause() if on else self.channel.unpause()
