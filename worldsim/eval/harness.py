"""`worldsim eval`: score a StreamingModel against held-out episodes and the two baselines.

    from worldsim.eval.harness import run_eval, load_model
    result = run_eval(load_model("baseline:shift", "data/heldout"), "data/heldout", json_out="eval.json")

The result (also written as JSON) has these keys, horizons as strings:

    psnr_tf, ssim_tf                      teacher-forced one-step PSNR (dB, capped 100) / SSIM
    psnr_free, ssim_free, sharpness_ratio {horizon: value}, free-running under recorded actions
    baseline_copy_last, baseline_shift    the same per-model keys for the two baselines
    drift                                 a ≥ drift_steps rollout vs the real data's range (drift.py)
    drift_buttons_only                    the same rollout with every axis held at 0 (no mouse; None
                                          when the data has no axes)
    action_acc_real, action_acc_generated action probe balanced accuracy on real / generated pairs
    audio_onset_within_1                  fraction of real sound onsets reproduced within ±1 step
    audio_logmel_dist                     log-mel distance (dB); audio_logmel_dist_silence beside it
    loop_closure_psnr_memory_on / _off    null unless the model has set_memory() and data has loops
    loop_closure_psnr_tf                  the model's teacher-forced PSNR on the same return views
    loop_closure_psnr_recall              the best-matching real context frame's PSNR on them (what pure recall scores)
    action_acc_reason, audio_reason, loop_closure_reason   why a metric is null (else null)
    ms_per_step                           mean wall time of session.step
    meta                                  data dir, episodes, horizons, seed, model spec, timings
    details                               probe, shift calibration, curves, counts; audio.by_cause:
                                          onsets reproduced after attack / after use / other (audio.py);
                                          audio.misses: missed onsets by kind (silent / shifted / no_rise)
                                          audio.codec_roundtrip: the same scores for the real sound
                                          through the model's audio codec (models with audio_roundtrip)
                                          per_start (and baseline_*.per_start): each point's own scores,
                                          for paired intervals in --compare (paired.py)

``psnr_tf`` and ``psnr_free["1"]`` measure the same thing on different points: teacher-forced
points come from the action probe's held-out blocks (so the probe reads exactly those pairs),
free-running starts are spread over whole episodes. Baselines are scored on the same points.

Importing this module has no side effects and imports no torch/matplotlib; they load on use.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.eval.interface import EvalConfigError, StreamingModel
from worldsim.eval.registry import ModelUnavailable, load_model, register_model_loader  # noqa: F401  (re-exported)

DEFAULT_HORIZONS = (1, 4, 16, 64)
DEFAULT_TF_POINTS = 384
DEFAULT_FREE_STARTS = 48


def _same_schema(a: Any, b: Any) -> bool:
    return tuple(a.buttons) == tuple(b.buttons) and tuple(a.axes) == tuple(b.axes)


def run_eval(model: StreamingModel, data_dir: str | os.PathLike, horizons=DEFAULT_HORIZONS, episodes: int | None = None,
             seed: int = 0, json_out=None, plots_dir=None, drift_steps: int = 1000, cache_dir=None,
             progress: bool = True, *, tf_points: int = DEFAULT_TF_POINTS, free_starts: int = DEFAULT_FREE_STARTS,
             probe_config: Any = None, baselines: bool = True, model_spec: str | None = None,
             threads: int | None = 1, loop_data: str | os.PathLike | None = None) -> dict[str, Any]:
    """Evaluate ``model`` on the episodes in ``data_dir``; returns (and optionally writes) the report dict.

    Args:
        horizons: free-running horizons (positive ints); one rollout of ``max(horizons)`` serves all.
        episodes: use only the first N episodes (sorted by path); None = all.
        drift_steps: length of the drift rollout (0 skips it).
        cache_dir: where the action probe's weights are cached (default ``<data_dir>/.probe_cache``).
        tf_points / free_starts: how many teacher-forced points and free-running start points.
        probe_config: a :class:`worldsim.eval.probe.ProbeConfig` (tests use a small one).
        threads: ``torch.set_num_threads`` while it runs (restored afterwards; None leaves it alone).
        loop_data: episodes with loops for the memory test (default: loops searched in ``data_dir``).
    """
    if threads is None:
        return _run_eval(model, data_dir, horizons, episodes, seed, json_out, plots_dir, drift_steps, cache_dir,
                         progress, tf_points, free_starts, probe_config, baselines, model_spec, loop_data)
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _run_eval(model, data_dir, horizons, episodes, seed, json_out, plots_dir, drift_steps, cache_dir,
                         progress, tf_points, free_starts, probe_config, baselines, model_spec, loop_data)
    finally:
        torch.set_num_threads(before)


def _run_eval(model, data_dir, horizons, episodes, seed, json_out, plots_dir, drift_steps, cache_dir, progress,
              tf_points, free_starts, probe_config, baselines, model_spec, loop_data=None) -> dict[str, Any]:
    from tqdm import tqdm

    from worldsim.data import open_episodes
    from worldsim.eval import baselines as bl
    from worldsim.eval.drift import drift_rollout, real_reference
    from worldsim.eval.interface import check_model, model_name
    from worldsim.eval.memory import loop_closure
    from worldsim.eval.probe import ProbeConfig, ProbeUnavailable, load_or_train_probe
    from worldsim.eval.report import write_json, write_plots
    from worldsim.eval.rollout import make_plan, score_model

    t_start = time.perf_counter()
    horizons = tuple(sorted({int(h) for h in horizons}))
    if not horizons or horizons[0] < 1:
        raise EvalConfigError("horizons must be positive integers")
    check_model(model)
    eps = open_episodes(data_dir)
    if episodes is not None:
        if episodes < 1:
            raise EvalConfigError("episodes must be ≥ 1")
        eps = eps[:episodes]
    e0 = eps[0]
    for e in eps[1:]:
        if not _same_schema(e.schema, e0.schema) or e.resolution != e0.resolution:
            raise EvalConfigError(f"{e.path}: action schema or resolution differs from {e0.path}")
    if not _same_schema(model.schema, e0.schema):
        raise EvalConfigError(f"the model's action schema (buttons {list(model.schema.buttons)}, axes {list(model.schema.axes)}) "
                              f"differs from the data's ({list(e0.schema.buttons)}, {list(e0.schema.axes)})")
    data_audio = e0.meta.get("audio")
    audio_reason = None
    if data_audio is None:
        audio_reason = "the data has no audio"
    elif model.audio_spec is not None and dict(model.audio_spec) != dict(data_audio):
        audio_reason = f"the model's audio spec {model.audio_spec} differs from the data's {data_audio}"
    audio_ok = audio_reason is None

    # the two baselines (reusing the model's own scores when it is one of them)
    models: dict[str, Any] = {"model": model}
    if baselines:
        models["copy_last"] = model if isinstance(model, bl.CopyLastModel) else \
            bl.CopyLastModel(e0.schema, e0.resolution, data_audio)
        models["shift"] = model if isinstance(model, bl.ShiftModel) else \
            bl.ShiftModel(e0.schema, e0.resolution, data_audio, bl.calibrate_shift(eps, seed=seed))

    # where to evaluate (before the probe trains, so impossible settings fail fast)
    pcfg = probe_config or ProbeConfig()  # the probe is the instrument: not re-drawn with the eval's seed
    context = max(m.context_steps for m in models.values())
    plan = make_plan(eps, context, horizons, tf_points, free_starts, seed, pcfg)
    # the action probe
    probe, probe_reason = None, None
    try:
        cache = Path(cache_dir) if cache_dir is not None else Path(data_dir) / ".probe_cache"
        probe = load_or_train_probe(eps, pcfg, cache, progress=progress)
    except ProbeUnavailable as e:
        probe_reason = str(e)

    per_model = len(plan.tf_points) + len(plan.free_starts) * plan.max_h
    distinct = {id(m) for m in models.values()}
    has_axes = any(np.asarray(e.axes).size and np.any(np.asarray(e.axes) != 0) for e in eps)
    bar = tqdm(total=per_model * len(distinct) + drift_steps * (2 if has_axes else 1), desc=f"eval {model_name(model)}", disable=not progress,
               unit="step", dynamic_ncols=True)
    scores: dict[int, tuple[dict, dict]] = {}
    for m in models.values():
        if id(m) not in scores:
            bar.set_description(f"eval {model_name(m)}")
            scores[id(m)] = score_model(m, eps, plan, seed, probe, audio_ok, data_audio if audio_ok else None, bar)
    drift = drift_keys = None
    if drift_steps > 0:
        bar.set_description("eval drift")
        ref = real_reference(eps)
        drift = drift_rollout(model, eps, drift_steps, seed, ref, audio_ok, bar)
        if has_axes:  # a keyboard player never moves the mouse: does the world hold up without it?
            bar.set_description("eval drift, buttons only")
            drift_keys = drift_rollout(model, eps, drift_steps, seed, ref, audio_ok, bar, buttons_only=True)
    bar.close()
    loop_eps = eps
    if loop_data is not None:
        loop_eps = open_episodes(loop_data)
        loop_audio = audio_ok and all(e.meta.get("audio") == eps[0].meta.get("audio") for e in loop_eps)
    loops = loop_closure(model, loop_eps, seed, audio_ok and (loop_data is None or loop_audio), None)

    main, main_ex = scores[id(model)]
    result: dict[str, Any] = dict(main)
    result["baseline_copy_last"] = dict(scores[id(models["copy_last"])][0]) if baselines else None
    result["baseline_shift"] = dict(scores[id(models["shift"])][0]) if baselines else None
    result["drift"] = drift
    result["drift_buttons_only"] = drift_keys
    result["action_acc_reason"] = probe_reason
    result["audio_reason"] = audio_reason
    result["loop_closure_psnr_memory_on"] = loops["on"]
    result["loop_closure_psnr_memory_off"] = loops["off"]
    result["loop_closure_psnr_tf"] = loops["tf"]
    result["loop_closure_psnr_recall"] = loops["recall"]
    result["loop_closure_reason"] = loops["reason"]
    details: dict[str, Any] = {
        "psnr_cap_db": 100.0,
        "psnr_free_curve": main_ex["psnr_free_curve"],
        "bad_frames": main_ex["bad_frames"],
        "action_real": main_ex.get("action_real"),
        "action_generated": main_ex.get("action_generated"),
        "action_chance": (main_ex.get("action_real") or {}).get("chance"),
        "probe": probe.info if probe is not None else None,
        "audio": main_ex.get("audio"),
        "loops": loops["loops"],
        "loop_patterns": loops["patterns"],
        "loop_data": str(loop_data) if loop_data is not None else None,
        "per_start": main_ex["per_start"],
    }
    if baselines:
        details["shift_calibration"] = models["shift"].calib.to_dict()
        for key in ("copy_last", "shift"):
            ex = scores[id(models[key])][1]
            details[f"baseline_{key}"] = {"psnr_free_curve": ex["psnr_free_curve"],
                                          "action_generated": ex.get("action_generated"),
                                          "per_start": ex["per_start"]}
    result["details"] = details
    result["meta"] = {
        "data_dir": str(data_dir),
        "episodes": [e.path.name for e in eps],
        "episode_count": len(eps),
        "steps": int(sum(len(e) for e in eps)),
        "horizons": list(horizons),
        "seed": seed,
        "model": model_spec or getattr(model, "spec", None) or model_name(model),
        "context_steps": context,
        "sampling_steps": getattr(getattr(getattr(model, "sampler", None), "cfg", None), "steps", None),
        "temperature": getattr(getattr(getattr(model, "sampler", None), "cfg", None), "temperature", None),
        "tf_points": len(plan.tf_points),
        "free_starts": len(plan.free_starts),
        "drift_steps": drift_steps,
        "wall_seconds": round(time.perf_counter() - t_start, 2),
    }
    if json_out:
        write_json(result, json_out)
    if plots_dir:
        extras = {"model": main_ex}
        if baselines:
            extras.update(copy_last=scores[id(models["copy_last"])][1], shift=scores[id(models["shift"])][1])
        write_plots(result, extras, plots_dir)
        if loops["strip"] is not None:
            import cv2

            big = loops["strip"].repeat(2, 0).repeat(2, 1)  # rows: loops; columns: real | memory on | memory off
            bar = np.zeros((20, big.shape[1], 3), np.uint8)
            for i, text in enumerate(("real", "memory on", "memory off")):
                cv2.putText(bar, text, (i * big.shape[1] // 3 + 6, 14), cv2.FONT_HERSHEY_SIMPLEX, 0.45,
                            (255, 255, 255), 1)
            cv2.imwrite(str(Path(plots_dir) / "loop_strip.png"), np.concatenate([bar, big])[:, :, ::-1])
    return result


# ----- command line ---------------------------------------------------------------------------
def add_eval_args(parser: argparse.ArgumentParser) -> None:
    """Add the `worldsim eval` options. Values are validated by :func:`main_eval` (one-line errors)."""
    parser.add_argument("--checkpoint", default="default",
                        help="model to evaluate: baseline:copy-last, baseline:shift, default, or a checkpoint path; "
                             "prior:WORLD shows that world's turn prior, decoded, in place of its pictures (a diagnostic)")
    parser.add_argument("--data", default=None, help="held-out episodes directory (default: $WORLDSIM_DATA/heldout, i.e. data/heldout)")
    parser.add_argument("--horizons", default=",".join(map(str, DEFAULT_HORIZONS)),
                        help="comma-separated free-running horizons in steps (default 1,4,16,64)")
    parser.add_argument("--episodes", default=None, help="use only the first N episodes (default: all)")
    parser.add_argument("--json", default=None, help="write the report as JSON to this file")
    parser.add_argument("--plots", default=None, help="write PNG plots and summary.md into this directory")
    parser.add_argument("--seed", default="0", help="seed for start points and model sampling (default 0)")
    parser.add_argument("--drift-steps", default="1000", help="length of the drift rollout (default 1000; 0 skips)")
    parser.add_argument("--sampling-steps", default=None,
                        help="sample a world with this many Euler steps per tick instead of its world.json's "
                             "(the sharpness/speed trade-off; baselines ignore it)")
    parser.add_argument("--temperature", default=None,
                        help="scale a world's start noise by this (> 0; default its world.json's, 1): below 1 trades "
                             "detail for PSNR (baselines ignore it)")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda, cuda:N: where a world runs (default: cuda when the machine has it, else cpu)")
    parser.add_argument("--tf-points", default=str(DEFAULT_TF_POINTS),
                        help=f"teacher-forced evaluation points (default {DEFAULT_TF_POINTS})")
    parser.add_argument("--free-starts", default=str(DEFAULT_FREE_STARTS),
                        help=f"free-running start points (default {DEFAULT_FREE_STARTS})")
    parser.add_argument("--probe-pairs", default="4000", help="real frame pairs the action probe trains on (default 4000)")
    parser.add_argument("--cache-dir", default=None, help="action-probe cache (default <data>/.probe_cache)")
    parser.add_argument("--loop-data", default=None,
                        help="episodes with loops for the memory test (default: data/loops when it exists; "
                             "record with `worldsim record vizdoom --loops`; 'none' uses --data)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--compare", nargs="+", default=None, metavar="REPORT",
                        help="evaluate nothing: print saved reports (--json outputs) side by side as a markdown "
                             "table, with the baselines and targets, each later one's difference to the first")


class _ArgError(ValueError):
    pass


def _int_arg(value: Any, flag: str, minimum: int) -> int:
    try:
        v = int(str(value).strip())
    except ValueError:
        raise _ArgError(f"{flag} must be an integer, got {value!r}") from None
    if v < minimum:
        raise _ArgError(f"{flag} must be ≥ {minimum}, got {v}")
    return v


def _positive_float(value: Any, flag: str) -> float:
    try:
        v = float(str(value).strip())
    except ValueError:
        raise _ArgError(f"{flag} must be a number, got {value!r}") from None
    if not v > 0 or v == float("inf"):
        raise _ArgError(f"{flag} must be > 0 and finite, got {value!r}")
    return v


def parse_horizons(text: Any) -> tuple[int, ...]:
    parts = [p.strip() for p in str(text).split(",") if p.strip()]
    try:
        hs = tuple(int(p) for p in parts)
    except ValueError:
        raise _ArgError(f"--horizons must be comma-separated positive integers like 1,4,16,64, got {text!r}") from None
    if not hs or min(hs) < 1:
        raise _ArgError(f"--horizons must be comma-separated positive integers like 1,4,16,64, got {text!r}")
    return hs


def _fail(msg: str) -> int:
    print(f"worldsim eval: error: {msg}", file=sys.stderr)
    return 2


def main_eval(args: argparse.Namespace) -> int:
    """Run `worldsim eval`; returns the exit code (2 for bad arguments, with a one-line error)."""
    from worldsim.data.dataset import default_data_dir
    from worldsim.data.episode import EpisodeFormatError, list_episodes
    from worldsim.device import check_device
    from worldsim.errors import WorldsimError, check_output_file
    from worldsim.eval.probe import ProbeConfig

    g = lambda name, default=None: getattr(args, name, default)  # noqa: E731  (the CLI may build its own Namespace)
    if g("compare"):
        from worldsim.eval.compare import compare_markdown
        try:
            print(compare_markdown(g("compare")))
        except WorldsimError as e:
            return _fail(str(e))
        return 0
    try:
        horizons = parse_horizons(g("horizons", "1,4,16,64"))
        episodes = None if g("episodes") in (None, "") else _int_arg(g("episodes"), "--episodes", 1)
        seed = _int_arg(g("seed", 0), "--seed", 0)
        drift_steps = _int_arg(g("drift_steps", 1000), "--drift-steps", 0)
        tf_points = _int_arg(g("tf_points", DEFAULT_TF_POINTS), "--tf-points", 1)
        free_starts = _int_arg(g("free_starts", DEFAULT_FREE_STARTS), "--free-starts", 1)
        probe_pairs = _int_arg(g("probe_pairs", 4000), "--probe-pairs", 16)
        steps = None if g("sampling_steps") in (None, "") else _int_arg(g("sampling_steps"), "--sampling-steps", 1)
        device = None if g("device") is None else check_device(g("device"))
        temperature = None if g("temperature") in (None, "") else _positive_float(g("temperature"), "--temperature")
        data = Path(g("data") or (default_data_dir() / "heldout"))
        if not data.exists():
            raise _ArgError(f"--data {data}: no such directory (record one with `worldsim record vizdoom`)")
        list_episodes(data)
        loop_data = g("loop_data")
        if loop_data in (None, ""):
            guess = default_data_dir() / "loops"
            loop_data = guess if guess.exists() and list_episodes(guess) else None
        elif str(loop_data) == "none":
            loop_data = None
        else:
            loop_data = Path(loop_data)
            if not loop_data.exists():
                raise _ArgError(f"--loop-data {loop_data}: no such directory (record one with "
                                "`worldsim record vizdoom --loops`)")
            list_episodes(loop_data)
        for opt, out in (("--json", g("json")), ("--plots", g("plots"))):
            if out:
                check_output_file(out if opt == "--json" else Path(out) / "summary.md", opt)
        spec = str(g("checkpoint") or "default")
        model = load_model(spec, data, episodes=episodes, seed=seed, sampling_steps=steps, device=device,
                           temperature=temperature)
    except (_ArgError, ModelUnavailable, EpisodeFormatError, WorldsimError) as e:
        return _fail(str(e))
    try:
        result = run_eval(model, data, horizons=horizons, episodes=episodes, seed=seed, json_out=g("json"),
                          plots_dir=g("plots"), drift_steps=drift_steps, cache_dir=g("cache_dir"),
                          progress=not g("no_progress", False), tf_points=tf_points, free_starts=free_starts,
                          model_spec=spec, probe_config=ProbeConfig(max_pairs=probe_pairs),
                          loop_data=loop_data)
    except (EvalConfigError, EpisodeFormatError) as e:  # data that cannot serve these arguments
        return _fail(str(e))
    from worldsim.eval.report import console_summary

    print(console_summary(result))
    for what, where in (("JSON", g("json")), ("plots", g("plots"))):
        if where:
            print(f"{what}: {where}")
    return 0
