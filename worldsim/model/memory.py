"""Long-term scene memory: what leaves the rolling KV window is kept, and brought back on return.

The KV cache holds the last ``context`` ticks; anything older is forgotten by the network.
:class:`SceneMemory` keeps a bounded store of the views shown beside it, each tagged with the
tick and with where the viewer was: a pose (x, y, yaw) *estimated from the actions alone*
by :class:`PoseTracker` (DOOM's movement is a momentum model: we integrate
DOOM's own player physics, checked against recorded ViZDoom poses; a mouse turn of d degrees
is exactly d degrees). The store is a map
``(grid cell, heading bin) → view``: a place seen again replaces its entry only with a view
at least as trustworthy (real frames have confidence 1; generated ones lose a little
confidence every tick since the last real or remembered view), and when the store is full
the least trusted entry is evicted — so the memory is bounded (``cap`` views,
preallocated) however long a session runs.

On every tick the session asks the memory whether the viewer is back at a remembered place
(within ``pos_tol`` units and ``yaw_tol`` degrees, and older than the KV window). If so, the
remembered view, re-aimed by the small heading difference, is blended into the generated latent
with a weight that grows as the match gets closer; the blended latent is what is shown and what
enters the context, so the world continues from the remembered place. The store keeps views as
latents (what was shown, or the real frame's encoding; float16, 2 KB a view where the picture
took 12 KB): the runtime re-aims them as the world's turn prior does a turn
(:meth:`~worldsim.model.world_model.WorldModel.reaim_memories`: the learned prior of
:mod:`~worldsim.model.reaim_net` within the turns it was trained on, else decode → :func:`yaw_warp`
→ encode, a turn in place being an exact image warp with the screen-fixed pixels such as the
weapon kept). Sliding a latent grid instead would blur (measured in :mod:`worldsim.model.view_warp`);
keeping pictures cost an encode on every recalling tick (README Speed, session 32). A dynamics
network trained with a memory input (``DynamicsConfig.memory_input``, trained on the same
retrieval over recorded poses) also receives the remembered latent and its weight while it
generates the tick, and ``blend`` sets how much of the match weight is still blended in
afterwards (1 = all, 0 = leave it to the network).
"""

from __future__ import annotations

import copy
import math
import mmap
from dataclasses import dataclass, field

import numpy as np
import torch

from worldsim.errors import check_limits


@dataclass
class MemoryConfig:
    enabled: bool = True
    cap: int = 2048                  # latents kept (preallocated)
    cell: float = 64.0               # map units per grid cell of the store
    yaw_bin: float = 15.0            # degrees per heading bin of the store
    pos_tol: float = 32.0            # a return: this close (map units) ...
    yaw_tol: float = 30.0            # ... and facing this close (degrees; the view is re-aimed) ...
    learned_deg: float = 15.0        # views this few degrees off are re-aimed by the world's learned turn prior (the
                                     # turns a tick makes, what it was trained on: a run-turn is 14.1°), others by pixels
    min_age: int = 24                # ... to a view at least this many ticks old (3× the KV window)
    strength: float = 1.0            # weight of a perfect match
    blend: float = 1.0               # fraction of the weight blended into the generated latent
    decay: float = 0.97              # confidence lost per generated tick
    # movement: DOOM's player physics per game tic (thrust in map units/tic², friction per
    # tic), ``tics`` tics per tick; checked against the recorded poses of scripted loop walks
    tics: int = 2
    friction: float = 0.90625
    walk: float = 0.78125
    run: float = 1.06                # measured: ViZDoom's SPEED gives ~1.4× walking thrust here, not 2×
    strafe: float = 0.75
    strafe_run: float = 1.25
    yaw_key: float = 3.515625        # degrees per tic of a held turn key (640/65536 of a turn) ...
    yaw_key_run: float = 7.03125     # ... with run (1280) ...
    yaw_key_slow: float = 1.7578125  # ... and during its first ``slow_tics`` tics (320)
    slow_tics: int = 6
    yaw_mouse: float = 1.0           # degrees per unit of mouse_dx
    # re-aiming a remembered view: the camera's horizontal field of view, and the screen-fixed
    # pixels that do not turn with the world (runs [y, x0, x1] at the world's resolution;
    # estimated from the training recordings by view_warp.estimate_overlay)
    fov: float = 90.0
    overlay: tuple = ()

    def validate(self) -> None:
        check_limits(self, "memory", {"cap": 1, "cell": 1e-6, "yaw_bin": 1e-6, "pos_tol": 1e-6, "yaw_tol": 1e-6,
                                      "learned_deg": 0, "min_age": 0, "tics": 1, "walk": 0, "run": 0, "strafe": 0,
                                      "strafe_run": 0, "yaw_key": 0, "yaw_key_run": 0, "yaw_key_slow": 0,
                                      "slow_tics": 0, "fov": 1e-6},
                     within=("strength", "blend", "decay", "friction"))
        if self.fov >= 180:
            raise ValueError(f"memory.fov must be < 180 (a pinhole camera's field of view), got {self.fov}")


