"""Where to evaluate (the plan), how to roll a model out, and the per-model scores.

* **teacher-forced** point ``s``: context ending at real step ``s``, one ``step(action s)``,
  compared with real frame ``s+1``. Points are drawn from the probe's held-out blocks, so
  the action probe reads exactly these pairs (real ``s`` → real / generated ``s+1``).
* **free-running** start ``s``: the same context, then ``max(horizons)`` steps under the
  recorded actions ``s, s+1, …``, the model feeding on its own output. ``psnr_free[h]``
  is the mean PSNR of the ``h``-th generated frame against real frame ``s+h``; one rollout
  serves every horizon.

All start points honour the largest ``context_steps`` among the models compared (every
model is scored on the same frames) and are deterministic for the seed.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from worldsim.eval.audio import AudioScorer, onset_causes
from worldsim.eval.interface import EvalConfigError, build_context, sanitize_audio, sanitize_frame
from worldsim.eval.metrics import finite_mean, gradient_energy, psnr, ssim, to_eval_res
from worldsim.eval.paired import per_start_record
from worldsim.eval.probe import ProbeConfig, balanced_accuracy, is_val_step, label_actions


@dataclass
class Plan:
    horizons: tuple[int, ...]
    context: int  # largest context_steps of the models compared
    tf_points: list[tuple[int, int]]  # (episode, s)
    free_starts: list[tuple[int, int]]

    @property
    def max_h(self) -> int:
        return max(self.horizons)


def rollout_seed(seed: int, episode: int, start: int) -> int:
    return int(np.random.SeedSequence([seed, episode, start]).generate_state(1)[0])


def _spread(candidates: Sequence[tuple[int, int]], n: int, rng: np.random.Generator) -> list[tuple[int, int]]:
    """n of the candidates, evenly spaced through the (episode-ordered) list with a random phase."""
    if len(candidates) <= n:
        return list(candidates)
    pos = (np.arange(n) + rng.random()) * (len(candidates) / n)
    return [candidates[int(p)] for p in pos]


def make_plan(episodes: Sequence[Any], context: int, horizons: Sequence[int], tf_points: int, free_starts: int,
              seed: int, probe_cfg: ProbeConfig) -> Plan:
    rng = np.random.default_rng([seed, 1])
    h = max(horizons)
    free, tf_val, tf_any = [], [], []
    for ei, e in enumerate(episodes):
        t = np.arange(context - 1, len(e) - 1)  # s with a full context and a real s+1
        tf_any += [(ei, int(s)) for s in t]
        tf_val += [(ei, int(s)) for s in t[is_val_step(t, probe_cfg)]]
        free += [(ei, int(s)) for s in range(context - 1, len(e) - h)]
    if not free:
        longest = max(len(e) for e in episodes)
        raise EvalConfigError(f"no episode is long enough for context {context} + horizon {h} "
                              f"(longest has {longest} steps); use shorter --horizons")
    tf = _spread(tf_val if len(tf_val) >= min(tf_points, 32) else tf_any, tf_points, rng)
    return Plan(tuple(sorted(set(horizons))), context, tf, _spread(free, free_starts, rng))


@dataclass
class Rollouts:
    """Generated output of one model at a list of start points (frames at 64×64)."""

    frames: np.ndarray  # (N, L, 64, 64, 3) uint8
    audio: list[np.ndarray | None]  # per rollout (L, S, C) int16 or None
    bad_frames: int = 0
    step_seconds: float = 0.0
    steps: int = 0


def run_rollouts(model: Any, episodes: Sequence[Any], points: Sequence[tuple[int, int]], length: int, seed: int,
                 audio_ok: bool, bar: Any = None) -> Rollouts:
    """Roll ``model`` out for ``length`` steps from each ``(episode, s)`` under the recorded actions."""
    res = tuple(model.resolution)
    spec = model.audio_spec if audio_ok else None
    frames = np.zeros((len(points), length, 64, 64, 3), np.uint8)
    audio: list[np.ndarray | None] = []
    out = Rollouts(frames, audio)
    for i, (ei, s) in enumerate(points):
        e = episodes[ei]
        ctx = build_context(e.frames, e.buttons, e.axes, e.audio if spec is not None else None, s, model.context_steps)
        if tuple(ctx["frames"].shape[1:3]) != res:
            ctx["frames"] = to_eval_res(ctx["frames"], res)
        session = model.open(ctx, seed=rollout_seed(seed, ei, s))
        gen_audio = []
        for k in range(length):
            b, a = np.array(e.buttons[s + k]), np.array(e.axes[s + k])
            t0 = time.perf_counter()
            frame, snd = session.step(b, a)
            out.step_seconds += time.perf_counter() - t0
            out.steps += 1
            frame, bad = sanitize_frame(frame, res)
            out.bad_frames += int(bad)
            frames[i, k] = to_eval_res(frame)
            gen_audio.append(sanitize_audio(snd, model.audio_spec))
            if bar is not None:
                bar.update(1)
        if hasattr(session, "close"):
            session.close()
        audio.append(np.stack(gen_audio) if spec is not None and all(x is not None for x in gen_audio) else None)
    return out


def real_frames(episodes: Sequence[Any], points: Sequence[tuple[int, int]], offset: int, length: int) -> np.ndarray:
    """Real frames ``s+offset .. s+offset+length-1`` at each point, ``(N, length, 64, 64, 3)``."""
    return np.stack([to_eval_res(np.asarray(episodes[e].frames[s + offset:s + offset + length])) for e, s in points])


def score_model(model: Any, episodes: Sequence[Any], plan: Plan, seed: int, probe: Any, audio_ok: bool,
                data_audio: dict[str, int] | None, bar: Any = None) -> tuple[dict[str, Any], dict[str, Any]]:
    """The per-model keys of the report, plus extras (curves, sample frames) for plots/details."""
    h = plan.max_h
    tf = run_rollouts(model, episodes, plan.tf_points, 1, seed, audio_ok, bar)
    free = run_rollouts(model, episodes, plan.free_starts, h, seed, audio_ok, bar)
    tf_real = real_frames(episodes, plan.tf_points, 1, 1)[:, 0]
    tf_gen = tf.frames[:, 0]
    free_real = real_frames(episodes, plan.free_starts, 1, h)  # (N, h, 64, 64, 3)
    free_psnr = np.stack([psnr(free.frames[:, k], free_real[:, k]) for k in range(h)], axis=1)  # (N, h)
    psnr_curve = free_psnr.mean(axis=0)
    tf_psnr = psnr(tf_gen, tf_real)
    res: dict[str, Any] = {
        "psnr_tf": finite_mean(tf_psnr),
        "ssim_tf": finite_mean(ssim(tf_gen, tf_real)),
        "psnr_free": {str(k): float(psnr_curve[k - 1]) for k in plan.horizons},
        "ssim_free": {str(k): float(ssim(free.frames[:, k - 1], free_real[:, k - 1]).mean()) for k in plan.horizons},
        "sharpness_ratio": {},
    }
    edge_gen = {k: gradient_energy(free.frames[:, k - 1]) for k in plan.horizons}
    edge_real = {k: gradient_energy(free_real[:, k - 1]) for k in plan.horizons}
    for k in plan.horizons:
        g, r = edge_gen[k].mean(), edge_real[k].mean()
        res["sharpness_ratio"][str(k)] = float(g / r) if r > 0 else None
    per_start: dict[str, Any] = dict(psnr_tf=tf_psnr, edge_gen=edge_gen, edge_real=edge_real,
                                     psnr_free={k: free_psnr[:, k - 1] for k in plan.horizons})
    extras: dict[str, Any] = {"psnr_free_curve": [float(v) for v in psnr_curve], "bad_frames": tf.bad_frames + free.bad_frames}
    # action following, on exactly the teacher-forced pairs
    if probe is not None:
        prev = real_frames(episodes, plan.tf_points, 0, 1)[:, 0]
        cfg = probe.cfg
        lab = [label_actions(e.schema, e.buttons, e.axes, cfg) for e in episodes]
        true_c = np.array([lab[e][0][s] for e, s in plan.tf_points])
        true_s = np.array([lab[e][1][s] if lab[e][1] is not None else -1 for e, s in plan.tf_points])
        rc, rs = probe.predict(prev, tf_real)
        gc, gs = probe.predict(prev, tf_gen)
        m = true_s >= 0
        for key, pc, ps in (("action_real", rc, rs), ("action_generated", gc, gs)):
            extras[key] = dict(balanced_accuracy(pc, true_c),
                               mouse_sign=balanced_accuracy(ps[m], true_s[m]) if m.any() else None)
        res["action_acc_real"] = extras["action_real"]["balanced_acc"]
        res["action_acc_generated"] = extras["action_generated"]["balanced_acc"]
        per_start.update(action_true=true_c, action_pred=gc)
    else:
        res["action_acc_real"] = res["action_acc_generated"] = None
    # audio, over the free-running rollouts
    if data_audio is not None:
        sc = AudioScorer(data_audio["sample_rate"])
        # a model with an audio codec also scores the real sound passed through it: the ceiling
        # of what its generated latents can sound like (optional `audio_roundtrip` method)
        codec = AudioScorer(data_audio["sample_rate"]) if hasattr(model, "audio_roundtrip") else None
        for i, (ei, s) in enumerate(plan.free_starts):
            e = episodes[ei]
            a = e.audio
            real, causes = np.asarray(a[s + 1:s + 1 + h]), onset_causes(e.buttons, e.schema.buttons, s + 1, h)
            sc.add(np.asarray(a[s]), real, free.audio[i], causes)
            if codec is not None:
                rt = model.audio_roundtrip(real)
                if rt is None:
                    codec = None
                else:
                    codec.add(np.asarray(a[s]), real, rt, causes)
        ar = sc.result()
        if codec is not None:
            ar["codec_roundtrip"] = codec.result()
        extras["audio"] = ar
        per_start.update(onsets=sc.per_rollout, logmel=sc.dist)
        res["audio_onset_within_1"] = ar["onset_within_1"]
        res["audio_logmel_dist"] = ar["logmel_dist"]
        res["audio_logmel_dist_silence"] = ar["logmel_dist_silence"]
    else:
        res["audio_onset_within_1"] = res["audio_logmel_dist"] = res["audio_logmel_dist_silence"] = None
    res["ms_per_step"] = 1000.0 * (tf.step_seconds + free.step_seconds) / max(1, tf.steps + free.steps)
    # a strip for the plots: the first rollout at a few horizons
    extras["strip"] = {"real": free_real[0], "generated": free.frames[0]}
    extras["per_start"] = per_start_record(plan.tf_points, plan.free_starts, **per_start)
    return res, extras
