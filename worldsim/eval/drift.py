"""Long free-running rollouts: does the model stay inside the real data's range?

One rollout of ``drift_steps`` steps starts (after real context) at the beginning of the
longest evaluation episode and follows its recorded actions; when they run out it goes on
with the actions of the next episodes in turn (never resetting its frames). Per window of
100 steps it reports mean brightness (luma), edge energy (mean gradient magnitude), the
colour-histogram distance to the real data (total variation, see metrics.py) and, while
the ground truth episode lasts, PSNR against it.

The real reference is the same statistics over 100-step windows (stride 50) of the real
episodes; a generated window is *in range* when its brightness and edge energy lie within
the real 1st–99th percentiles and its histogram distance is at most the real 99th.

``collapsed`` is true when any frame was NaN/inf, or the last window is blank (luma std
< 2), saturated (brightness < 5 or > 250) or flat (edge energy < 25 % of the real 1st
percentile). ``frozen`` (reported, not a collapse) is true when the last window barely
changes (mean |Δ| between consecutive frames < 0.5) while real windows do move.
"""

from __future__ import annotations

import time
from typing import Any, Sequence

import numpy as np

from worldsim.eval.interface import build_context, sanitize_audio, sanitize_frame
from worldsim.eval.metrics import brightness, colour_hist, gradient_energy, hist_distance, luma, psnr, to_eval_res
from worldsim.eval.rollout import rollout_seed

WINDOW = 100


def _motion(frames: np.ndarray) -> float:
    if len(frames) < 2:
        return 0.0
    f = frames.astype(np.float32)
    return float(np.abs(f[1:] - f[:-1]).mean())


