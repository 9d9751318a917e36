"""Saved `worldsim eval --json` reports side by side: ``worldsim eval --compare A.json B.json ...``.

Choosing between two checkpoints means reading the same dozen figures off several reports and
checking them against the model issue's targets; this prints them as one markdown table, each later
report's figures with their difference to the first, and the copy-last and shift baselines and the
targets beside them (both read from the first report: compare reports of the same held-out data and
seed, which the table's header checks). Only reads JSON: nothing is evaluated again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

from worldsim.errors import WorldsimError, read_json

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


def _cell(v: Any, first: Any, nd: int, delta: bool) -> str:
    x, x0 = _num(v), _num(first)
    if x is None:
        return "–"
    s = f"{x:.{nd}f}"
    return s + (f" ({x - x0:+.{nd}f})" if delta and x0 is not None else "")


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

    def row(label: str, get: Callable[[dict[str, Any]], Any], nd: int = 2, target: str = "",
            baselines: bool = True) -> None:
        vals = [get(r) for r in reps]
        cells = [_cell(v, vals[0], nd, i > 0) for i, v in enumerate(vals)]
        cells += [_cell(get(b), None, nd, False) if baselines and b else "–" for b in (copy, shift)]
        lines.append(f"| {label} | " + " | ".join(cells + [target]) + " |")

    row("PSNR teacher-forced (dB)", lambda r: r.get("psnr_tf"), target="≥ 26")
    for h in horizons:
        c = _num((copy.get("psnr_free") or {}).get(str(h)))
        tgt = f"≥ {c + 3:.2f} (copy-last + 3)" if h == 16 and c is not None else "above both baselines"
        row(f"PSNR free @ {h}", lambda r, h=h: (r.get("psnr_free") or {}).get(str(h)), target=tgt)
    for h in horizons:
        row(f"sharpness @ {h}", lambda r, h=h: (r.get("sharpness_ratio") or {}).get(str(h)),
            target="≥ 0.8" if h in (16, 64) else "")
    row("action following", lambda r: r.get("action_acc_generated"),
        target=f"≥ {0.9 * probe:.2f} (0.9 × the probe's {probe:.2f} on real frames)" if probe else "≥ 0.9 × the probe")
    row("sound onsets within ±1 tick", lambda r: r.get("audio_onset_within_1"), target="≥ 0.80")
    for cause in ("attack", "use", "other"):
        row(f"  after {cause}" if cause != "other" else "  other onsets",
            lambda r, c=cause: _get(r, "details", "audio", "by_cause", c, "within_1"), baselines=False)
    row("log-mel distance (dB)", lambda r: r.get("audio_logmel_dist"))
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
    return "\n".join([head, "", *lines, "",
                      "Later reports show their difference to the first in brackets; baselines and targets "
                      "are read from the first report."])
