"""Sessions: the public streaming API.

    world = World.load("default")            # or a checkpoint directory; device auto/forced
    s = world.open(seed=1)                   # start from a shipped start context
    chunk = s.step({"keys": ["forward"], "mouse": [2.0, 0.0]})
    chunk.frames  # (K, H, W, 3) uint8, K = 1 frame per tick
    chunk.audio   # (S, C) int16, the sound that arrives with those frames
    snap = s.snapshot(); s2 = world.restore(snap); s3 = s.fork()
    s.save("game.wsnap"); s4 = world.restore("game.wsnap")   # on disk, resumed later or elsewhere
    chunks = world.step_many({s: a, s2: b})   # one batched forward for all of them

Streaming state contract: a session's whole future depends only on its
:class:`~worldsim.model.world_model.StreamState` (rolling KV cache, last latent, tick,
random generator, long-term scene memory) and the actions it is given. Snapshots copy that state, so a restored or
forked session produces bit-identical frames and audio for the same actions when stepped
the same way. Each row draws noise from its own generator, so batching never changes a
session's random draws; batched matmuls round differently in bf16, so a session stepped
inside a batch matches the same session stepped alone to within a pixel level or two
(measured: max 2/255, mean 0.1) rather than bit for bit.
"""

from __future__ import annotations

import itertools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from worldsim.actions import Action, ActionError, check_axes
from worldsim.errors import WorldsimError
from worldsim.model.stream_state import StreamState
from worldsim.model.world_model import WorldModel
from worldsim.runtime.snapshot_file import load_snapshot, save_snapshot
from worldsim.runtime.starts import StartContexts, primed_digest

ActionLike = Action | Mapping[str, Any] | tuple | None


class SessionClosed(WorldsimError):
    pass


@dataclass
class Chunk:
    """What one tick produces."""
    frames: np.ndarray               # (K, H, W, 3) uint8
    audio: np.ndarray | None         # (S, C) int16, or None for a silent world
    tick: int                        # ticks generated so far by this session (1 after the first step)
    timings: dict[str, float] = field(default_factory=dict)  # ms: model, total; batch size


@dataclass
class Snapshot:
    """A session's complete streaming state at one tick (tensors are private copies)."""
    world: str
    tick: int
    seed: int
    state: dict[str, Any]


