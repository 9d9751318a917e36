"""Drivers that decide *when* sessions tick.

* :class:`LockstepDriver` steps only when asked (robotics rollouts, tests): a thin,
  explicit wrapper over :meth:`World.step_many`.
* :class:`RealtimeDriver` ticks at a fixed rate (default: the world's native tick rate) in
  a background thread. Each tick uses the latest action set for each session (hold-last
  when none came), steps all sessions in one batch, and publishes the newest chunk per
  session into a one-slot mailbox plus an optional callback: a slow consumer only ever
  misses frames, it never grows a queue or blocks the clock. Per-tick lateness and
  compute time are recorded. Declared degradation (:class:`StepGovernor`): when a tick's
  compute exceeds the budget (``budget`` × period), the next ticks use one sampling step fewer
  (down to ``min_steps``), then, where the world has one, its light turn prior; they climb back
  when the higher level is measured to fit. A tick
  that starts more than a period late is *skipped* (counted) rather than run in a burst.
"""

from __future__ import annotations

import gc
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from worldsim.runtime.session import ActionLike, Chunk, Session, World


def freeze_heap() -> None:
    """Move every object alive now (the loaded world, torch, the modules) out of the cyclic
    collector's view, before a real-time loop starts. Measured with the default world loaded
    (170 k tracked objects): a full collection took 78 ms — longer than a 57 ms tick — and one
    came within 600 lockstep ticks over the bridge, none in 1,200 after ``gc.freeze()`` (a
    collection then scans only what the loop itself allocated). Safe to call again: later calls add the newer survivors."""
    gc.collect()
    gc.freeze()


class StepGovernor:
    """The declared degradation, shared by :class:`RealtimeDriver`, the bridge server and the
    player: a tick whose compute exceeded ``budget`` × period makes the next ticks one level
    cheaper. The levels are the sampling step counts, ``max_steps`` down to ``min_steps``, and,
    with ``light`` (a world whose turn prior re-aims pictures: :attr:`WorldModel.light_prior`),
    one more under a single step: one step with the *light turn prior* (the previous latent slid
    by the turn instead of decoded, re-aimed and encoded again). It climbs back one level when the
    higher one is known to fit — the median of its last ticks under ``climb`` × the budget — or,
    like before, when a tick took under half the budget. A level without a recent measurement
    (fewer than 3 ticks, or none for ``forget`` ticks) is tried again every ``probe`` ticks:
    at most one late tick per probe where it does not fit.

    Why the measurements: a step is not a fixed share of a tick — the decoders and the committed
    block cost the same at any count (the default world in int8 on an AVX2 CPU: 31 / 44 ms at
    1 / 2 steps) — so "half the budget" is never reached at one step there, and a session used to
    stay at one step after a single slow tick even on a machine where two fit.

    Why a light level: a world sampled with one step (the default world since session 30) has no
    step to shed; its turn prior's decode + encode is the next-largest part of a tick."""

    def __init__(self, max_steps: int, period_s: float, min_steps: int = 1, budget: float = 0.9,
                 climb: float = 0.8, hold: int = 8, probe: int = 64, forget: int = 512, light: bool = False):
        self.max_steps = max(1, int(max_steps))
        self.min_steps = max(1, min(int(min_steps), self.max_steps))
        self.bottom = 0 if light and self.min_steps == 1 else self.min_steps  # level 0: one step, light prior
        self.limit_ms = budget * period_s * 1e3
        self.climb, self.hold, self.probe, self.forget = climb, hold, probe, forget
        self.level = self.max_steps
        self._ms: dict[int, deque] = {}      # level → the compute times of its last ticks
        self._seen: dict[int, int] = {}      # level → the tick it last ran
        self._tick = self._changed = 0

    @classmethod
    def for_world(cls, world: World, period_s: float, **kw: Any) -> "StepGovernor":
        """The governor of ``world``'s real-time ticks: its sampler's full count, its light level where
        it has one (every clock builds it here, so none forgets a level)."""
        return cls(world.model.sampler.cfg.steps, period_s, light=world.model.light_prior, **kw)

    @property
    def steps(self) -> int:
        """The sampling steps of the next tick."""
        return max(self.level, 1)

    @property
    def light(self) -> bool:
        """Whether the next tick uses the light turn prior."""
        return self.level == 0

    @property
    def plan(self) -> dict[str, Any]:
        """The next tick's keyword arguments for :meth:`World.step_many`."""
        return {"sampling_steps": self.steps, "light_prior": self.light}

    @property
    def degraded(self) -> bool:
        return self.level < self.max_steps

    def _set(self, level: int) -> None:
        self.level, self._changed = level, self._tick

    def update(self, compute_ms: float) -> None:
        self._tick += 1
        k = self.level
        self._ms.setdefault(k, deque(maxlen=8)).append(float(compute_ms))
        self._seen[k] = self._tick
        if compute_ms > self.limit_ms and k > self.bottom:
            return self._set(k - 1)
        if k >= self.max_steps:
            return
        if compute_ms < 0.5 * self.limit_ms:
            return self._set(k + 1)
        if self._tick - self._changed < self.hold:  # settle before judging the next level
            return
        up = self._ms.get(k + 1)
        known = up is not None and len(up) >= 3 and self._tick - self._seen[k + 1] <= self.forget
        if known and float(np.median(up)) < self.climb * self.limit_ms:
            return self._set(k + 1)
        if not known and self._tick - self._changed >= self.probe:
            return self._set(k + 1)