@dataclass
class PoseTracker:
    """Dead reckoning from actions: x, y in map units, yaw in degrees (counter-clockwise).
    As in DOOM, momentum lives in the world frame: turning does not turn a slide."""

    cfg: MemoryConfig
    buttons: list[str]
    axes: list[str]
    x: float = 0.0
    y: float = 0.0
    yaw: float = 0.0
    vx: float = 0.0                  # units/tic
    vy: float = 0.0
    turn_held: int = 0               # tics a turn key has been held

    def update(self, buttons: np.ndarray, axes: np.ndarray) -> None:
        def b(name: str) -> float:
            return float(buttons[self.buttons.index(name)]) if name in self.buttons else 0.0
        c, run = self.cfg, b("run")
        turn = b("turn_right") - b("turn_left")
        dx = float(axes[self.axes.index("mouse_dx")]) if "mouse_dx" in self.axes else 0.0
        for _ in range(c.tics if turn else 0):
            rate = c.yaw_key_slow if self.turn_held < c.slow_tics else (c.yaw_key_run if run else c.yaw_key)
            self.yaw -= turn * rate
            self.turn_held += 1
        self.turn_held = self.turn_held if turn else 0
        self.yaw = (self.yaw - dx * c.yaw_mouse) % 360.0
        fwd = (b("forward") - b("back")) * (c.run if run else c.walk)
        side = (b("strafe_left") - b("strafe_right")) * (c.strafe_run if run else c.strafe)
        r = math.radians(self.yaw)
        ax, ay = fwd * math.cos(r) - side * math.sin(r), fwd * math.sin(r) + side * math.cos(r)
        for _ in range(c.tics):  # thrust, move, then friction, as DOOM's tic does
            self.vx, self.vy = self.vx + ax, self.vy + ay
            self.x, self.y = self.x + self.vx, self.y + self.vy
            self.vx, self.vy = self.vx * c.friction, self.vy * c.friction


def match_score(dist: np.ndarray, dyaw: np.ndarray, cfg: MemoryConfig) -> np.ndarray:
    """How well a remembered view matches the viewer (the runtime's recall and the training
    targets share it): flat near a perfect match, falling to 0 at ``pos_tol`` / ``yaw_tol``."""
    return np.clip(1 - (dist / cfg.pos_tol) ** 2, 0, None) * np.clip(1 - (dyaw / cfg.yaw_tol) ** 2, 0, None)


def _wrap(deg: np.ndarray | float) -> np.ndarray | float:
    return (np.asarray(deg) + 180.0) % 360.0 - 180.0


_POPULATE = getattr(mmap, "MAP_POPULATE", 0)  # Linux


def _resident(shape: tuple[int, ...], like: np.ndarray | None = None, dtype=np.uint8) -> np.ndarray:
    """An array in its own anonymous mapping, resident from the start (zeros, or ``like``),
    so a session's RSS stays flat as the store fills, and handed back to the OS when the session
    goes (from the heap it would stay with the process). On Linux the kernel maps all its pages
    in the mmap call (MAP_POPULATE): when the store kept 25 MB of pictures, ~15 ms instead of ~30 ms
    of page faults from writing it through — time a session's open (its first frame) would otherwise pay."""
    n = int(np.prod(shape)) * np.dtype(dtype).itemsize
    if _POPULATE:
        buf = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | _POPULATE)  # zero-filled
    else:
        buf = mmap.mmap(-1, n)
    a = np.frombuffer(buf, dtype).reshape(shape)
    if like is not None:
        a[...] = like
    elif not _POPULATE:
        a[...] = 0  # write through: resident now
    return a


