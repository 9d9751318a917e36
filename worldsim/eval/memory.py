"""Loop closure: when the player comes back to a place, does the model remember it?

A *loop* is a pair of steps ``(t1, t2)`` of one episode, ``MIN_GAP ≤ t2 − t1 ≤ MAX_GAP``,
where the player stands within ``POS_TOL`` map units of where it stood at ``t1`` and faces
the same way (yaw within ``YAW_TOL`` degrees), having gone at least ``AWAY`` units away in
between. It needs ``pose.npy`` in the data.

Loops come from episodes recorded with ``worldsim record vizdoom --loops`` (their meta lists
each scripted loop and whether the real player really closed it: 360° spins, out-and-back
walks, squares) or, failing that, are searched in any data with ``pose.npy`` as above.

For each loop the model gets real context ending at ``t1`` (so the place is in view), then
free-runs under the recorded actions to ``t2``; the score is the mean PSNR of its last
three generated frames against the real ``t2−2 .. t2``. It is run twice, after
``model.set_memory(True)`` and ``model.set_memory(False)``: a long-term memory should
score higher "on". The model's teacher-forced PSNR on the same three views (one step from
real context) is the ceiling a perfect memory could reach. A second reference, the *recall
ceiling*: the PSNR of the best-matching real context frame for each return view — what a
memory that only brings back what it saw could score; above it, the model must *generate*
the approach to the remembered view from the memory (a network trained with retrieved
memories), not retrieve it. Models without ``set_memory`` get ``null`` and a reason.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from worldsim.eval.metrics import psnr
from worldsim.eval.rollout import real_frames, run_rollouts

MIN_GAP, MAX_GAP = 48, 200
POS_TOL, YAW_TOL, AWAY = 48.0, 20.0, 192.0
MAX_LOOPS = 9


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


def loops_of(episodes: Sequence[Any], context: int) -> list[tuple[int, int, int, str]]:
    """``(episode, t1, t2, pattern)`` for every loop: the closed ones an episode's meta lists
    (``worldsim record vizdoom --loops``), else those found in its pose."""
    out = []
    for ei, e in enumerate(episodes):
        listed = e.meta.get("loops")
        if listed is not None:
            out += [(ei, int(l["t1"]), int(l["t2"]), str(l.get("pattern", "loop"))) for l in listed
                    if l.get("returned") and l["t1"] >= context - 1]
        elif e.pose is not None:
            out += [(ei, t1, t2, "found") for t1, t2 in find_loops(e.pose, context)]
    return out


def _pick(cands: list[tuple[int, int, int, str]], n: int) -> list[tuple[int, int, int, str]]:
    """Up to ``n`` loops, taking the patterns in turn so that each kind is represented."""
    by: dict[str, list] = {}
    for c in cands:
        by.setdefault(c[3], []).append(c)
    out: list = []
    while len(out) < n and any(by.values()):
        for k in sorted(by):
            if by[k] and len(out) < n:
                out.append(by[k].pop(0))
    return out


def loop_closure(model: Any, episodes: Sequence[Any], seed: int, audio_ok: bool, bar: Any = None,
                 max_loops: int = MAX_LOOPS) -> dict[str, Any]:
    """``{"on", "off", "tf", "loops", "patterns", "strip", "reason"}``: mean PSNR of the last three
    frames of each return with memory on / off, the model's teacher-forced PSNR on the same
    three views, and a strip (real | on | off) of each return's last frame."""
    out: dict[str, Any] = {"on": None, "off": None, "tf": None, "recall": None, "loops": 0, "patterns": {},
                           "strip": None, "reason": None}
    if not callable(getattr(model, "set_memory", None)):
        out["reason"] = "the model has no memory switch (set_memory)"
        return out
    cands = loops_of(episodes, model.context_steps)
    if not cands:
        out["reason"] = ("no loop trajectories in the data (record some with `worldsim record vizdoom --loops`, "
                         "or data with pose.npy that returns to a visited place)")
        return out
    cands = _pick(cands, max_loops)
    scores: dict[str, list[float]] = {"on": [], "off": [], "tf": [], "recall": []}
    last: dict[str, list[np.ndarray]] = {"real": [], "on": [], "off": []}
    try:
        for flag in ("on", "off"):
            model.set_memory(flag == "on")
            for ei, t1, t2, _ in cands:
                L = t2 - t1
                r = run_rollouts(model, episodes, [(ei, t1)], L, seed, audio_ok, bar)
                real = real_frames(episodes, [(ei, t1)], L - 2, 3)[0]
                scores[flag].append(float(psnr(r.frames[0, -3:], real).mean()))
                last[flag].append(r.frames[0, -1])
                if flag == "on":
                    last["real"].append(real[-1])
        model.set_memory(False)  # one step from real context: the model's own ceiling on these views
        for ei, t1, t2, _ in cands:
            tf = []
            for k in (2, 1, 0):
                r = run_rollouts(model, episodes, [(ei, t2 - k - 1)], 1, seed, audio_ok, bar)
                tf.append(float(psnr(r.frames[0, :1], real_frames(episodes, [(ei, t2 - k - 1)], 1, 1)[0]).mean()))
            scores["tf"].append(float(np.mean(tf)))
            c = model.context_steps
            ctx = real_frames(episodes, [(ei, t1)], 1 - c, c)[0]  # the real context t1-c+1 .. t1
            ret = real_frames(episodes, [(ei, t2)], -2, 3)[0]     # the scored views t2-2 .. t2
            scores["recall"].append(float(np.mean([max(float(psnr(c[None], r[None]).mean()) for c in ctx) for r in ret])))
    finally:
        model.set_memory(True)
    out.update({k: float(np.mean(v)) for k, v in scores.items()}, loops=len(cands))
    for i, (_, _, _, pat) in enumerate(cands):
        d = out["patterns"].setdefault(pat, {"loops": 0, "on": [], "off": [], "tf": [], "recall": []})
        d["loops"] += 1
        for k in ("on", "off", "tf", "recall"):
            d[k].append(round(scores[k][i], 2))
    out["strip"] = np.concatenate([np.concatenate([last[k][i] for k in ("real", "on", "off")], 1)
                                   for i in range(len(cands))], 0)  # (loops·64, 3·64, 3)
    return out
