"""Where a tick's time and arithmetic go: the parts of `worldsim bench`'s figures that look inside
a tick rather than at it from outside.

* :func:`dynamics_flops` — FLOPs of the dynamics part of one tick (the commit and every sampling
  step), counted by PyTorch's FLOP counter;
* :func:`time_dynamics` — the dynamics alone, decoders stubbed out, for achieved GFLOP/s;
* :func:`tick_breakdown` — one tick of a batch of sessions split into the dynamics, the frame
  decoder, the audio decoder, the turn prior (a pixel prior's decode, warp and encode) and the rest
  (actions, noise, scene memory, copies),
  with timers around those calls: the figure that says which part a faster tick has to come from.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any, Callable, Iterator

import torch


def sync(device: str | torch.device) -> None:
    """On a GPU, let queued work finish before a timer is read (no-op on the CPU)."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def _replaced(*swaps: tuple[Any, str, Callable]) -> Iterator[None]:
    """Each ``(obj, name, fn)``: ``obj.name`` is ``fn(old obj.name)`` inside, exactly as before after."""
    saved = []
    try:
        for obj, name, make in swaps:
            saved.append((obj, name, name in obj.__dict__, obj.__dict__.get(name)))
            setattr(obj, name, make(getattr(obj, name)))
        yield
    finally:
        for obj, name, had, old in reversed(saved):
            if had:
                setattr(obj, name, old)
            else:
                delattr(obj, name)  # the class's method shows through again


def _stub_decoders(model) -> contextlib.AbstractContextManager:
    """Decoders that return zeros of the right shape: the dynamics alone."""
    swaps = [(model.frame_codec, "decode",
              lambda _: lambda z: torch.zeros(z.shape[0], *model.resolution, 3, dtype=torch.uint8))]
    if model.audio_codec is not None:
        swaps.append((model.audio_codec, "decode", lambda _: lambda z: torch.zeros(z.shape[0], 1, 1, dtype=torch.int16)))
    return _replaced(*swaps)


def dynamics_flops(world) -> float:
    """FLOPs of the dynamics part of one tick (all sampling steps + commit), counted once."""
    from torch.utils.flop_counter import FlopCounterMode

    from worldsim.model import packed_linear

    s = world.open(seed=0)
    # the counter knows aten's linear, not oneDNN's packed one: count the same tick through aten
    packed_was, packed_linear.enabled = packed_linear.enabled, False
    try:
        with FlopCounterMode(display=False) as fc, torch.no_grad(), _stub_decoders(world.model):
            s.step()
    finally:
        packed_linear.enabled = packed_was
    return float(fc.get_total_flops())


def time_dynamics(world, ticks: int = 100) -> float:
    """Seconds per tick of the dynamics alone (decoders stubbed), for the GFLOP/s figure."""
    s = world.open(seed=1)
    with _stub_decoders(world.model):
        for _ in range(5):
            s.step()
        t0 = time.perf_counter()
        for _ in range(ticks):
            s.step()
        sync(world.model.device)  # the decoders are stubbed: nothing else waits for the dynamics' last work
        return (time.perf_counter() - t0) / ticks


PARTS = {"dynamics": ("dynamics", ("stream", "modulate")), "frame_decoder": ("frame_codec", ("decode",)),
         "audio_decoder": ("audio_codec", ("decode",)), "turn_prior": ("", ("_turn_prior",))}  # "": the model


def tick_breakdown(world, batch: int, actions: list[Any], warmup: int = 3) -> dict[str, float]:
    """Milliseconds per tick of ``batch`` sessions stepped together, by part (see the module
    docstring); ``total`` is the whole ``step_many`` and ``rest`` what the parts leave of it."""
    if len(actions) < 2:
        raise ValueError("tick_breakdown needs at least 2 actions (a warm-up tick and a timed one)")
    warmup = min(warmup, len(actions) // 2)
    model = world.model
    spent = dict.fromkeys(PARTS, 0.0)
    inside: list[str] = []  # the parts being timed now, outermost first: a nested part's time is its own only

    def timed(part: str, fn: Callable) -> Callable:
        def call(*a, **k):
            sync(model.device)
            t = time.perf_counter()
            inside.append(part)
            try:
                return fn(*a, **k)
            finally:
                sync(model.device)
                dt = time.perf_counter() - t
                inside.pop()
                spent[part] += dt
                if inside:  # e.g. the turn prior decoding with the frame codec
                    spent[inside[-1]] -= dt
        return call

    owners = {part: model if not owner else getattr(model, owner, None) for part, (owner, _) in PARTS.items()}
    swaps = [(owners[part], name, lambda fn, part=part: timed(part, fn))
             for part, (_, names) in PARTS.items() if owners[part] is not None for name in names]
    sessions = [world.open(seed=300 + i) for i in range(batch)]
    try:
        with _replaced(*swaps):
            for a in actions[:warmup]:
                world.step_many({x: a for x in sessions})
            for k in spent:
                spent[k] = 0.0
            ticks = actions[warmup:]
            t0 = time.perf_counter()
            for a in ticks:
                world.step_many({x: a for x in sessions})
            total = time.perf_counter() - t0
    finally:
        for x in sessions:
            x.close()
    n = len(ticks)
    out = {k: 1e3 * v / n for k, v in spent.items() if k != "audio_decoder" or model.audio_codec is not None}
    out["rest"] = 1e3 * total / n - sum(out.values())
    out["total"] = 1e3 * total / n
    return out
