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

from worldsim.actions import ActionSchema

KEYMAP = {  # pygame key name → button of the ViZDoom schema
    "w": "forward", "up": "forward", "s": "back", "down": "back", "a": "strafe_left", "d": "strafe_right",
    "left": "turn_left", "right": "turn_right", "left ctrl": "attack", "right ctrl": "attack",
    "e": "use", "space": "use", "left shift": "run", "right shift": "run",
}
# Worlds with other actions (a Gymnasium env's `action_0`, `button_3`, `axis_1`, …): the buttons
# no DOOM key names take the number keys in schema order, and each axis other than the mouse's
# a pair of keys (toward its low end, toward its high end) — listed by `describe()` at start.
BUTTON_KEYS = tuple("1234567890")
AXIS_KEYS = (("left", "right"), ("down", "up"), ("z", "x"), ("c", "v"), ("b", "n"))
MOUSE_AXES = ("mouse_dx", "mouse_dy")
CONTROLS_HELP = __doc__.split("Controls (DOOM-like):", 1)[1].strip("\n")
MAX_MOUSE_DEG = 30.0  # one tick's turn is clipped here: a flick of the mouse is not a teleport


def key_bindings(schema: ActionSchema) -> tuple[dict[str, str], dict[str, tuple[str, str]]]:
    """The keys that play ``schema``: {key name: button} and {axis: (low key, high key)}.
    Buttons or axes beyond the free keys stay unbound (an action script can still drive them)."""
    keys = {k: b for k, b in KEYMAP.items() if b in schema.buttons}
    bound = set(keys.values())
    free = [k for k in BUTTON_KEYS if k not in keys]
    for b in schema.buttons:
        if b not in bound and free:
            keys[free.pop(0)] = b
    axes: dict[str, tuple[str, str]] = {}
    pairs = [p for p in AXIS_KEYS if p[0] not in keys and p[1] not in keys]
    for a in schema.axes:
        if a not in MOUSE_AXES and pairs:
            axes[a] = pairs.pop(0)
    return keys, axes


@dataclass
class InputState:
    """Accumulates mouse motion between ticks; :meth:`action` samples the keyboard too and
    returns an entry valid for ``schema`` (no mouse for a world without mouse axes, at most
    one button of each exclusive group)."""

    schema: ActionSchema
    sensitivity: float = 0.15  # degrees per pixel of mouse motion
    grabbed: bool = False
    dx: float = 0.0
    dy: float = 0.0
    _codes: dict[int, str] = field(default_factory=dict)
    _axis_keys: dict[str, tuple[int, int, float, float]] = field(default_factory=dict)  # low/high key, bounds

    def __post_init__(self) -> None:
        import pygame

        self._bindings = key_bindings(self.schema)
        keys, axes = self._bindings
        self._codes = {pygame.key.key_code(k): b for k, b in keys.items()}
        sch = self.schema
        for j, a in enumerate(sch.axes):
            if a in axes:  # an unbounded end counts as ±1
                lo = sch.axis_low[j] if sch.axis_low is not None and np.isfinite(sch.axis_low[j]) else -1.0
                hi = sch.axis_high[j] if sch.axis_high is not None and np.isfinite(sch.axis_high[j]) else 1.0
                self._axis_keys[a] = (pygame.key.key_code(axes[a][0]), pygame.key.key_code(axes[a][1]), lo, hi)

    @property
    def buttons(self) -> tuple[str, ...]:
        return self.schema.buttons

    def describe(self) -> str:
        """The bindings of a world whose actions are not DOOM's (empty for DOOM's)."""
        keys, axes = self._bindings
        parts = [f"{k} {b}" for k, b in keys.items() if k in BUTTON_KEYS]
        parts += [f"{lo}/{hi} {a}" for a, (lo, hi) in axes.items()]
        unbound = [n for n in (*self.schema.buttons, *self.schema.axes)
                   if n not in keys.values() and n not in axes and n not in MOUSE_AXES]
        if unbound:
            parts.append(f"unbound (scripts only): {', '.join(unbound)}")
        return " · ".join(parts)

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

        return self.entry(pygame.key.get_pressed(), self.grabbed and pygame.mouse.get_pressed()[0])

    def entry(self, pressed: Any, clicked: bool = False) -> dict[str, Any]:
        """The action entry for the key states ``pressed`` (indexable by key code) and a held
        mouse button; consumes the mouse motion gathered since the last call."""
        held = {b for code, b in self._codes.items() if pressed[code]}
        if clicked and "attack" in self.schema.buttons:
            held.add("attack")
        for group in self.schema.groups:  # exclusive: the first held in schema order wins
            held -= set([b for b in group if b in held][1:])
        axes: dict[str, float] = {}
        mouse = {"mouse_dx": self.dx, "mouse_dy": self.dy}
        for name in self.schema.axes:
            if name in mouse:
                axes[name] = float(np.clip(mouse[name], -MAX_MOUSE_DEG, MAX_MOUSE_DEG))
            elif name in self._axis_keys:
                lo_code, hi_code, lo, hi = self._axis_keys[name]
                v = (hi if pressed[hi_code] else 0.0) + (lo if pressed[lo_code] else 0.0)
                axes[name] = float(np.clip(v, lo, hi))  # none held: 0 (or the range's nearest end)
        self.dx = self.dy = 0.0
        return {"keys": sorted(held), "axes": axes}


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
