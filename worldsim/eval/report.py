"""Writing the results: JSON, PNG plots (matplotlib, Agg) and a Markdown summary."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.eval.paired import against_baselines


def jsonable(x: Any, nd: int = 4) -> Any:
    """Plain JSON types: numpy scalars/arrays converted, NaN/inf → None, floats rounded."""
    if isinstance(x, dict):
        return {str(k): jsonable(v, nd) for k, v in x.items() if not str(k).startswith("_")}
    if isinstance(x, (list, tuple)):
        return [jsonable(v, nd) for v in x]
    if isinstance(x, np.ndarray):
        return jsonable(x.tolist(), nd)
    if isinstance(x, (bool, np.bool_)):
        return bool(x)
    if isinstance(x, (int, np.integer)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        return round(float(x), nd) if math.isfinite(float(x)) else None
    if x is None or isinstance(x, str):
        return x
    return str(x)


def write_json(result: dict[str, Any], path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(jsonable(result), indent=1) + "\n")
    return path


def _fmt(v: Any, nd: int = 2) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def write_plots(result: dict[str, Any], extras: dict[str, Any], plots_dir: str | Path) -> list[Path]:
    """psnr_vs_horizon.png, strip.png, drift.png and summary.md in ``plots_dir``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    out = Path(plots_dir)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    runs = [("copy-last", result.get("baseline_copy_last") or {}, extras.get("copy_last", {})),
            ("shift", result.get("baseline_shift") or {}, extras.get("shift", {})),
            ("model", result, extras.get("model", {}))]  # drawn last, on top
    style = {"model": dict(color="black", linestyle="--", linewidth=1.5)}
    hs = [int(h) for h in result["meta"]["horizons"]]

    # 1. PSNR / SSIM vs horizon
    fig, axs = plt.subplots(1, 2, figsize=(10, 4))
    for name, r, ex in runs:
        curve = ex.get("psnr_free_curve")
        if curve:
            axs[0].plot(range(1, len(curve) + 1), curve, label=name, **style.get(name, {}))
        if r.get("ssim_free"):
            axs[1].plot(hs, [r["ssim_free"][str(h)] for h in hs], marker="o", label=name, **style.get(name, {}))
    axs[0].set(xscale="log", xlabel="horizon (steps)", ylabel="PSNR (dB)", title="free-running PSNR")
    axs[1].set(xscale="log", xlabel="horizon (steps)", ylabel="SSIM", title="free-running SSIM")
    for a in axs:
        a.grid(alpha=0.3)
        a.legend()
    fig.tight_layout()
    written.append(out / "psnr_vs_horizon.png")
    fig.savefig(written[-1], dpi=100)
    plt.close(fig)

    # 2. real vs generated strip (the first free-running start point)
    rows = [("real", extras.get("model", {}).get("strip", {}).get("real"))]
    rows += [(name, ex.get("strip", {}).get("generated")) for name, _, ex in runs[::-1]]
    rows = [(n, f) for n, f in rows if f is not None]
    if rows:
        fig, axs = plt.subplots(len(rows), len(hs), figsize=(1.6 * len(hs), 1.7 * len(rows)), squeeze=False)
        for i, (name, frames) in enumerate(rows):
            for j, h in enumerate(hs):
                axs[i, j].imshow(frames[h - 1], interpolation="nearest")
                axs[i, j].set_xticks([])
                axs[i, j].set_yticks([])
                if i == 0:
                    axs[i, j].set_title(f"t+{h}", fontsize=9)
                if j == 0:
                    axs[i, j].set_ylabel(name, fontsize=9)
        fig.tight_layout()
        written.append(out / "strip.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)

    # 3. drift curves with the real 1st–99th percentile band
    d = result.get("drift")
    if d and d.get("brightness"):
        keys = [("brightness", "mean brightness"), ("edge_energy", "edge energy"), ("hist_dist", "colour-hist distance"),
                ("psnr", "PSNR vs ground truth (dB)")]
        fig, axs = plt.subplots(1, 4, figsize=(16, 3.5))
        x = [(i + 0.5) * d["window"] for i in range(len(d["brightness"]))]
        for a, (k, title) in zip(axs, keys):
            ys = [np.nan if v is None else v for v in d.get(k, [])]
            a.plot(x[:len(ys)], ys, marker="o")
            if k in d.get("real_range", {}):
                lo, hi = d["real_range"][k]
                a.axhspan(lo, hi, color="green", alpha=0.15, label="real 1–99 %")
                a.legend(fontsize=8)
            a.set(title=title, xlabel="step")
            a.grid(alpha=0.3)
        fig.suptitle(f"drift over {d['steps']} free-running steps" + (" — COLLAPSED" if d.get("collapsed") else ""))
        fig.tight_layout()
        written.append(out / "drift.png")
        fig.savefig(written[-1], dpi=100)
        plt.close(fig)

    written.append(out / "summary.md")
    written[-1].write_text(summary_markdown(result))
    return written


def summary_markdown(result: dict[str, Any]) -> str:
    m = result["meta"]
    hs = [str(h) for h in m["horizons"]]
    cols = [("model", result), ("copy-last", result.get("baseline_copy_last") or {}),
            ("shift", result.get("baseline_shift") or {})]
    lines = [f"# worldsim eval: {m.get('model')}", "",
             f"Data `{m['data_dir']}`: {m['episode_count']} episodes; seed {m['seed']}; "
             f"{m['tf_points']} teacher-forced points, {m['free_starts']} free-running starts; "
             f"wall time {_fmt(m.get('wall_seconds'), 1)} s.", "",
             "| metric | " + " | ".join(n for n, _ in cols) + " |", "|---" * (len(cols) + 1) + "|"]

    def row(label: str, get) -> None:
        lines.append(f"| {label} | " + " | ".join(_fmt(get(r)) for _, r in cols) + " |")

    row("PSNR teacher-forced (dB)", lambda r: r.get("psnr_tf"))
    row("SSIM teacher-forced", lambda r: r.get("ssim_tf"))
    for h in hs:
        row(f"PSNR free @{h}", lambda r, h=h: (r.get("psnr_free") or {}).get(h))
    for h in hs:
        row(f"SSIM free @{h}", lambda r, h=h: (r.get("ssim_free") or {}).get(h))
    for h in hs:
        row(f"sharpness ratio @{h}", lambda r, h=h: (r.get("sharpness_ratio") or {}).get(h))
    row("action following (balanced acc.)", lambda r: r.get("action_acc_generated"))
    row("audio onsets within ±1", lambda r: r.get("audio_onset_within_1"))
    for cause in ("attack", "use", "other"):  # what the actions announce, and what they do not
        row(f"  of those after {cause}" if cause != "other" else "  of the other onsets",
            lambda r, c=cause: ((((r.get("details") or {}).get("audio") or {}).get("by_cause") or {}).get(c) or {}).get("within_1"))
    row("log-mel distance (dB)", lambda r: r.get("audio_logmel_dist"))
    row("ms / step", lambda r: r.get("ms_per_step"))
    lines += ["", f"Action probe ceiling on real pairs: {_fmt(result.get('action_acc_real'))}"
              + (f" (chance {_fmt(result['details'].get('action_chance'))})" if result.get("details", {}).get("action_chance") else "")
              + (f" — {result['action_acc_reason']}" if result.get("action_acc_reason") else "")]
    if result.get("audio_logmel_dist_silence") is not None:
        lines.append(f"Silence scores a log-mel distance of {_fmt(result['audio_logmel_dist_silence'])} dB.")
    miss = ((result.get("details") or {}).get("audio") or {}).get("misses")
    if miss and sum(miss.values()):
        lines.append(f"Missed onsets: {miss.get('silent', 0)} where the model made no sound, {miss.get('shifted', 0)} "
                     f"with its onset 2–4 ticks away, {miss.get('no_rise', 0)} loud but without the rise.")
    rt = ((result.get("details") or {}).get("audio") or {}).get("codec_roundtrip")
    if rt:
        lines.append(f"The real sound through the model's audio codec reproduces {_fmt(rt.get('onset_within_1'))} "
                     f"of the onsets (precision {_fmt(rt.get('onset_precision'))}): the ceiling for its sound.")
    d = result.get("drift") or {}
    if d:
        lines += ["", f"Drift ({d['steps']} steps): {_fmt(d.get('frac_windows_in_range'))} of windows inside the real "
                  f"range; collapsed: {d.get('collapsed')}" + (f" ({d['collapse_reason']})" if d.get("collapse_reason") else "")
                  + f"; frozen: {d.get('frozen')}."]
    dk = result.get("drift_buttons_only") or {}
    if dk:
        lines.append(f"The same rollout with every axis held at 0 (buttons only, no mouse): "
                     f"{_fmt(dk.get('frac_windows_in_range'))} of windows inside the real range; collapsed: "
                     f"{dk.get('collapsed')}" + (f" ({dk['collapse_reason']})" if dk.get("collapse_reason") else "") + ".")
    lc_on, lc_off = result.get("loop_closure_psnr_memory_on"), result.get("loop_closure_psnr_memory_off")
    lines.append(f"Loop closure PSNR memory on/off: {_fmt(lc_on)} / {_fmt(lc_off)}, teacher-forced on the same views "
                 f"{_fmt(result.get('loop_closure_psnr_tf'))}, best real context frame (pure recall) "
                 f"{_fmt(result.get('loop_closure_psnr_recall'))}"
                 + (f" ({result['loop_closure_reason']})" if result.get("loop_closure_reason") else ""))
    lines += ["", "Plots: `psnr_vs_horizon.png`, `strip.png`, `drift.png`"
              + (", `loop_strip.png` (rows: returns; real | memory on | memory off)" if lc_on is not None else "")
              + ".", ""]
    return "\n".join(lines)


def console_summary(result: dict[str, Any]) -> str:
    """A few lines for the terminal."""
    hs = [str(h) for h in result["meta"]["horizons"]]
    out = []
    for name, r in (("model", result), ("copy-last", result.get("baseline_copy_last")), ("shift", result.get("baseline_shift"))):
        if not r:
            continue
        free = " ".join(f"@{h}:{_fmt((r.get('psnr_free') or {}).get(h), 1)}" for h in hs)
        out.append(f"{name:>9}: PSNR tf {_fmt(r.get('psnr_tf'), 1)} dB, free {free}; SSIM tf {_fmt(r.get('ssim_tf'), 3)}; "
                   f"action acc {_fmt(r.get('action_acc_generated'))}; {_fmt(r.get('ms_per_step'), 3)} ms/step")
    for name, cis in against_baselines(result, [f"psnr_free@{h}" for h in hs]).items():  # above each baseline?
        if any(cis.values()):
            cells = [f"@{m.split('@')[1]}:" + (f"{ci[0]:+.2f} [{ci[1]:+.2f}, {ci[2]:+.2f}]" if ci else "–")
                     for m, ci in cis.items()]
            out.append(f"model − {name}, free PSNR {' '.join(cells)} dB (95 % paired interval)")
    au = (result.get("details") or {}).get("audio") or {}
    if result.get("audio_onset_within_1") is not None:
        causes = au.get("by_cause") or {}
        miss = au.get("misses") or {}
        out.append(f"sound: onsets within ±1 tick {_fmt(result['audio_onset_within_1'])} (precision "
                   f"{_fmt(au.get('onset_precision'))}; after attack / use / other "
                   + " / ".join(_fmt((causes.get(c) or {}).get("within_1")) for c in ("attack", "use", "other"))
                   + f"), missed: {miss.get('silent', 0)} silent, {miss.get('shifted', 0)} shifted 2–4 ticks, "
                   f"{miss.get('no_rise', 0)} without the rise; log-mel {_fmt(result.get('audio_logmel_dist'))} dB")
    dk = result.get("drift_buttons_only") or {}
    out.append(f"action probe ceiling {_fmt(result.get('action_acc_real'))}; drift collapsed: "
               f"{(result.get('drift') or {}).get('collapsed')}"
               + (f", in range {_fmt((result.get('drift') or {}).get('frac_windows_in_range'))}; buttons only: in range "
                  f"{_fmt(dk.get('frac_windows_in_range'))}" if dk else "") + f"; wall {_fmt(result['meta'].get('wall_seconds'), 1)} s")
    if result.get("loop_closure_psnr_memory_on") is not None:
        out.append(f"loop closure ({result['details'].get('loops')} returns): PSNR memory on "
                   f"{_fmt(result['loop_closure_psnr_memory_on'], 2)} / off {_fmt(result['loop_closure_psnr_memory_off'], 2)}"
                   f" dB, teacher-forced on the same views {_fmt(result.get('loop_closure_psnr_tf'), 2)} dB, "
                   f"pure recall of the real context {_fmt(result.get('loop_closure_psnr_recall'), 2)} dB")
    else:
        out.append(f"loop closure: n/a ({result.get('loop_closure_reason')})")
    return "\n".join(out)