@dataclass
class Hit:
    """A remembered view for the current pose: ``latent`` (C, h, w) float32 as it was stored, to be
    re-aimed ``yaw`` degrees to the right (remembered − current heading); ``weight`` of the match
    (0..``strength``); ``conf`` the view's trust."""

    latent: torch.Tensor
    yaw: float
    weight: float
    conf: float


@dataclass
class SceneMemory:
    """One stream's memory. Per tick: ``observe`` → ``recall`` → (re-aim the hit) → ``settle``
    → ``remember``."""

    cfg: MemoryConfig
    latent_shape: tuple[int, int, int]       # (C, h, w)
    pose: PoseTracker
    conf_now: float = 1.0            # trust in the stream's current frame
    hits: int = 0                    # ticks on which a memory was blended in
    latents: np.ndarray = field(init=False)  # (cap, C, h, w) float16
    where: np.ndarray = field(init=False)   # (cap, 3) x, y, yaw of each entry
    tick: np.ndarray = field(init=False)    # (cap,)
    conf: np.ndarray = field(init=False)    # (cap,) -1 = free slot
    keys: dict = field(init=False)          # (cell x, cell y, heading bin) → slot
    slot_key: list = field(init=False)      # slot → its key

    def __post_init__(self) -> None:
        self.latents = _resident((self.cfg.cap, *self.latent_shape), dtype=np.float16)
        self.where = np.zeros((self.cfg.cap, 3))
        self.tick = np.zeros(self.cfg.cap, np.int64)
        self.conf = np.full(self.cfg.cap, -1.0)
        self.keys = {}
        self.slot_key = [None] * self.cfg.cap

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def nbytes(self) -> int:
        return self.latents.nbytes + self.where.nbytes + self.tick.nbytes + self.conf.nbytes

    def observe(self, buttons: np.ndarray, axes: np.ndarray) -> None:
        self.pose.update(buttons, axes)

    def _key(self) -> tuple[int, int, int]:
        c, p = self.cfg, self.pose
        return (int(math.floor(p.x / c.cell)), int(math.floor(p.y / c.cell)),
                int(((p.yaw + c.yaw_bin / 2) % 360.0) // c.yaw_bin))

    def recall(self, tick: int, min_age: int) -> Hit | None:
        """The remembered view for the current pose (with the turn that re-aims it to the current
        heading), or None when the viewer is nowhere it remembers (outside the KV window)."""
        c, p = self.cfg, self.pose
        ok = (self.conf >= 0) & (tick - self.tick >= max(min_age, c.min_age))
        if not ok.any():
            return None
        d = np.hypot(self.where[:, 0] - p.x, self.where[:, 1] - p.y)
        dyaw = _wrap(self.where[:, 2] - p.yaw)  # remembered − current heading: > 0 = we now face further right
        score = self.conf * match_score(d, dyaw, c)
        score = np.where(ok, score, 0.0)
        i = int(np.argmax(score))
        if score[i] <= 0:
            return None
        z = torch.from_numpy(self.latents[i].astype(np.float32))  # (C, h, w)
        return Hit(z, float(dyaw[i]), float(c.strength * score[i]), float(self.conf[i]))

    def store(self, latent: np.ndarray | torch.Tensor, tick: int, conf: float) -> None:
        """Remember ``latent`` (C, h, w) as the view from the current pose."""
        key = self._key()
        i = self.keys.get(key)
        if i is not None and self.conf[i] > conf:
            return  # keep the more trustworthy view of this place
        if i is None:
            free = np.flatnonzero(self.conf < 0)
            if len(free):
                i = int(free[0])
            else:  # full: evict the least trusted entry (oldest among equals)
                i = int(np.lexsort((self.tick, self.conf))[0])
                del self.keys[self.slot_key[i]]
            self.keys[key] = i
            self.slot_key[i] = key
        self.latents[i] = latent.detach().float().cpu().numpy() if isinstance(latent, torch.Tensor) else latent
        self.where[i] = (self.pose.x, self.pose.y, self.pose.yaw)
        self.tick[i], self.conf[i] = tick, conf

    def settle(self, z: torch.Tensor, zm: torch.Tensor | None, hit: Hit | None) -> torch.Tensor:
        """One generated latent ``z``, given this tick's :meth:`recall` and the hit's re-aimed latent ``zm``:
        blend the remembered view in (``cfg.blend`` of its weight) and update the trust in what
        the stream now shows."""
        if hit is None or zm is None:
            self.conf_now *= self.cfg.decay
            return z
        b = self.cfg.blend * hit.weight
        if b > 0:
            z = (1 - b) * z + b * zm.to(z.dtype)
        self.conf_now = max(self.conf_now * self.cfg.decay, hit.weight * hit.conf)
        self.hits += 1
        return z

    def remember(self, latent: np.ndarray | torch.Tensor, tick: int) -> None:
        """Store the latent of what the stream showed this tick, with the stream's current trust."""
        self.store(latent, tick, self.conf_now)

    def state(self) -> tuple[dict[str, np.ndarray], dict[str, float | int]]:
        """The memory as arrays and scalars (a snapshot file's part, :mod:`worldsim.runtime.snapshot_file`):
        only the filled slots, each with its index — eviction picks among slots in index order, so
        :meth:`load_state` puts them back where they were."""
        slots = np.array([i for i, k in enumerate(self.slot_key) if k is not None], np.int64)  # (n,)
        p = self.pose
        arrays = {"slots": slots, "keys": np.array([self.slot_key[i] for i in slots], np.int64).reshape(-1, 3),
                  "latents": self.latents[slots], "where": self.where[slots], "tick": self.tick[slots],
                  "conf": self.conf[slots], "pose": np.array([p.x, p.y, p.yaw, p.vx, p.vy], np.float64)}
        return arrays, {"conf_now": self.conf_now, "hits": self.hits, "turn_held": p.turn_held, "cap": self.cfg.cap}

    def load_state(self, arrays: dict[str, np.ndarray], scalars: dict[str, float | int]) -> None:
        """Fill this (empty) memory from :meth:`state`'s output; ValueError when it does not fit."""
        slots, lat = np.asarray(arrays["slots"]), np.asarray(arrays["latents"])
        if int(scalars["cap"]) != self.cfg.cap or lat.shape[1:] != self.latents.shape[1:] or len(lat) != len(slots):
            raise ValueError(f"its scene memory ({scalars['cap']} views of {lat.shape[1:]}) does not fit this "
                             f"world's ({self.cfg.cap} of {self.latents.shape[1:]})")
        if len(slots) and (slots.min() < 0 or slots.max() >= self.cfg.cap or len(set(slots.tolist())) < len(slots)):
            raise ValueError("scene-memory slots out of range")
        self.latents[slots] = lat
        self.where[slots], self.tick[slots], self.conf[slots] = arrays["where"], arrays["tick"], arrays["conf"]
        for i, key in zip(slots.tolist(), np.asarray(arrays["keys"]).tolist()):
            self.slot_key[i] = tuple(key)
            self.keys[tuple(key)] = i
        p = self.pose
        p.x, p.y, p.yaw, p.vx, p.vy = (float(x) for x in arrays["pose"])
        p.turn_held = int(scalars["turn_held"])
        self.conf_now, self.hits = float(scalars["conf_now"]), int(scalars["hits"])

    def copy(self) -> "SceneMemory":
        m = copy.copy(self)
        m.latents = _resident(self.latents.shape, self.latents, np.float16)
        m.where, m.tick, m.conf = self.where.copy(), self.tick.copy(), self.conf.copy()
        m.keys, m.slot_key, m.pose = dict(self.keys), list(self.slot_key), copy.copy(self.pose)
        return m
