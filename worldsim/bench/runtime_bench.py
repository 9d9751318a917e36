"""`worldsim bench`: speed and memory of the runtime, side by side with a DIAMOND-class
baseline, all measured in one run on one torch thread.

Figures (JSON keys): ``fps`` (single session, lockstep as fast as it goes, frames+audio
in process), ``tick_ms_p50``/``tick_ms_p99`` of those ticks, ``ttff_ms_warm`` (open →
first chunk, world loaded, a shipped start not opened before: restored from the state stored with
it when the world has one, :mod:`worldsim.runtime.starts`), ``ttff_ms_reopen`` (the same on a shipped
start opened before: its priming is kept), ``ttff_ms_new_context`` (the same from a start context the
world has never seen: encoded and primed at open), ``ttff_ms_cold`` (new Python process → first chunk),
``batch_fps`` (frames/s over all sessions at batch 1/4/16), ``rss_mb_start``/``rss_mb_end``
(resident memory around a long single-session run), ``baseline_fps`` and
``ratio_vs_baseline`` (a DIAMOND-Atari-configured pixel diffusion model, random weights,
batch 1, in the world's precision), ``precision`` (bf16 where the machine runs it natively,
else fp32: :mod:`worldsim.precision`), ``matmul_gflops`` (a matmul in that precision, measured
here, now) and ``dynamics_gflops``
(FLOPs of one dynamics tick ÷ its measured time) with their ratio ``dynamics_fraction``,
``memory_overhead`` (tick time with long-term memory on ÷ off − 1, interleaved blocks of a
turn in place, so that nearly every tick recalls a view — each recall costs an encode — with
``memory_hit_fraction`` the share that did) and
``memory_views``/``memory_cap``/``memory_mb`` (the store after the long run), and
``tick_breakdown_ms`` (one session's tick and the largest batch's, split into the dynamics, the
frame decoder, the audio decoder, the turn prior and the rest: :mod:`worldsim.bench.tick_parts`).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldsim.bench.tick_parts import dynamics_flops, sync, tick_breakdown, time_dynamics
from worldsim.device import DEVICE_HELP, device_arg
from worldsim.errors import WorldsimError, check_output_file
from worldsim.precision import precision_name
from worldsim.runtime.clock import freeze_heap


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


DOOM_KEYS = [["forward"], ["forward", "turn_left"], ["turn_right"], ["attack"], [], ["forward", "run"]]


def _actions(world, n: int, seed: int = 0) -> list:
    """A fixed, varied action sequence so timings include every path: for DOOM's schema walk,
    turn, mouse, fire (the sequence every published figure used); for any other world random
    buttons (one per exclusive group) and axis values inside their bounds."""
    rng = np.random.default_rng(seed)
    sch = world.schema
    if {k for ks in DOOM_KEYS for k in ks} <= set(sch.buttons) and {"mouse_dx", "mouse_dy"} <= set(sch.axes):
        return [{"keys": DOOM_KEYS[int(rng.integers(len(DOOM_KEYS)))], "mouse": [float(rng.normal(0, 2)), 0.0]}
                for _ in range(n)]
    lo = sch.axis_low if sch.axis_low is not None else (-1.0,) * sch.num_axes
    hi = sch.axis_high if sch.axis_high is not None else (1.0,) * sch.num_axes
    out = []
    for _ in range(n):
        held = {b for b in sch.buttons if rng.random() < 0.3}
        for group in sch.groups:  # at most one of an exclusive group
            held -= set(sorted(held & set(group), key=sch.buttons.index)[1:])
        axes = {a: float(rng.uniform(max(lo[i], -1e3), min(hi[i], 1e3))) for i, a in enumerate(sch.axes)}
        out.append({"keys": sorted(held), "axes": axes})
    return out


def matmul_gflops(n: int = 1024, seconds: float = 1.0, dtype: torch.dtype = torch.bfloat16,
                  device: str | torch.device = "cpu") -> float:
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        if reps % 16 == 0:  # on a GPU, check the clock against finished work
            sync(device)
    sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0) / 1e9


COLD_CODE = """
import time, sys
t0 = float(sys.argv[2])
import torch
torch.set_num_threads(1)
from worldsim.runtime import World
w = World.load(sys.argv[1], sampling_steps=int(sys.argv[3]) or None, device=sys.argv[4] or None)
s = w.open(seed=0)
c = s.step()
print(round((time.time() - t0) * 1e3, 1))
"""


def ttff_cold(world_path: str, sampling_steps: int | None = None, device: str | None = None) -> float:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-c", COLD_CODE, world_path, repr(time.time()), str(sampling_steps or 0),
                        device or ""],
                       capture_output=True, text=True, env=env, timeout=300)
    if r.returncode != 0:
        raise RuntimeError(f"cold-start subprocess failed: {r.stderr[-500:]}")
    return float(r.stdout.strip().splitlines()[-1])


def memory_overhead(world, ticks: int, say=lambda m: None) -> dict[str, float]:
    """Tick time with long-term memory on ÷ off − 1 (``memory_overhead``), the same ticks
    interleaved in blocks of 25, turning in place (10°/tick) so that after the first turn nearly
    every tick recalls a view: the worst case. ``memory_hit_fraction``: the share that did."""
    sch = world.schema
    spin = ({"keys": [], "mouse": [10.0, 0.0]} if {"mouse_dx", "mouse_dy"} <= set(sch.axes)
            else {"keys": ["turn_right"]} if "turn_right" in sch.buttons
            else _actions(world, 1)[0])  # a world without a turn control: the memory at whatever it recalls
    world.model.set_memory(False)
    s_off = world.open(seed=0)
    world.model.set_memory(True)
    s_on = world.open(seed=0)
    spent, n_on = {"on": 0.0, "off": 0.0}, 0
    for blk in range(max(1, ticks // 25)):
        for name, x in (("on", s_on), ("off", s_off)) if blk % 2 else (("off", s_off), ("on", s_on)):
            t = time.perf_counter()
            for _ in range(25):
                x.step(spin)
            spent[name] += time.perf_counter() - t
            n_on += 25 if name == "on" else 0
    res = {"memory_overhead": spent["on"] / spent["off"] - 1,
           "memory_hit_fraction": s_on.state.memories[0].hits / max(1, n_on)}
    say(f"memory on vs off: {100 * res['memory_overhead']:+.1f} % tick time "
        f"(a remembered view recalled on {100 * res['memory_hit_fraction']:.0f} % of the ticks)")
    for x in (s_on, s_off):
        x.close()
    return res


def run_bench(world_spec: str = "default", ticks: int = 300, rss_ticks: int = 10000, batches=(1, 4, 16),
              batch_ticks: int = 40, baseline: bool = True, cold: bool = True, progress: bool = True,
              sampling_steps: int | None = None, device: str | None = None) -> dict[str, Any]:
    """``sampling_steps``: Euler steps per tick instead of the world's own count (every figure then
    measures that count; ``sampling_steps`` in the result says which ran). ``device``: where the
    world, the matmul and the baseline run (default: CUDA when present, else the CPU)."""
    from worldsim.runtime import World

    torch.set_num_threads(1)
    say = (lambda m: print(m, file=sys.stderr, flush=True)) if progress else (lambda m: None)
    res: dict[str, Any] = {"world": world_spec, "torch_threads": torch.get_num_threads(), "ticks": ticks}
    t0 = time.perf_counter()
    world = World.load(world_spec, sampling_steps=sampling_steps, device=device)
    res["load_ms"] = (time.perf_counter() - t0) * 1e3
    dev = res["device"] = world.model.device
    res["sampling_steps"] = world.model.sampler.cfg.steps
    res["precision"] = world.model.precision
    res["activations"] = precision_name(world.model.dtype)
    say(f"precision {res['precision']}, activations {precision_name(world.model.dtype)} "
        "(bf16 where native, else fp32; dynamics' linears in int8 on x86 CPUs without AMX: worldsim.precision)")
    acts = _actions(world, max(ticks, batch_ticks))

    # warm TTFF: open → first chunk (after one throwaway to warm allocators/kernels), each on a
    # start not opened before (seed 99 primes start 3 of the default world's 8; 100..104 are 4..7, 0);
    # then the same starts again, whose priming the world kept (World.open)
    world.open(seed=99).step()
    warm, again = [], []
    for out in (warm, again):
        for i in range(5):
            t = time.perf_counter()
            world.open(seed=100 + i).step(acts[0])
            out.append((time.perf_counter() - t) * 1e3)
    fresh = []
    for i in range(5):  # a context never seen (a shipped one, shifted sideways): nothing of it is kept
        ctx = dict(world.starts.context(None, i))
        ctx["frames"] = np.ascontiguousarray(np.roll(ctx["frames"], 3 * i + 1, axis=2))
        t = time.perf_counter()
        s = world.open(seed=200 + i, start=ctx)
        s.step(acts[0])
        fresh.append((time.perf_counter() - t) * 1e3)
        s.close()  # its scene memory is not kept for the rest of the run
    res["ttff_ms_warm"] = float(np.median(warm))
    res["ttff_ms_reopen"] = float(np.median(again))
    res["ttff_ms_new_context"] = float(np.median(fresh))
    say(f"ttff warm {res['ttff_ms_warm']:.1f} ms, a start opened before {res['ttff_ms_reopen']:.1f} ms, "
        f"a new start context {res['ttff_ms_new_context']:.1f} ms")

    # single session, lockstep, as fast as it goes; the heap frozen as the real-time loops do
    s = world.open(seed=0)
    for a in acts[:10]:
        s.step(a)
    freeze_heap()
    tick_ms = []
    t_all = time.perf_counter()
    for a in acts[:ticks]:
        t = time.perf_counter()
        c = s.step(a)
        tick_ms.append((time.perf_counter() - t) * 1e3)
    assert c.audio is None or c.audio.shape[0] > 0
    res["fps"] = ticks / (time.perf_counter() - t_all)
    res["tick_ms_p50"] = float(np.percentile(tick_ms, 50))
    res["tick_ms_p99"] = float(np.percentile(tick_ms, 99))
    res["p99_over_p50"] = res["tick_ms_p99"] / res["tick_ms_p50"]
    say(f"fps {res['fps']:.1f}  tick p50 {res['tick_ms_p50']:.1f} ms  p99 {res['tick_ms_p99']:.1f} ms")

    # batches
    res["batch_fps"] = {}
    for b in batches:
        sess = [world.open(seed=100 + i) for i in range(b)]
        world.step_many({x: None for x in sess})
        t = time.perf_counter()
        for a in acts[:batch_ticks]:
            world.step_many({x: a for x in sess})
        res["batch_fps"][str(b)] = b * batch_ticks / (time.perf_counter() - t)
        for x in sess:
            x.close()
        say(f"batch {b}: {res['batch_fps'][str(b)]:.1f} frames/s")

    if world.model.memory_cfg.enabled:
        res.update(memory_overhead(world, ticks, say))

    # dynamics GFLOP/s vs a matmul in the same precision measured now
    res["matmul_gflops"] = matmul_gflops(dtype=world.model.dtype, device=dev)
    flops = dynamics_flops(world)
    sec = time_dynamics(world)
    res["dynamics_gflop_per_tick"] = flops / 1e9
    res["dynamics_ms"] = sec * 1e3
    res["dynamics_gflops"] = flops / sec / 1e9
    res["dynamics_fraction"] = res["dynamics_gflops"] / res["matmul_gflops"]
    say(f"matmul {res['matmul_gflops']:.0f} GFLOP/s, dynamics {res['dynamics_gflops']:.1f} GFLOP/s")
    # where a tick's time goes, one session and the largest batch (worldsim.bench.tick_parts)
    res["tick_breakdown_ms"] = {}
    for b in sorted({1, max(batches)}):
        parts = res["tick_breakdown_ms"][str(b)] = tick_breakdown(world, b, acts[:batch_ticks])
        say(f"batch {b} tick {parts['total']:.1f} ms: " + ", ".join(f"{k} {v:.1f}" for k, v in parts.items() if k != "total"))

    # the DIAMOND-class baseline, same process, same thread
    if baseline:
        from worldsim.bench.diamond import DiamondBaseline, DiamondConfig

        bl = DiamondBaseline(DiamondConfig(n_actions=world.schema.num_buttons + world.schema.num_axes),
                             device=dev, dtype=world.model.dtype)  # side by side: same device and precision
        H, W = world.resolution
        bl.reset(torch.zeros(1, 4, H, W, 3, dtype=torch.uint8))
        act = torch.zeros(1, world.schema.num_buttons + world.schema.num_axes)
        for _ in range(3):
            bl.step(act)
        n = max(10, ticks // 10)
        t = time.perf_counter()
        for _ in range(n):
            bl.step(act)
        sync(dev)
        res["baseline_fps"] = n / (time.perf_counter() - t)
        res["baseline_params_m"] = bl.param_count() / 1e6
        res["ratio_vs_baseline"] = res["fps"] / res["baseline_fps"]
        say(f"baseline {res['baseline_fps']:.1f} fps → ratio {res['ratio_vs_baseline']:.1f}x")

    if cold:
        path = str(getattr(world.model, "path", world_spec))
        res["ttff_ms_cold"] = ttff_cold(path, sampling_steps, device)
        say(f"ttff cold {res['ttff_ms_cold']:.0f} ms")

    # memory over a long run
    if rss_ticks:
        s = world.open(seed=5)
        for a in acts[:20]:
            s.step(a)
        res["rss_mb_start"] = rss_mb()
        for i in range(rss_ticks):
            s.step(acts[i % len(acts)])
        res["rss_mb_end"] = rss_mb()
        res["rss_growth"] = res["rss_mb_end"] / res["rss_mb_start"] - 1
        res["rss_ticks"] = rss_ticks
        m = (s.state.memories or [None])[0]
        if m is not None:
            res["memory_views"], res["memory_cap"], res["memory_mb"] = len(m), m.cfg.cap, m.nbytes / 1e6
            say(f"memory {len(m)} views (cap {m.cfg.cap}, {m.nbytes / 1e6:.1f} MB) after {rss_ticks} ticks")
        say(f"rss {res['rss_mb_start']:.0f} → {res['rss_mb_end']:.0f} MB over {rss_ticks} ticks")
    return res


TARGETS = {"fps": (">=", 35), "ratio_vs_baseline": (">=", 5), "ttff_ms_warm": ("<=", 100), "ttff_ms_cold": ("<=", 3000),
           "p99_over_p50": ("<=", 1.5), "rss_growth": ("<", 0.05), "memory_overhead": ("<=", 0.2)}


def check_targets(res: dict[str, Any]) -> dict[str, bool]:
    out = {}
    for k, (op, v) in TARGETS.items():
        if k in res:
            out[k] = res[k] >= v if op == ">=" else (res[k] <= v if op == "<=" else res[k] < v)
    if "batch_fps" in res and "16" in res["batch_fps"] and "1" in res["batch_fps"]:
        out["batch16_over_single"] = res["batch_fps"]["16"] >= 4 * res["batch_fps"]["1"]
    return out


def main_bench(args) -> int:
    if args.sampling_steps is not None and (args.sampling_steps < 1 or args.compare_precision or args.bridge):
        raise SystemExit("worldsim bench: --sampling-steps takes a count >= 1 and applies to the in-process figures "
                         "only (not with --compare-precision or --bridge: the bridge server runs the world's own count)")
    alone = [f for f, on in (("--compare-precision", args.compare_precision), ("--compare-world", args.compare_world),
                             ("--compare-attention", args.compare_attention), ("--bridge", args.bridge)) if on]
    if len(alone) > 1:
        raise SystemExit(f"worldsim bench: {' and '.join(alone)} each run on their own: pick one")
    if args.sampling_steps is not None and args.compare_attention:
        raise SystemExit("worldsim bench: --compare-attention runs the world's own step count (no --sampling-steps)")
    if args.json:
        check_output_file(args.json)  # now, not after minutes of measuring
    from worldsim.bench.compare import compare_attention, compare_precisions, compare_worlds
    if args.compare_attention:
        return _emit({"attention_compare": compare_attention(args.world, ticks=args.ticks, progress=not args.quiet,
                                                             device=args.device)},
                     args.json)
    if args.compare_precision:
        return _emit({"precision_compare": compare_precisions(args.world, ticks=args.ticks, progress=not args.quiet,
                                                              device=args.device)},
                     args.json)
    if args.compare_world:
        return _emit({"world_compare": compare_worlds(args.world, args.compare_world, ticks=args.ticks,
                                                      sampling_steps=args.sampling_steps, progress=not args.quiet,
                                                      device=args.device)},
                     args.json)
    res = run_bench(args.world, ticks=args.ticks, rss_ticks=args.rss_ticks, baseline=not args.no_baseline,
                    cold=not args.no_cold, progress=not args.quiet, sampling_steps=args.sampling_steps,
                    device=args.device)
    res["targets_met"] = check_targets(res)
    if args.bridge:
        from worldsim.bench.bridge_bench import run_bridge_bench

        res["bridge"] = run_bridge_bench(args.world, ticks=args.ticks, seconds=args.bridge_seconds,
                                         progress=not args.quiet, device=args.device)
    return _emit(res, args.json)


def _emit(res: dict[str, Any], path: str | None) -> int:
    text = json.dumps(res, indent=1)
    print(text, flush=True)  # first: a failed write below loses no figure
    if path:
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).write_text(text + "\n")
        except OSError as e:
            raise WorldsimError(f"--json {path}: cannot write there ({e.strerror or e}); the figures are above") from None
    return 0


def add_bench_args(p) -> None:
    p.add_argument("--world", default="default", help="world checkpoint (default: the shipped default world)")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--ticks", type=int, default=300, help="ticks in the single-session timing run")
    p.add_argument("--rss-ticks", type=int, default=10000, help="ticks in the memory run (0 skips it)")
    p.add_argument("--device", type=device_arg, help=DEVICE_HELP + "; the baseline and matmul run there too")
    p.add_argument("--no-baseline", action="store_true", help="skip the DIAMOND-class baseline")
    p.add_argument("--no-cold", action="store_true", help="skip the cold-start subprocess")
    p.add_argument("--bridge", action="store_true",
                   help="also measure the ZeroMQ bridge: per-tick overhead vs in process, realtime sessions held")
    p.add_argument("--bridge-seconds", type=float, default=8.0, help="seconds per realtime session count")
    p.add_argument("--compare-precision", action="store_true",
                   help="only measure fp32 vs bf16 (and int8 where it runs) side by side (single session, --ticks each, and a "
                        "batch of 16, interleaved) and which one auto picks")
    p.add_argument("--compare-world", metavar="OTHER",
                   help="only measure --world and OTHER side by side in one process (single session and batch of 16, "
                        "interleaved): e.g. a retrained decoder against the shipped one")
    p.add_argument("--compare-attention", action="store_true",
                   help="only measure the dynamics' two attention kernels (plain, SDPA) side by side on --world "
                        "(single session and batch of 16, interleaved) and which one this world streams with")
    p.add_argument("--sampling-steps", type=int, default=None,
                   help="Euler steps per tick instead of the world's own count (what `worldsim play --sampling-steps` runs)")
    p.add_argument("--quiet", action="store_true")
