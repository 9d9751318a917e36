"""Side-by-side speed comparisons in one process: two precisions of one world, or two worlds.

This machine's speed drifts by tens of percent between runs (other tenants, frequency), so two
separate `worldsim bench` runs cannot tell a 10 % change from noise. Here both contenders are
loaded in one process and stepped in interleaved blocks of a few ticks, so each sees the same
machine load; the figures that matter are their ratios.
"""

from __future__ import annotations

import sys
import time
from typing import Any, Callable

import torch

from worldsim.bench.runtime_bench import _actions, matmul_gflops
from worldsim.precision import precision_name
from worldsim.runtime.clock import freeze_heap


def _interleaved(steppers: dict[str, Callable[[int], None]], ticks: int, block: int) -> dict[str, float]:
    """Seconds each stepper spent on ``ticks`` ticks, run ``block`` ticks at a time in turn."""
    spent = {k: 0.0 for k in steppers}
    for lo in range(0, ticks, block):
        for k, step in steppers.items():
            t = time.perf_counter()
            for i in range(lo, min(ticks, lo + block)):
                step(i)
            spent[k] += time.perf_counter() - t
    return spent


def _say(progress: bool) -> Callable[[str], None]:
    return (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)


def compare_precisions(world_spec: str = "default", ticks: int = 60, block: int = 5, batch: int = 16,
                       batch_ticks: int | None = None, progress: bool = True, device: str | None = None) -> dict[str, Any]:
    """fp32, bf16 and (on a CPU with PyTorch's int8 engine) int8 side by side: the same world
    loaded in each precision, one session each, then ``batch`` sessions each (``step_many``),
    both interleaved, plus a 1024² matmul in each float dtype. ``bf16_over_fp32`` /
    ``int8_over_fp32`` > 1 mean that one is faster here (single session; ``bf16_batch_over_fp32`` /
    ``int8_batch_over_fp32`` the same at the batch; ``int8_over_bf16`` both); ``auto`` is what
    :mod:`worldsim.precision` picks on this machine."""
    from worldsim.model.packed_linear import INT8_AVAILABLE
    from worldsim.precision import world_precision
    from worldsim.runtime import World

    torch.set_num_threads(1)
    say = _say(progress)
    worlds = {p: World.load(world_spec, precision=p, device=device) for p in ("fp32", "bf16")}
    if INT8_AVAILABLE and worlds["fp32"].model.device == "cpu":
        worlds["int8"] = World.load(world_spec, precision="int8", device=device)
    acts = _actions(worlds["fp32"], ticks + 5)
    raced = _race(worlds, acts, ticks, batch, batch_ticks, block)
    res: dict[str, Any] = {"ticks": ticks, "batch": batch, "device": worlds["fp32"].model.device,
                           "auto": world_precision(worlds["fp32"].model.device, "auto")}
    for p in worlds:
        res[p] = raced[p]
        if p != "int8":  # int8 here is the dynamics' linears only: no matmul of its own to show
            res[p]["matmul_gflops"] = matmul_gflops(dtype=worlds[p].model.dtype, device=worlds[p].model.device)
        say(f"{p}: {res[p]['fps']:.1f} fps ({res[p]['tick_ms']:.1f} ms/tick), batch {batch}: "
            f"{res[p]['batch_fps']:.1f} frames/s ({res[p]['batch_over_single']:.2f}x)"
            + (f", matmul {res[p]['matmul_gflops']:.0f} GFLOP/s" if "matmul_gflops" in res[p] else ""))
    for p in worlds:
        if p != "fp32":
            res[f"{p}_over_fp32"] = res[p]["fps"] / res["fp32"]["fps"]
            res[f"{p}_batch_over_fp32"] = res[p]["batch_fps"] / res["fp32"]["batch_fps"]
            say(f"{p} / fp32 speed: {res[f'{p}_over_fp32']:.2f}x single, {res[f'{p}_batch_over_fp32']:.2f}x batch {batch}")
    if "int8" in worlds:
        res["int8_over_bf16"] = {"fps": res["int8"]["fps"] / res["bf16"]["fps"],
                                 "batch_fps": res["int8"]["batch_fps"] / res["bf16"]["batch_fps"]}
    say(f"auto picks {res['auto']} on this machine (int8 computes in {precision_name(worlds.get('int8', worlds['fp32']).model.dtype)} "
        "around its int8 linears)")
    return res