class LockstepDriver:
    def __init__(self, world: World):
        self.world = world

    def step(self, actions: dict[Session, ActionLike]) -> dict[Session, Chunk]:
        return self.world.step_many(actions)


@dataclass
class TickStats:
    ticks: int = 0
    late: int = 0          # ticks that finished after their deadline
    skipped: int = 0       # deadlines dropped because the clock fell a whole period behind
    degraded: int = 0      # ticks run below the full level (fewer sampling steps, or the light prior)
    compute_ms: deque = field(default_factory=lambda: deque(maxlen=10000))
    lateness_ms: deque = field(default_factory=lambda: deque(maxlen=10000))

    def summary(self) -> dict[str, Any]:
        c = np.array(self.compute_ms) if self.compute_ms else np.zeros(1)
        la = np.array(self.lateness_ms) if self.lateness_ms else np.zeros(1)
        return {"ticks": self.ticks, "late": self.late, "skipped": self.skipped, "degraded": self.degraded,
                "compute_ms_p50": float(np.percentile(c, 50)), "compute_ms_p99": float(np.percentile(c, 99)),
                "lateness_ms_p50": float(np.percentile(la, 50)), "lateness_ms_p99": float(np.percentile(la, 99))}


class RealtimeDriver:
    def __init__(self, world: World, rate: float | None = None, on_chunk: Callable[[Session, Chunk], None] | None = None,
                 min_steps: int = 1, budget: float = 0.9):
        self.world = world
        self.rate = float(rate or world.tick_rate)
        if self.rate <= 0:
            raise ValueError(f"tick rate must be > 0, got {rate}")
        self.period = 1.0 / self.rate
        self.on_chunk = on_chunk
        self.governor = StepGovernor.for_world(world, self.period, min_steps=min_steps, budget=budget)
        self.stats = TickStats()
        self._lock = threading.Lock()
        self._actions: dict[Session, ActionLike] = {}
        self._latest: dict[Session, Chunk] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None

    # ---- sessions and inputs (any thread) ---------------------------------------------
    def add(self, session: Session, action: ActionLike = None) -> None:
        self.world.action(action)  # validate now, not on the clock thread
        with self._lock:
            self._actions[session] = action

    def remove(self, session: Session) -> None:
        with self._lock:
            self._actions.pop(session, None)
            self._latest.pop(session, None)

    def set_action(self, session: Session, action: ActionLike) -> None:
        """Latest wins: the next tick uses it, and later ticks keep it until replaced."""
        act = self.world.action(action)
        with self._lock:
            if session not in self._actions:
                raise KeyError(f"session {session.id} is not driven by this clock")
            self._actions[session] = act

    def latest(self, session: Session) -> Chunk | None:
        with self._lock:
            return self._latest.get(session)

    # ---- the clock ---------------------------------------------------------------------
    def tick_once(self) -> dict[Session, Chunk]:
        with self._lock:
            actions = {s: a for s, a in self._actions.items() if not s.closed}
        if not actions:
            return {}
        t0 = time.perf_counter()
        gov = self.governor
        chunks = self.world.step_many(actions, **gov.plan)
        ms = (time.perf_counter() - t0) * 1e3
        self.stats.ticks += 1
        self.stats.compute_ms.append(ms)
        self.stats.degraded += gov.degraded
        gov.update(ms)
        with self._lock:
            self._latest.update(chunks)
        if self.on_chunk is not None:
            for s, c in chunks.items():
                self.on_chunk(s, c)
        return chunks

    def _run(self) -> None:
        try:
            next_t = time.perf_counter()
            while not self._stop.is_set():
                now = time.perf_counter()
                if now - next_t > self.period:  # a whole period behind: drop deadlines, never burst
                    missed = int((now - next_t) / self.period)
                    self.stats.skipped += missed
                    next_t += missed * self.period
                self.tick_once()
                done = time.perf_counter()
                deadline = next_t + self.period
                self.stats.lateness_ms.append(max(0.0, (done - deadline) * 1e3))
                if done > deadline:
                    self.stats.late += 1
                next_t = deadline
                wait = next_t - time.perf_counter()
                if wait > 0:
                    self._stop.wait(wait)
        except BaseException as e:  # surfaced by stop()/join
            self.error = e

    def start(self) -> "RealtimeDriver":
        if self._thread is not None and self._thread.is_alive():
            return self
        self._stop.clear()
        freeze_heap()
        self._thread = threading.Thread(target=self._run, name="worldsim-clock", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        if self.error is not None:
            raise self.error

    def run_for(self, seconds: float) -> dict[str, Any]:
        self.start()
        time.sleep(seconds)
        self.stop()
        return self.stats.summary()
