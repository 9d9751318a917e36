"""Loop closure: when the player comes back to a place, does the model remember it?

A *loop* is a pair of steps ``(t1, t2)`` of one episode, ``MIN_GAP ≤ t2 − t1 ≤ MAX_GAP``,
where the player stands within ``POS_TOL`` map units of where it stood at ``t1`` and faces
the same way (yaw within ``YAW_TOL`` degrees), having gone at least ``AWAY`` units away in
between. It needs ``pose.npy`` in the data.

For each loop the model gets real context ending at ``t1`` (so the place is in view), then
free-runs under the recorded actions to ``t2``; the score is the mean PSNR of its last
three generated frames against the real ``t2−2 .. t2``. It is run twice, after
``model.set_memory(True)`` and ``model.set_memory(False)``: a long-term memory should
score higher "on". Models without ``set_memory`` get ``null`` and a reason.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from worldsim.eval.metrics import psnr
from worldsim.eval.rollout import real_frames, run_rollouts

MIN_GAP, MAX_GAP = 48, 200
POS_TOL, YAW_TOL, AWAY = 48.0, 20.0, 192.0
MAX_LOOPS = 6


def find_loops(pose: np.ndarray, context: int) -> list[tuple[int, int]]:
    """Non-overlapping loops ``(t1, t2)`` of one episode's pose ``(T, 5)`` (x, y, z, yaw, pitch)."""
    p = np.asarray(pose, np.float64)
    xy, yaw = p[:, :2], p[:, 3]
    loops: list[tuple[int, int]] = []
    t1 = context - 1
    while t1 < len(p) - MIN_GAP:
        found = None
        for t2 in range(t1 + MIN_GAP, min(len(p), t1 + MAX_GAP + 1)):
            d = np.linalg.norm(xy[t2] - xy[t1])
            dyaw = abs((yaw[t2] - yaw[t1] + 180.0) % 360.0 - 180.0)
            if d <= POS_TOL and dyaw <= YAW_TOL and np.linalg.norm(xy[t1:t2] - xy[t1], axis=1).max() >= AWAY:
                found = t2
                break
        if found is not None:
            loops.append((t1, found))
            t1 = found + 1
        else:
            t1 += 10
    return loops


def loop_closure(model: Any, episodes: Sequence[Any], seed: int, audio_ok: bool, bar: Any = None) -> dict[str, Any]:
    """``{"on": psnr, "off": psnr, "loops": n, "reason": None}`` or nulls with a reason."""
    out: dict[str, Any] = {"on": None, "off": None, "loops": 0, "reason": None}
    if not callable(getattr(model, "set_memory", None)):
        out["reason"] = "the model has no memory switch (set_memory)"
        return out
    if any(e.pose is None for e in episodes):
        out["reason"] = "the data has no pose.npy, so loop trajectories cannot be found"
        return out
    cands = [(ei, t1, t2) for ei, e in enumerate(episodes) for t1, t2 in find_loops(e.pose, model.context_steps)]
    if not cands:
        out["reason"] = "no loop trajectories in the data (no return to a visited place within the gap limits)"
        return out
    cands = cands[:: max(1, len(cands) // MAX_LOOPS)][:MAX_LOOPS]
    scores: dict[str, list[float]] = {"on": [], "off": []}
    for flag in ("on", "off"):
        model.set_memory(flag == "on")
        for ei, t1, t2 in cands:
            L = t2 - t1
            r = run_rollouts(model, episodes, [(ei, t1)], L, seed, audio_ok, bar)
            real = real_frames(episodes, [(ei, t1)], L - 2, 3)[0]
            scores[flag].append(float(psnr(r.frames[0, -3:], real).mean()))
    model.set_memory(True)
    out.update(on=float(np.mean(scores["on"])), off=float(np.mean(scores["off"])), loops=len(cands))
    return out
