"""Per-start scores in a report, and paired bootstrap intervals for the difference of two reports.

Two checkpoints evaluated on the same held-out data with the same seed are scored on the same
teacher-forced points and the same free-running starts (rollout.make_plan). Their difference on a
metric is then a *paired* difference, and its uncertainty comes from which points the plan drew:
a 48-start report's PSNR at 64 ticks moves by tenths of a dB between two draws of starts, as much as
most changes a training run makes. So every report keeps each point's own scores (``per_start``),
and ``worldsim eval --compare`` resamples the points (the same indices for both reports, 2,000
times, a fixed seed) to give each difference a 95 % percentile interval; a difference whose
interval excludes 0 is one the held-out set can tell apart from a redraw of its starts. It says
nothing about the training run's own randomness (another run of the same recipe), only about the
evaluation's.

``per_start`` keys (lists in plan order; horizons as strings):
    tf_points, free_starts       [[episode, step], ...]: what the two reports must share
    psnr_tf                      per teacher-forced point
    action_true / action_pred    the probe's labels and its reading of the generated frame, per point
    psnr_free                    {h: per start}
    edge_gen / edge_real         {h: per start}, mean gradient energy; sharpness = Σ gen / Σ real
    onsets_real / onsets_hit     per start: real sound onsets, and of those reproduced within ±1 tick
    logmel                       per start: log-mel distance (dB)
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

import numpy as np

from worldsim.eval.probe import balanced_accuracy

N_BOOT = 2000
LEVEL = 0.95

Stat = Callable[[dict[str, Any], np.ndarray], Any]  # a float for (n,) indices, an array for (resamples, n)


def _r(values: Any, nd: int = 4) -> list[float]:
    return [round(float(v), nd) for v in np.asarray(values, np.float64).reshape(-1)]


def per_start_record(tf_points: Sequence[tuple[int, int]], free_starts: Sequence[tuple[int, int]],
                     psnr_tf: np.ndarray, psnr_free: dict[int, np.ndarray], edge_gen: dict[int, np.ndarray],
                     edge_real: dict[int, np.ndarray], action_true: np.ndarray | None = None,
                     action_pred: np.ndarray | None = None, onsets: Sequence[tuple[int, int]] | None = None,
                     logmel: Sequence[float] | None = None) -> dict[str, Any]:
    """The JSON-ready ``per_start`` block of one model's scores (see the module docstring)."""
    out: dict[str, Any] = {
        "tf_points": [[int(e), int(s)] for e, s in tf_points],
        "free_starts": [[int(e), int(s)] for e, s in free_starts],
        "psnr_tf": _r(psnr_tf),
        "psnr_free": {str(h): _r(v) for h, v in psnr_free.items()},
        "edge_gen": {str(h): _r(v) for h, v in edge_gen.items()},
        "edge_real": {str(h): _r(v) for h, v in edge_real.items()},
    }
    if action_true is not None and action_pred is not None:
        out["action_true"] = [int(v) for v in action_true]
        out["action_pred"] = [int(v) for v in action_pred]
    if onsets is not None:
        out["onsets_real"] = [int(n) for n, _ in onsets]
        out["onsets_hit"] = [int(h) for _, h in onsets]
    if logmel is not None:
        out["logmel"] = _r(logmel)
    return out


# ---- statistics of a resample: each takes a per_start block and the indices drawn, (n,) for one
# value or (resamples, n) for one per row (the lists become arrays once per call, not per resample)

def _out(v: np.ndarray) -> Any:
    return float(v) if v.ndim == 0 else v


def _mean(key: str, h: str | None = None) -> Stat:
    def f(p: dict[str, Any], idx: np.ndarray) -> Any:
        v = p.get(key)
        v = v.get(h) if isinstance(v, dict) and h is not None else v
        return _out(np.asarray(v, np.float64)[idx].mean(-1)) if isinstance(v, list) and len(v) else None
    return f


def _ratio(num: Any, den: Any, idx: np.ndarray) -> Any:
    d = np.asarray(den, np.float64)[idx].sum(-1)
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty resample: NaN, dropped by the caller
        r = np.where(d > 0, np.asarray(num, np.float64)[idx].sum(-1) / d, np.nan)
    return None if r.ndim == 0 and not np.isfinite(r) else _out(r)