def real_reference(episodes: Sequence[Any], window: int = WINDOW) -> dict[str, Any]:
    """Per-window statistics of the real episodes and their 1st–99th percentile ranges."""
    stride = max(1, window // 2)
    all_frames = [to_eval_res(np.asarray(e.frames)) for e in episodes]
    ref_hist = colour_hist(np.concatenate([f[::4] for f in all_frames]))
    stats: dict[str, list[float]] = {"brightness": [], "edge_energy": [], "hist_dist": [], "motion": []}
    for f in all_frames:
        b, g = brightness(f), gradient_energy(f)
        for lo in range(0, max(1, len(f) - window + 1), stride):
            w = slice(lo, lo + window)
            stats["brightness"].append(float(b[w].mean()))
            stats["edge_energy"].append(float(g[w].mean()))
            stats["hist_dist"].append(hist_distance(colour_hist(f[w]), ref_hist))
            stats["motion"].append(_motion(f[w]))
    # 'lower'/'higher' pick actual window values: with fewer than 100 windows the range is min..max
    ranges = {k: [float(np.percentile(v, 1, method="lower")), float(np.percentile(v, 99, method="higher"))]
              for k, v in stats.items()}
    return {"hist": ref_hist, "ranges": ranges, "windows": len(stats["brightness"]),
            "median_motion": float(np.median(stats["motion"]))}


def _action_stream(episodes: Sequence[Any], first: int, start: int, steps: int, buttons_only: bool = False):
    """Yield (buttons, axes) for ``steps`` steps: episode ``first`` from ``start``, then the next ones,
    cycling; ``buttons_only`` holds every axis at 0 (a keyboard player: no mouse)."""
    ei, t, n = first, start, 0
    while n < steps:
        e = episodes[ei]
        if t >= len(e):
            ei, t = (ei + 1) % len(episodes), 0
            continue
        axes = np.array(e.axes[t])
        yield np.array(e.buttons[t]), (np.zeros_like(axes) if buttons_only else axes)
        t += 1
        n += 1


def drift_rollout(model: Any, episodes: Sequence[Any], steps: int, seed: int, ref: dict[str, Any],
                  audio_ok: bool, bar: Any = None, window: int = WINDOW, buttons_only: bool = False) -> dict[str, Any]:
    """The rollout described in the module docstring; ``buttons_only`` follows the recorded buttons
    with every axis held at 0 — how a keyboard player drives a world recorded with a mouse (the
    ground-truth PSNR then compares against frames the player did not steer toward)."""
    res = tuple(model.resolution)
    first = int(np.argmax([len(e) for e in episodes]))
    e = episodes[first]
    s = model.context_steps - 1
    ctx = build_context(e.frames, e.buttons, e.axes, e.audio if audio_ok else None, s, model.context_steps)
    if tuple(ctx["frames"].shape[1:3]) != res:
        ctx["frames"] = to_eval_res(ctx["frames"], res)
    session = model.open(ctx, seed=rollout_seed(seed, 1_000_000 + first, s))
    gen = np.zeros((steps, 64, 64, 3), np.uint8)
    bad, t_step = 0, 0.0
    for k, (b, a) in enumerate(_action_stream(episodes, first, s, steps, buttons_only)):
        t0 = time.perf_counter()
        frame, snd = session.step(b, a)
        t_step += time.perf_counter() - t0
        frame, was_bad = sanitize_frame(frame, res)
        sanitize_audio(snd, model.audio_spec)
        bad += int(was_bad)
        gen[k] = to_eval_res(frame)
        if bar is not None:
            bar.update(1)
    if hasattr(session, "close"):
        session.close()
    n_truth = max(0, min(steps, len(e) - 1 - s))  # generated step k is real frame s+k+1
    truth = to_eval_res(np.asarray(e.frames[s + 1:s + 1 + n_truth]))
    w = window if steps >= window else steps
    bright, edge, hist, ps, motion = [], [], [], [], []
    g_b, g_e = brightness(gen), gradient_energy(gen)
    for lo in range(0, steps - w + 1, w):
        sl = slice(lo, lo + w)
        bright.append(float(g_b[sl].mean()))
        edge.append(float(g_e[sl].mean()))
        hist.append(hist_distance(colour_hist(gen[sl]), ref["hist"]))
        motion.append(_motion(gen[sl]))
        hi = min(lo + w, n_truth)
        ps.append(float(psnr(gen[lo:hi], truth[lo:hi]).mean()) if hi - lo >= w // 2 else None)
    rng_ = ref["ranges"]
    in_b = [rng_["brightness"][0] <= v <= rng_["brightness"][1] for v in bright]
    in_e = [rng_["edge_energy"][0] <= v <= rng_["edge_energy"][1] for v in edge]
    in_h = [v <= rng_["hist_dist"][1] for v in hist]
    in_all = [x and y and z for x, y, z in zip(in_b, in_e, in_h)]
    last = gen[-w:]
    reasons = []
    if bad:
        reasons.append(f"{bad} non-finite frames")
    if float(luma(last).reshape(len(last), -1).std(axis=1).mean()) < 2.0:
        reasons.append("blank (no spatial variation)")
    if bright and not 5.0 <= bright[-1] <= 250.0:
        reasons.append(f"saturated (brightness {bright[-1]:.1f})")
    if edge and edge[-1] < 0.25 * rng_["edge_energy"][0]:
        reasons.append(f"flat (edge energy {edge[-1]:.2f} < 25% of the real 1st percentile {rng_['edge_energy'][0]:.2f})")
    return {
        "steps": steps,
        "buttons_only": buttons_only,
        "window": w,
        "start": {"episode": e.path.name, "step": s},
        "ground_truth_steps": n_truth,
        "brightness": bright,
        "edge_energy": edge,
        "hist_dist": hist,
        "motion": motion,
        "psnr": ps,
        "real_range": {k: v for k, v in rng_.items() if k != "motion"},
        "real_windows": ref["windows"],
        "in_range": {
            "brightness": float(np.mean(in_b)) if in_b else None,
            "edge_energy": float(np.mean(in_e)) if in_e else None,
            "hist_dist": float(np.mean(in_h)) if in_h else None,
        },
        "frac_windows_in_range": float(np.mean(in_all)) if in_all else None,
        "bad_frames": bad,
        "collapsed": bool(reasons),
        "collapse_reason": "; ".join(reasons) or None,
        "frozen": bool(motion and motion[-1] < 0.5 and ref["median_motion"] > 2.0),
        "ms_per_step": 1000.0 * t_step / max(1, steps),
    }