class World:
    """A loaded world model that hands out sessions and batches their ticks."""

    def __init__(self, model: WorldModel, starts: StartContexts | None = None):
        self.model = model
        self.starts = starts or StartContexts.load(getattr(model, "path", None), model)
        self._ids = itertools.count(1)
        self.sessions: dict[int, Session] = {}
        # the batched state of the sessions last stepped together: kept between ticks so that a
        # steady group (a server's clients, a vector env) is not concatenated and split every tick
        self._group: tuple[list[Session], StreamState] | None = None
        # shipped start index -> the network's stream state right after priming on it, so that
        # reopening a start (a gym reset, a bridge client's next session) costs a copy instead of
        # encoding the context and a forward over it (measured on an AVX2 CPU in fp32: ~135 ms)
        self._primed: dict[int, dict[str, Any]] = {}

    @classmethod
    def load(cls, path: str = "default", device: str | None = None, sampling_steps: int | None = None,
             memory: bool | None = None, precision: str | None = None, learned_reaim: bool = True) -> "World":
        """``memory``: long-term scene memory for its sessions (None: the world's setting, on by default).
        ``precision``: "auto" (bf16 where native, else fp32), "bf16" or "fp32" (None: $WORLDSIM_PRECISION,
        else auto; :mod:`worldsim.precision`). ``learned_reaim=False``: a world that ships its turn prior
        learned (``reaim.*``) turns with the pixel prior instead (:meth:`WorldModel.load`)."""
        model = WorldModel.load(path, device=device, precision=precision, learned_reaim=learned_reaim)
        if sampling_steps is not None:
            if sampling_steps < 1:
                raise WorldsimError(f"sampling_steps must be ≥ 1, got {sampling_steps}")
            model.sampler.cfg.steps = sampling_steps
        if memory is not None:
            model.set_memory(memory)
        return cls(model)

    # ---- facts -----------------------------------------------------------------------
    @property
    def schema(self):
        return self.model.schema

    @property
    def resolution(self) -> tuple[int, int]:
        return self.model.resolution

    @property
    def tick_rate(self) -> float:
        return self.model.tick_rate

    @property
    def audio_spec(self) -> dict[str, int] | None:
        return self.model.audio_spec

    @property
    def name(self) -> str:
        return self.model.name

    # ---- sessions --------------------------------------------------------------------
    def open(self, seed: int = 0, start: Any = None) -> "Session":
        """A new session. ``start``: None (a shipped start context picked by ``seed``), an
        image (H, W, 3) uint8, or an episode context dict (``frames`` (c, H, W, 3), ``audio``,
        ``buttons`` (c-1, NB), ``axes`` (c-1, NA); see worldsim.eval.interface)."""
        state = self.model.new_state([seed])
        ctx = self.starts.context(start, seed)
        k = self.starts.index(start, seed)
        primed = self._primed.get(k) if k is not None else None
        if primed is None and k is not None:  # primed when the world was exported (starts file)
            primed = self.starts.primed(k)
            if primed is not None:
                self._primed[k] = primed
        lat = self.starts.latents(k)  # a shipped start's stored latents: no encoding
        if lat is not None:
            lat = tuple(None if x is None else x[None] for x in lat)  # a batch of one row
        if primed is not None:
            # the network's half of priming is deterministic: a shipped start's is run once per
            # world and copied since. Left out of the copy: the generator (this session's seed) and
            # the scene memory (4 MB a copy), which is filled from the context again, without the dynamics
            state.restore(primed)
            self.model.remember_context(state, ctx["frames"][None], ctx["buttons"][None], ctx["axes"][None],
                                        None if lat is None else lat[0])
            return self._adopt(state, seed, tick=0)
        au = ctx.get("audio")
        self.model.prime(state, ctx["frames"][None], None if au is None else au[None], ctx["buttons"][None],
                         ctx["axes"][None], latents=lat)
        if k is not None:
            snap = state.snapshot(memories=False)  # the memory is filled from the context at each open
            del snap["rng"]
            self._primed[k] = snap
        return self._adopt(state, seed, tick=0)

    def _adopt(self, state: StreamState, seed: int, tick: int) -> "Session":
        s = Session(self, next(self._ids), state, seed, tick)
        self.sessions[s.id] = s
        return s

    @property
    def stream_digest(self) -> str | None:
        """Hex digest of what a stream of this world depends on (weights and their settings), or None
        for a world not loaded from a directory: a snapshot file carries it (:mod:`.snapshot_file`)."""
        if not hasattr(self, "_stream_digest"):
            root = getattr(self.model, "path", None)
            self._stream_digest = (None if root is None else
                                   primed_digest(root, learned_reaim=self.model.reaim_net is not None).tobytes().hex())
        return self._stream_digest

    def load_snapshot(self, path: str | os.PathLike) -> Snapshot:
        """A snapshot saved by :meth:`Session.save`, checked against this world (WorldsimError when it
        is not a snapshot file, or one of another world or of other weights)."""
        return load_snapshot(path, self.model, self.name, self.stream_digest)

    def restore(self, snap: "Snapshot | str | os.PathLike", seed: int | None = None) -> "Session":
        """A new session continuing from ``snap``: a :class:`Snapshot`, or the path of a file
        :meth:`Session.save` wrote. ``seed``: None continues the snapshot's own random draws (the
        same actions replay the same frames); a seed draws new ones from that point (a branch: the
        same state, another future — rollouts from one saved situation)."""
        if isinstance(snap, (str, os.PathLike)):
            snap = self.load_snapshot(snap)
        if not isinstance(snap, Snapshot):
            raise WorldsimError(f"restore expects a Snapshot or a snapshot file's path, got {type(snap).__name__}")
        if snap.world != self.name:
            raise WorldsimError(f"snapshot of world {snap.world!r} cannot be restored into {self.name!r}")
        seed = snap.seed if seed is None else int(seed)
        state = self.model.new_state([seed])
        state.restore(snap.state if seed == snap.seed else {k: v for k, v in snap.state.items() if k != "rng"})
        return self._adopt(state, seed, snap.tick)

    def action(self, a: ActionLike) -> Action:
        """Normalise an action: Action, script-style dict, (buttons, axes) arrays, or None (no-op)."""
        sch = self.schema
        if a is None:
            return sch.noop()
        if isinstance(a, Action):
            if a.buttons.shape != (sch.num_buttons,) or a.axes.shape != (sch.num_axes,):
                raise ActionError(f"action has {a.buttons.shape[0]} buttons / {a.axes.shape[0]} axes; "
                                  f"this world has {sch.num_buttons} / {sch.num_axes}")
            check_axes(a.axes)
            return a
        if isinstance(a, Mapping):
            return sch.parse(a)
        if isinstance(a, tuple) and len(a) == 2:
            try:
                return self.action(sch.from_arrays(a[0], a[1]))
            except (ValueError, TypeError) as e:
                raise ActionError(f"bad (buttons, axes) action: {e}") from None
        raise ActionError(f"unsupported action type {type(a).__name__}")

    def step_many(self, actions: Mapping["Session", ActionLike], sampling_steps: int | None = None,
                  light_prior: bool = False) -> dict["Session", Chunk]:
        """Advance every given session one tick in one batched forward. ``sampling_steps``
        overrides the world's count for this tick; ``light_prior`` slides the previous latent for
        the turn prior instead of re-aiming its picture (cheaper; the clocks' lowest level)."""
        if not actions:
            return {}
        sessions = list(actions)
        for s in sessions:
            if s.closed:
                raise SessionClosed(f"session {s.id} is closed")
            if s.world is not self:
                raise WorldsimError(f"session {s.id} belongs to another world")
        acts = [self.action(actions[s]) for s in sessions]  # validate all before stepping any
        b = np.stack([a.buttons for a in acts])
        ax = np.stack([a.axes for a in acts])
        steps = sampling_steps or self.model.sampler.cfg.steps
        t0 = time.perf_counter()
        if len(sessions) == 1:
            batch = sessions[0].state  # (leaves any group it was in)
        elif self._group is not None and set(self._group[0]) == set(sessions) and len(self._group[0]) == len(sessions):
            order = self._group[0]  # the same group as last tick: its batched state is ready
            pos = {s: i for i, s in enumerate(sessions)}
            rows = [pos[s] for s in order]
            b, ax, sessions, batch = b[rows], ax[rows], order, self._group[1]
        else:
            self.ungroup()
            batch = StreamState.cat([s.state for s in sessions])
            self._group = (sessions, batch)
            for s in sessions:
                s._grouped = True
        light = bool(light_prior) and self.model.light_prior
        frames, audio = self.model.step_batch(batch, b, ax, steps=steps, light_prior=light)
        ms = (time.perf_counter() - t0) * 1e3
        out = {}
        for i, s in enumerate(sessions):
            s.tick += 1
            out[s] = Chunk(frames[i:i + 1], None if audio is None else audio[i], s.tick,
                           {"model_ms": ms, "batch": float(len(sessions)), "sampling_steps": float(steps),
                            "light_prior": float(light)})
        return out

    def ungroup(self) -> None:
        """Give every session of the kept batch its own state again (before one of them is
        read, stepped alone, snapshotted or closed, or a different group steps)."""
        if self._group is None:
            return
        sessions, batch = self._group
        self._group = None
        for s, st in zip(sessions, batch.split([1] * len(sessions))):
            s._state, s._grouped = st, False


