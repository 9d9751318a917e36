"""Saved `worldsim eval --json` reports side by side: ``worldsim eval --compare A.json B.json ...``.

Choosing between two checkpoints means reading the same dozen figures off several reports and
checking them against the model issue's targets; this prints them as one markdown table, each later
report's figures with their difference to the first, and the copy-last and shift baselines and the
targets beside them (both read from the first report: compare reports of the same held-out data and
seed, which the table's header checks). Only reads JSON: nothing is evaluated again.

Reports scored on the same points (same data, seed and point counts) carry each point's scores, and
each difference is printed with its 95 % paired bootstrap interval (paired.py), in bold where the
interval excludes 0; a second table puts the first report against its own baselines the same way.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from worldsim.errors import WorldsimError, read_json
from worldsim.eval.paired import against_baselines, paired_interval

REQUIRED = ("psnr_tf", "psnr_free", "meta")  # what every `worldsim eval --json` report has


class CompareError(WorldsimError):
    """A report that cannot be compared: missing, not JSON, or not a `worldsim eval` report."""


def load_report(path: str | Path) -> dict[str, Any]:
    p = Path(path)
    r = read_json(p, lambda m: CompareError(f"--compare {p}: {m}"), f"no such file (write one with `worldsim eval --json {p}`)")
    if not isinstance(r, dict) or any(k not in r for k in REQUIRED):
        raise CompareError(f"--compare {p}: not a `worldsim eval --json` report (needs {', '.join(REQUIRED)})")
    return r


def _get(r: dict[str, Any], *keys: str) -> Any:
    for k in keys:
        r = r.get(k) if isinstance(r, dict) else None
    return r


def _num(v: Any) -> float | None:
    return float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else None


def _cell(v: Any, first: Any, nd: int, delta: bool, ci: tuple[float, float, float] | None = None) -> str:
    x, x0 = _num(v), _num(first)
    if x is None:
        return "–"
    s = f"{x:.{nd}f}"
    if not delta or x0 is None:
        return s
    return s + " (" + (_interval(ci, nd) if ci is not None else f"{x - x0:+.{nd}f}") + ")"


def _interval(ci: tuple[float, float, float], nd: int) -> str:
    """``+0.12 [−0.05, +0.30]``, the difference in bold when its interval excludes 0."""
    d, lo, hi = ci
    if round(abs(d), nd) == 0 and (lo > 0 or hi < 0):
        nd += 1  # a difference that rounds to zero yet is told apart: show the digit that does
    ds = f"{d:+.{nd}f}"
    return (f"**{ds}**" if lo > 0 or hi < 0 else ds) + f" [{lo:+.{nd}f}, {hi:+.{nd}f}]"


def _per_start(r: dict[str, Any], key: str | None = None) -> Any:
    return _get(r, "details", *((key,) if key else ()), "per_start")


def compare_markdown(paths: Sequence[str | Path]) -> str:
    """The reports at ``paths`` as one markdown table (columns: reports, then baselines and targets)."""
    if not paths:
        raise CompareError("--compare needs at least one report")
    reps = [load_report(p) for p in paths]
    first = reps[0]
    names = [f"`{Path(p).name}` ({_get(r, 'meta', 'model') or '?'}"
             + ("" if _get(r, "meta", "temperature") in (None, 1.0) else f", temperature {_get(r, 'meta', 'temperature')}")
             + ")" for p, r in zip(paths, reps)]
    copy, shift = first.get("baseline_copy_last") or {}, first.get("baseline_shift") or {}
    horizons = sorted({int(h) for r in reps for h in (r.get("psnr_free") or {})})
    probe = _num(first.get("action_acc_real"))
    cols = names + ["copy-last", "shift", "model issue's target"]
    lines = ["| metric | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]

    ps0 = _per_start(first)
    paired = [False] * len(reps)

    def row(label: str, get: Callable[[dict[str, Any]], Any], nd: int = 2, target: str = "",
            baselines: bool = True, metric: str | None = None) -> None:
        vals = [get(r) for r in reps]
        cis = [paired_interval(ps0, _per_start(r), metric) if metric and i > 0 else None for i, r in enumerate(reps)]
        for i, ci in enumerate(cis):
            paired[i] = paired[i] or ci is not None
        cells = [_cell(v, vals[0], nd, i > 0, ci) for i, (v, ci) in enumerate(zip(vals, cis))]
        cells += [_cell(get(b), None, nd, False) if baselines and b else "–" for b in (copy, shift)]
        lines.append(f"| {label} | " + " | ".join(cells + [target]) + " |")

    row("PSNR teacher-forced (dB)", lambda r: r.get("psnr_tf"), target="≥ 26", metric="psnr_tf")
    for h in horizons:
        c = _num((copy.get("psnr_free") or {}).get(str(h)))
        tgt = f"≥ {c + 3:.2f} (copy-last + 3)" if h == 16 and c is not None else "above both baselines"
        row(f"PSNR free @ {h}", lambda r, h=h: (r.get("psnr_free") or {}).get(str(h)), target=tgt,
            metric=f"psnr_free@{h}")
    for h in horizons:
        row(f"sharpness @ {h}", lambda r, h=h: (r.get("sharpness_ratio") or {}).get(str(h)),
            target="≥ 0.8" if h in (16, 64) else "", metric=f"sharpness@{h}")
    row("action following", lambda r: r.get("action_acc_generated"),
        target=f"≥ {0.9 * probe:.2f} (0.9 × the probe's {probe:.2f} on real frames)" if probe else "≥ 0.9 × the probe",
        metric="action")
    row("sound onsets within ±1 tick", lambda r: r.get("audio_onset_within_1"), target="≥ 0.80", metric="onsets")
    for cause in ("attack", "use", "other"):
        row(f"  after {cause}" if cause != "other" else "  other onsets",
            lambda r, c=cause: _get(r, "details", "audio", "by_cause", c, "within_1"), baselines=False)
    row("log-mel distance (dB)", lambda r: r.get("audio_logmel_dist"), metric="logmel")
    for stat in ("brightness", "edge_energy", "hist_dist"):
        row(f"drift windows in range: {stat}", lambda r, s=stat: _get(r, "drift", "in_range", s), nd=1,
            target="1.0", baselines=False)
    for stat in ("brightness", "edge_energy", "hist_dist"):
        row(f"  buttons only (no mouse): {stat}", lambda r, s=stat: _get(r, "drift_buttons_only", "in_range", s),
            nd=1, baselines=False)
    row("loop closure PSNR, memory on", lambda r: r.get("loop_closure_psnr_memory_on"), baselines=False)
    row("loop closure PSNR, memory off", lambda r: r.get("loop_closure_psnr_memory_off"), baselines=False)

    setup = {(str(_get(r, "meta", "data_dir")), _get(r, "meta", "seed"), _get(r, "meta", "tf_points"),
              _get(r, "meta", "free_starts")) for r in reps}
    head = ("Same held-out data, seed and points in every report." if len(setup) == 1 else
            "**The reports differ in held-out data, seed or points** (data, seed, teacher-forced points, "
            f"free starts: {'; '.join(map(str, sorted(setup, key=str)))}): their figures are not comparable.")
    note = ("Later reports show their difference to the first in brackets; baselines and targets "
            "are read from the first report.")
    if any(paired):
        note += (" Where both reports hold each point's scores, the difference comes with its 95 % paired "
                 "bootstrap interval over the points, **in bold** where the interval excludes 0 (a difference "
                 "the held-out points can tell from a redraw of them; not the training run's own spread).")
    return "\n".join([head, "", *lines, "", note, *_against_baselines(paths[0], first, horizons)])


def _against_baselines(path: str | Path, r: dict[str, Any], horizons: Sequence[int]) -> list[str]:
    """The first report minus each baseline, with paired intervals (only where per-point scores exist)."""
    metrics = [("PSNR teacher-forced", "psnr_tf")] + [(f"PSNR free @ {h}", f"psnr_free@{h}") for h in horizons]
    cis = against_baselines(r, [m for _, m in metrics])
    rows = [f"| {label} | " + " | ".join(_interval(c[m], 2) if c[m] else "–" for c in cis.values()) + " |"
            for label, m in metrics if any(c[m] for c in cis.values())]
    if not rows:
        return []
    return ["", f"`{Path(path).name}` minus its baselines on the same points (95 % paired bootstrap interval; "
            "bold: the interval excludes 0):", "",
            "| metric | " + " | ".join(f"− {n}" for n in cis) + " |", "|---|---|---|", *rows]
