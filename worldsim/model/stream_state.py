"""Streaming state of the world model: an explicit object, copied by snapshots.

:class:`StreamState` holds, per row of a batch of streams, the rolling KV cache, the last frame
latent (for the turn prior), the tick counter, the random generator and the scene memory, plus
the latest tick not yet written to the cache (:class:`Pending`: it is committed by the next
tick's first forward, which saves one forward a tick). Snapshots copy all of it, so a restored
stream replays bit-exactly; ``cat``/``split`` batch rows of several streams and take them apart.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

import torch

from worldsim.model.kv_cache import KVCache
from worldsim.model.memory import SceneMemory


@dataclass
class Pending:
    """The latest tick, generated but not yet in the KV cache: it is committed in the same
    forward as the next tick's first denoising pass (one forward per tick saved)."""
    frame: torch.Tensor                # (B, 1, P, Dt) tokens
    audio: torch.Tensor | None         # (B, 1, Da)
    prior: torch.Tensor                # (B, 1, P, Dt)
    level: torch.Tensor                # (B, 1)
    action: torch.Tensor               # (B, 1, Dact)

    def map(self, fn) -> "Pending":
        return Pending(*(None if t is None else fn(t) for t in (self.frame, self.audio, self.prior, self.level,
                                                                 self.action)))


@dataclass
class StreamState:
    cache: KVCache
    prev: torch.Tensor                 # (B, C, h, w) latest frame latent
    time: torch.Tensor                 # (B,) tick of the latest frame (the pending one, when there is one)
    generators: list[torch.Generator]  # one per row: a row's noise never depends on its batch mates
    pending: Pending | None = None     # the latest tick, not yet committed to the cache
    memories: list[SceneMemory | None] = field(default_factory=list)  # per row; None = memory off
    # the picture ``prev`` decodes to, (B, H, W, 3) uint8, when the tick that set it was shown (a
    # pixel-space turn prior re-aims it instead of decoding ``prev`` again); None = not known
    prev_frame: torch.Tensor | None = None

    def snapshot(self, memories: bool = True) -> dict[str, Any]:
        """A copy of everything (``memories=False``: without the scene memories, 4 MB a copy,
        for a snapshot whose :meth:`restore` keeps the restoring state's own)."""
        snap = {"cache": self.cache.snapshot(), "prev": self.prev.clone(), "time": self.time.clone(),
                "rng": [g.get_state() for g in self.generators],
                "pending": None if self.pending is None else self.pending.map(torch.clone),
                "prev_frame": None if self.prev_frame is None else self.prev_frame.clone()}
        if memories:
            snap["memories"] = [None if m is None else m.copy() for m in self.memories]
        return snap

    @staticmethod
    def cat(states: list["StreamState"]) -> "StreamState":
        """One batched state holding the rows of several (copies; generators are shared objects)."""
        if len(states) == 1:
            return states[0]
        if len({s.pending is None for s in states}) != 1:
            raise ValueError("StreamState.cat: rows with and without a pending tick cannot be batched")
        pend = None
        if states[0].pending is not None:
            ps = [s.pending for s in states]
            pend = Pending(*(None if getattr(ps[0], f) is None else torch.cat([getattr(p, f) for p in ps])
                             for f in ("frame", "audio", "prior", "level", "action")))
        frames = None if any(s.prev_frame is None for s in states) else torch.cat([s.prev_frame for s in states])
        return StreamState(KVCache.cat([s.cache for s in states]), torch.cat([s.prev for s in states]),
                           torch.cat([s.time for s in states]), [g for s in states for g in s.generators], pend,
                           [m for s in states for m in s.memories], frames)

    def split(self, sizes: list[int]) -> list["StreamState"]:
        """Inverse of :meth:`cat`."""
        if len(sizes) == 1:
            return [self]
        out, start = [], 0
        for n in sizes:
            rows = list(range(start, start + n))
            sl = slice(start, start + n)
            pend = None if self.pending is None else self.pending.map(lambda t: t[sl].clone())
            out.append(StreamState(self.cache.select(rows), self.prev[sl].clone(), self.time[sl].clone(),
                                   self.generators[sl], pend, self.memories[sl],
                                   None if self.prev_frame is None else self.prev_frame[sl].clone()))
            start += n
        return out

    def restore(self, snap: Mapping[str, Any]) -> None:
        self.cache.restore(snap["cache"])
        self.prev.copy_(snap["prev"])
        self.time.copy_(snap["time"])
        for g, s in zip(self.generators, snap.get("rng", ())):  # none: keep this state's own generators
            g.set_state(s)
        p = snap.get("pending")
        self.pending = None if p is None else p.map(torch.clone)
        if "memories" in snap:  # a snapshot without them (a primed start) leaves this state's own
            self.memories = [None if m is None else m.copy() for m in snap["memories"]]
        f = snap.get("prev_frame")
        self.prev_frame = None if f is None else f.clone()