def _race(worlds: dict[str, Any], acts: list, ticks: int, batch: int, batch_ticks: int | None, block: int,
          before: dict[str, Callable[[], None]] | None = None) -> dict[str, dict[str, float]]:
    """One session per contender, then ``batch`` sessions each stepped together by ``step_many``,
    both interleaved; ``before[k]()`` runs before each of contender k's ticks (a kernel switch).
    Returns per contender ``fps``, ``tick_ms``, ``batch_fps``, ``batch_over_single``."""
    pre = before or {}
    single = {k: w.open(seed=0) for k, w in worlds.items()}
    crowds = {k: [w.open(seed=i) for i in range(batch)] for k, w in worlds.items()}
    for k, w in worlds.items():  # warm both paths before timing
        pre.get(k, lambda: None)()
        single[k].step(acts[0])
        w.step_many({s: acts[0] for s in crowds[k]})
    freeze_heap()

    def one_tick(k, s):
        return lambda i: (pre.get(k, lambda: None)(), s.step(acts[i]))

    def crowd_tick(k, w, c):
        return lambda i: (pre.get(k, lambda: None)(), w.step_many({s: acts[i] for s in c}))

    one = _interleaved({k: one_tick(k, s) for k, s in single.items()}, ticks, block)
    bt = max(1, batch_ticks if batch_ticks is not None else ticks // 4)
    many = _interleaved({k: crowd_tick(k, worlds[k], c) for k, c in crowds.items()}, bt, max(1, block // 2))
    for ss in list(single.values()) + [s for c in crowds.values() for s in c]:
        ss.close()
    out = {}
    for k in worlds:
        fps, bfps = ticks / one[k], bt * batch / many[k]
        out[k] = {"fps": fps, "tick_ms": one[k] / ticks * 1e3, "batch_fps": bfps, "batch_over_single": bfps / fps,
                  "batch_ticks": bt}
    return out


def compare_worlds(world_a: str = "default", world_b: str = "default", ticks: int = 60, batch: int = 16,
                   batch_ticks: int | None = None, block: int = 5, sampling_steps: int | None = None,
                   progress: bool = True, device: str | None = None) -> dict[str, Any]:
    """Two worlds side by side, in this process's precision: one session each (``ticks`` ticks),
    then ``batch`` sessions each stepped together by ``step_many`` (``batch_ticks``, default
    ``ticks // 4``), both interleaved. Per world: ``fps``, ``batch_fps`` and ``batch_over_single``
    (the runtime issue's batch target is ≥ 4 at 16); ``b_over_a`` is world B's speed over A's."""
    from worldsim.runtime import World

    torch.set_num_threads(1)
    say = _say(progress)
    names = {"a": world_a, "b": world_b}
    worlds = {k: World.load(spec, sampling_steps=sampling_steps, device=device) for k, spec in names.items()}
    acts = _actions(worlds["a"], ticks + 5)
    raced = _race(worlds, acts, ticks, batch, batch_ticks, block)
    res: dict[str, Any] = {"ticks": ticks, "batch": batch, "batch_ticks": raced["a"].pop("batch_ticks"),
                           "precision": worlds["a"].model.precision}
    raced["b"].pop("batch_ticks")
    for k in worlds:
        res[k] = {"world": names[k], **raced[k]}
        say(f"{k} ({names[k]}): {res[k]['fps']:.1f} fps, batch {batch}: {res[k]['batch_fps']:.1f} frames/s "
            f"({res[k]['batch_over_single']:.2f}x)")
    res["b_over_a"] = {"fps": res["b"]["fps"] / res["a"]["fps"], "batch_fps": res["b"]["batch_fps"] / res["a"]["batch_fps"]}
    say(f"b / a: {res['b_over_a']['fps']:.2f}x single, {res['b_over_a']['batch_fps']:.2f}x batch {batch}")
    return res


def compare_attention(world_spec: str = "default", ticks: int = 60, batch: int = 16, batch_ticks: int | None = None,
                      block: int = 5, progress: bool = True, device: str | None = None) -> dict[str, Any]:
    """The dynamics' two attention kernels side by side on one world (its auto precision): the plain
    softmax(q kᵀ + bias) v and PyTorch's scaled_dot_product_attention, each forced for its own
    sessions' ticks (single and batch, interleaved). ``auto`` is the kernel this world's streaming
    uses here (:func:`worldsim.model.attention.attention`); ``sdpa_over_plain`` > 1: SDPA faster."""
    from worldsim.model import attention
    from worldsim.runtime import World

    torch.set_num_threads(1)
    say = _say(progress)
    kernels = ("plain", "sdpa")
    worlds = {k: World.load(world_spec, device=device) for k in kernels}  # one each: a world keeps its last batch's state
    acts = _actions(worlds["plain"], ticks + 5)

    def use(k: str) -> Callable[[], None]:
        return lambda: setattr(attention, "ATTENTION_KERNEL", k)

    try:
        raced = _race(worlds, acts, ticks, batch, batch_ticks, block, {k: use(k) for k in kernels})
    finally:
        attention.ATTENTION_KERNEL = "auto"
    model = worlds["plain"].model
    res: dict[str, Any] = {"ticks": ticks, "batch": batch, "precision": model.precision,
                           "auto": attention.streaming_kernel(model.dtype, model.device)}
    for k in kernels:
        res[k] = raced[k]
        say(f"{k}: {res[k]['fps']:.1f} fps, batch {batch}: {res[k]['batch_fps']:.1f} frames/s")
    res["sdpa_over_plain"] = {"fps": res["sdpa"]["fps"] / res["plain"]["fps"],
                              "batch_fps": res["sdpa"]["batch_fps"] / res["plain"]["batch_fps"]}
    say(f"sdpa / plain: {res['sdpa_over_plain']['fps']:.2f}x single, {res['sdpa_over_plain']['batch_fps']:.2f}x "
        f"batch {batch}; this world ({model.precision}) streams with {res['auto']}")
    return res