def _sharpness(h: str) -> Stat:
    def f(p: dict[str, Any], idx: np.ndarray) -> Any:
        g, r = (p.get(k, {}).get(h) for k in ("edge_gen", "edge_real"))
        return _ratio(g, r, idx) if g and r else None
    return f


def _onsets(p: dict[str, Any], idx: np.ndarray) -> Any:
    n, hit = p.get("onsets_real"), p.get("onsets_hit")
    return _ratio(hit, n, idx) if n and hit else None


def _action(p: dict[str, Any], idx: np.ndarray) -> Any:
    t, g = p.get("action_true"), p.get("action_pred")
    if not t or not g:
        return None
    t, g = np.asarray(t), np.asarray(g)
    if idx.ndim == 1:
        return balanced_accuracy(g[idx], t[idx])["balanced_acc"]
    return np.array([balanced_accuracy(g[i], t[i])["balanced_acc"] for i in idx], np.float64)


def statistic(metric: str) -> tuple[Stat, str]:
    """The resample statistic of a metric name and which point list it resamples (``tf`` or ``free``).

    Names: ``psnr_tf``, ``action``, ``psnr_free@H``, ``sharpness@H``, ``onsets``, ``logmel``."""
    if metric == "psnr_tf":
        return _mean("psnr_tf"), "tf"
    if metric == "action":
        return _action, "tf"
    if metric == "onsets":
        return _onsets, "free"
    if metric == "logmel":
        return _mean("logmel"), "free"
    name, _, h = metric.partition("@")
    if name == "psnr_free" and h:
        return _mean("psnr_free", h), "free"
    if name == "sharpness" and h:
        return _sharpness(h), "free"
    raise ValueError(f"unknown metric {metric!r}")


def same_points(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two per_start blocks were scored on the same points (so they can be paired)."""
    return (isinstance(a, dict) and isinstance(b, dict)
            and all(a.get(k) == b.get(k) and a.get(k) for k in ("tf_points", "free_starts")))


def paired_interval(a: dict[str, Any], b: dict[str, Any], metric: str, n_boot: int = N_BOOT,
                    seed: int = 0) -> tuple[float, float, float] | None:
    """``(b − a, low, high)`` for a metric over the same points, with a ``LEVEL`` percentile interval
    from ``n_boot`` paired resamples; None when either report lacks the metric or the points differ."""
    if not same_points(a, b):
        return None
    stat, which = statistic(metric)
    n = len(a["tf_points"] if which == "tf" else a["free_starts"])
    try:
        va, vb = stat(a, np.arange(n)), stat(b, np.arange(n))
        if va is None or vb is None or n < 2:
            return None
        idx = np.random.default_rng(seed).integers(0, n, (n_boot, n))  # the same resamples for both reports
        diffs = np.asarray(stat(b, idx), np.float64) - np.asarray(stat(a, idx), np.float64)
    except (IndexError, TypeError, ValueError):  # a hand-edited or truncated report: no interval, not a crash
        return None
    diffs = diffs[np.isfinite(diffs)]
    if len(diffs) < n_boot // 2:
        return None
    lo, hi = np.quantile(diffs, [(1 - LEVEL) / 2, (1 + LEVEL) / 2])
    return vb - va, float(lo), float(hi)


BASELINES = (("copy_last", "copy-last"), ("shift", "shift"))  # report key (baseline_<key>), display name


def against_baselines(report: dict[str, Any], metrics: Sequence[str]) -> dict[str, dict[str, Any]]:
    """``{display name: {metric: (report − baseline, low, high) | None}}`` for each baseline a report
    carries, on the report's own points: is the model above it, beyond a redraw of the points?"""
    det = report.get("details") if isinstance(report.get("details"), dict) else {}
    ps = det.get("per_start")
    out = {}
    for key, name in BASELINES:
        base = det.get(f"baseline_{key}")
        ref = base.get("per_start") if isinstance(base, dict) else None
        out[name] = {m: paired_interval(ref, ps, m) for m in metrics}
    return out

