"""Where the player's frames come from: a world in this process, or a bridge server.

Both sources answer the same small interface, so the player, its recorders and the HUD
never know which one they drive:

    src = LocalSource("default", seed=0)            # or RemoteSource("tcp://host:5555")
    t = src.step({"keys": ["forward"], "mouse": [2.0, 0.0]})
    t.frame (H, W, 3) uint8 · t.audio (S, C) int16 or None · t.tick · t.model_ms
    snap = src.snapshot(); src.restore(snap)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.actions import ActionSchema
from worldsim.errors import WorldsimError


@dataclass
class Tick:
    frame: np.ndarray          # (H, W, 3) uint8
    audio: np.ndarray | None   # (S, C) int16
    tick: int
    model_ms: float
    steps: int = 0             # sampling steps that made it (0: unknown)
    light: bool = False        # made with the light turn prior (the clock's lowest level)


def read_image(path: str | Path, resolution: tuple[int, int] | None = None) -> np.ndarray:
    """A picture file (PNG, JPEG, BMP, …) → (H, W, 3) uint8 RGB, resized (area) to ``resolution``
    when given. Player start images and cutscene start pictures both come through here."""
    import cv2

    p = Path(path)
    if not p.is_file():
        raise WorldsimError(f"{p}: no such image file")
    img = cv2.imread(str(p), cv2.IMREAD_COLOR)  # (h, w, 3) BGR, or None when unreadable
    if img is None:
        raise WorldsimError(f"{p}: not an image file OpenCV can read (PNG, JPEG, BMP, …)")
    if resolution is not None and img.shape[:2] != tuple(resolution):
        img = cv2.resize(img, (resolution[1], resolution[0]), interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(img[:, :, ::-1])  # BGR → RGB


def load_start_image(path: str | Path, resolution: tuple[int, int]) -> np.ndarray:
    """``--start IMAGE`` → (H, W, 3) uint8 at the world's resolution."""
    try:
        return read_image(path, resolution)
    except WorldsimError as e:
        raise WorldsimError(f"--start {e}") from None


def _start(start: np.ndarray | str | Path | None, resolution: tuple[int, int]) -> np.ndarray | None:
    return load_start_image(start, resolution) if isinstance(start, (str, Path)) else start


class LocalSource:
    """A session of a world loaded in this process (no server)."""

    def __init__(self, world: str = "default", seed: int = 0, start: np.ndarray | str | Path | None = None,
                 device: str | None = None, sampling_steps: int | None = None, memory: bool | None = None,
                 resume: str | Path | None = None):
        """``resume``: a session saved with :meth:`save` (a .wsnap file) to continue instead of opening one."""
        from worldsim.runtime import World

        from worldsim.runtime.clock import StepGovernor, freeze_heap

        self.world = World.load(world, device=device, sampling_steps=sampling_steps, memory=memory)
        # paced play keeps the tick rate by shedding sampling steps (as the bridge server does);
        # fixed --sampling-steps, or unpaced runs (set_paced(False)), always use the full count
        self.governor = StepGovernor.for_world(self.world, 1.0 / self.world.tick_rate)
        self.adaptive = sampling_steps is None
        self.schema: ActionSchema = self.world.schema
        self.name, self.resolution = self.world.name, tuple(self.world.resolution)
        self.session = (self.world.restore(resume) if resume is not None
                        else self.world.open(seed=seed, start=_start(start, self.resolution)))
        self.tick_rate, self.audio_spec = float(self.world.tick_rate), self.world.audio_spec
        self.where = f"in process ({self.world.model.device})"
        freeze_heap()  # the loaded world out of the collector's view before play ticks (see freeze_heap)

    def set_paced(self, paced: bool) -> None:
        """Unpaced (scripted, as fast as possible) runs keep the full steps: reproducible frames."""
        self.adaptive = self.adaptive and paced

    def step(self, action: dict[str, Any]) -> Tick:
        c = self.session.step(action, **(self.governor.plan if self.adaptive else {}))
        ms = c.timings.get("model_ms", 0.0)
        if self.adaptive:
            self.governor.update(ms)
        return Tick(c.frames[-1], c.audio, c.tick, ms, int(c.timings.get("sampling_steps", 0)),
                    bool(c.timings.get("light_prior", 0.0)))

    def snapshot(self) -> Any:
        return self.session.snapshot()

    def memory_status(self) -> str:
        m = (self.session.state.memories or [None])[0]
        return "memory off" if m is None else f"memory {len(m)} views, {m.hits} recalls"

    def restore(self, snap: Any) -> None:
        self.session.close()
        self.session = self.world.restore(snap)

    def save(self, path: str | Path) -> Path:
        return self.session.save(path)

    def close(self) -> None:
        self.session.close()


class RemoteSource:
    """A lockstep session on a ``worldsim serve`` bridge server (the client reconnects on its own)."""

    def __init__(self, addr: str, seed: int = 0, start: np.ndarray | str | Path | None = None,
                 timeout_ms: int = 2000):
        from engine_bridge.client import BridgeClient

        from engine_bridge.client import BridgeError

        # a player would rather hear "server lost" after a few seconds than wait out long retries
        self.client = BridgeClient(addr, timeout_ms=timeout_ms, retries=2, name="worldsim-play", connect=False)
        try:
            w = self.client.connect()
            spec = self.client.world
        except BridgeError as e:
            self.client.close()
            hint = "" if e.code == "NO_WORLD" else " (is `worldsim serve` running there?)"
            raise WorldsimError(f"--connect {addr}: {e}{hint}") from None
        self.schema = ActionSchema.from_dict(w["schema"])
        self.name, self.resolution = spec["name"], tuple(spec["resolution"])
        self.tick_rate, self.audio_spec = float(spec["tick_rate"]), spec.get("audio") or None
        try:
            self.sid = self.client.open(mode="lockstep", seed=seed, start=_start(start, self.resolution))
        except BridgeError as e:
            self.client.close()
            raise WorldsimError(f"--connect {addr}: the server refused a session ({e})") from None
        self.where = f"bridge {addr}"

    def memory_status(self) -> str:
        return "memory: the server's"

    def set_paced(self, paced: bool) -> None:
        """Lockstep steps on a server always use the world's full sampling steps."""

    def step(self, action: dict[str, Any]) -> Tick:
        from engine_bridge.client import BridgeError

        try:
            o = self.client.step(self.sid, action)
        except BridgeError as e:
            raise WorldsimError(f"lost the bridge server {self.client.addr}: {e}") from None
        return Tick(o.frame, o.audio, o.tick, float(o.timings.get("model_ms", 0.0)),
                    int(o.timings.get("sampling_steps", 0)), bool(o.timings.get("light_prior", 0.0)))

    def snapshot(self) -> Any:
        return self.client.snapshot(self.sid)

    def restore(self, snap: Any) -> None:
        new = self.client.restore(snap, mode="lockstep")
        self.client.close_session(self.sid)
        self.sid = new

    def close(self) -> None:
        from engine_bridge.client import BridgeError

        self.client.timeout_ms, self.client.retries = 500, 0  # best effort: the server may be gone
        try:
            self.client.close_session(self.sid)
        except BridgeError:
            pass
        finally:
            self.client.close()