class Session:
    """One stream of a world. Create with :meth:`World.open`, :meth:`World.restore` or :meth:`fork`."""

    def __init__(self, world: World, sid: int, state: StreamState, seed: int, tick: int):
        self.world, self.id, self._state, self.seed, self.tick = world, sid, state, seed, tick
        self._grouped = False  # True while its state lives in the world's kept batch
        self.closed = False

    @property
    def state(self) -> StreamState:
        """This session's streaming state (see the module docstring for the contract)."""
        if self.closed:
            raise SessionClosed(f"session {self.id} is closed")
        if self._grouped:
            self.world.ungroup()
        return self._state

    def __repr__(self) -> str:
        return f"Session(id={self.id}, tick={self.tick}, world={self.world.name!r})"

    def __hash__(self) -> int:
        return hash(self.id)

    def __eq__(self, other: object) -> bool:
        return self is other

    def step(self, action: ActionLike = None, sampling_steps: int | None = None, light_prior: bool = False) -> Chunk:
        return self.world.step_many({self: action}, sampling_steps, light_prior)[self]

    def snapshot(self) -> Snapshot:
        if self.closed:
            raise SessionClosed(f"session {self.id} is closed")
        return Snapshot(self.world.name, self.tick, self.seed, self.state.snapshot())

    def fork(self) -> "Session":
        """An independent copy that continues exactly as this one would."""
        return self.world.restore(self.snapshot())

    def frame(self) -> np.ndarray:
        """The picture of this session's latest tick (H, W, 3) uint8, decoded from its latest latent:
        the frame it last showed (in a world whose sampler commits clean latents, ``context_level`` 0,
        as the default world's does), or for a session not yet stepped its last context frame as the
        codec sees it."""
        if self.closed:
            raise SessionClosed(f"session {self.id} is closed")
        m = self.world.model
        with torch.no_grad(), m.autocast:
            return m.frame_codec.decode(self.state.prev.to(m.device))[0].cpu().numpy()

    def save(self, path: str | os.PathLike) -> Path:
        """Write this session's snapshot to a file that :meth:`World.restore` resumes, in this process
        or a later one (safetensors: 1.5 MB for the default world plus 2 KB a remembered view;
        :mod:`.snapshot_file`)."""
        return save_snapshot(self.snapshot(), path, self.world.stream_digest)

    def close(self) -> None:
        if self._grouped:
            self.world.ungroup()
        self.closed = True
        self._state = None  # type: ignore[assignment]  # its KV cache and scene memory go with it
        self.world.sessions.pop(self.id, None)
