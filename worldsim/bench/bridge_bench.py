"""`worldsim bench --bridge`: what the ZeroMQ bridge costs on top of the runtime, measured in one run.

The server runs as its own process (`worldsim serve`, one torch thread), as an engine would
use it; this process is the client. Figures (JSON keys under ``bridge``):

* ``overhead_ms_p50`` / ``overhead_ms_p99``: per lockstep tick, the client's round-trip time
  minus the server's own model time for that tick (reported in the reply's ``timings``), i.e.
  serialisation + transport + server bookkeeping, paired tick by tick;
* ``rtt_ms_p50`` / ``inprocess_ms_p50``: the whole round trip, and ``Session.step`` in this
  process for the same actions, side by side;
* ``realtime``: for each session count, the frames/s each realtime session received at the
  world's tick rate (min over sessions), frames the server dropped for slow clients, the mean
  sampling steps of those frames (the server sheds steps to keep the rate: declared degradation),
  and server errors; ``sessions_held`` is the largest count whose slowest session kept the target.
"""

from __future__ import annotations

import sys
import time
from typing import Any

import numpy as np

TARGET_OVERHEAD_MS = 1.0
TARGET_SESSION_FPS = 15.0


def _lockstep(client, actions: list) -> dict[str, float]:
    sid = client.open(mode="lockstep", seed=0)
    for a in actions[:10]:  # warm-up
        client.step(sid, a)
    rtt, over = [], []
    for a in actions:
        t = time.perf_counter()
        obs = client.step(sid, a)
        dt = (time.perf_counter() - t) * 1e3
        rtt.append(dt)
        over.append(dt - float(obs.timings.get("model_ms", 0.0)))
    client.close_session(sid)
    return {"rtt_ms_p50": float(np.percentile(rtt, 50)), "rtt_ms_p99": float(np.percentile(rtt, 99)),
            "overhead_ms_p50": float(np.percentile(over, 50)), "overhead_ms_p99": float(np.percentile(over, 99))}


def _inprocess(world_spec: str, actions: list, device: str | None = None) -> float:
    import torch

    from worldsim.runtime import World

    torch.set_num_threads(1)
    s = World.load(world_spec, device=device).open(seed=0)
    for a in actions[:10]:
        s.step(a)
    ts = []
    for a in actions:
        t = time.perf_counter()
        s.step(a)
        ts.append((time.perf_counter() - t) * 1e3)
    return float(np.percentile(ts, 50))


def _realtime(client, n: int, seconds: float, tick_rate: float, action: dict) -> dict[str, Any]:
    from engine_bridge.client import BridgeError

    sids = [client.open(mode="realtime", seed=i, credit=4) for i in range(n)]
    for sid in sids:
        client.act(sid, action)
    counts = dict.fromkeys(sids, 0)
    dropped = dict.fromkeys(sids, 0)
    steps: list[float] = []  # sampling steps of each counted frame: under load the server sheds them
    light: list[float] = []  # 1 where a frame was made with the light turn prior (the level below one step)
    t0 = time.monotonic()
    warm = t0 + 1.0  # frames in the first second are not counted (session start-up)
    while time.monotonic() - t0 < seconds + 1.0:
        try:
            obs = client.recv_obs(200)
        except BridgeError as e:
            if e.code != "UNKNOWN_SESSION":  # a late credit for the previous round's closed sessions
                raise
            continue
        if obs is not None and obs.sid in counts:
            dropped[obs.sid] = obs.dropped
            if time.monotonic() >= warm:
                counts[obs.sid] += 1
                steps.append(float(obs.timings.get("sampling_steps", 0)))
                light.append(float(obs.timings.get("light_prior", 0)))
    for sid in sids:
        client.close_session(sid)
    fps = [counts[s] / seconds for s in sids]
    return {"sessions": n, "min_fps": min(fps), "mean_fps": float(np.mean(fps)), "tick_rate": tick_rate,
            "frames_dropped": int(sum(dropped.values())), "mean_sampling_steps": float(np.mean(steps)) if steps else None,
            "light_prior_frac": float(np.mean(light)) if light else None}


def run_bridge_bench(world: str = "default", ticks: int = 300, session_counts=(1, 4, 8, 16),
                     seconds: float = 8.0, progress: bool = True, device: str | None = None) -> dict[str, Any]:
    from worldsim.bench.runtime_bench import _actions
    from worldsim.runtime import World

    say = (lambda m: print(m, file=sys.stderr)) if progress else (lambda m: None)
    w = World.load(world, device=device)
    acts = _actions(w, ticks)
    tick_rate = w.tick_rate
    del w
    from engine_bridge.client import BridgeClient
    from engine_bridge.spawn import ServerProcess

    res: dict[str, Any] = {"transport": "tcp loopback", "ticks": ticks}
    served = ["--max-sessions", "64", "--heartbeat-timeout-ms", "20000"] + (["--device", device] if device else [])
    with ServerProcess(world, served) as srv:
        with BridgeClient(srv.addr, timeout_ms=2000, retries=0) as client:
            res.update(_lockstep(client, acts))
            say(f"bridge lockstep: rtt p50 {res['rtt_ms_p50']:.2f} ms, overhead p50 {res['overhead_ms_p50']:.3f} ms")
            res["realtime"] = []
            for n in session_counts:
                r = _realtime(client, n, seconds, tick_rate, acts[0])
                res["realtime"].append(r)
                say(f"bridge realtime: {n} sessions, slowest {r['min_fps']:.1f} fps, "
                    f"{r['mean_sampling_steps'] or 0:.2f} sampling steps per frame on average, "
                    f"{100 * (r['light_prior_frac'] or 0):.0f} % with the light turn prior")
            stats = client.request("PING").get("stats", {})
        res["server_errors"] = int(stats.get("internal_errors", 0)) if stats else None
    res["inprocess_ms_p50"] = _inprocess(world, acts, device)
    held = [r["sessions"] for r in res["realtime"] if r["min_fps"] >= TARGET_SESSION_FPS]
    res["sessions_held"] = max(held, default=0)
    res["targets_met"] = {"overhead_ms_p50": res["overhead_ms_p50"] <= TARGET_OVERHEAD_MS,
                          "8_sessions_at_15_fps": any(r["sessions"] >= 8 and r["min_fps"] >= TARGET_SESSION_FPS
                                                      for r in res["realtime"])}
    return res
