"""`worldsim data info`: check a data set and summarise it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.data.coverage import coverage_stats
from worldsim.data.episode import Episode, EpisodeFormatError, list_episodes
from worldsim.errors import check_output_file

SILENCE_LEVEL = 64  # int16 peak below which a step counts as silent (ViZDoom's idle floor is ±1)


def audio_levels(audio: np.ndarray, chunk: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(T, S, C) int16 → per-step (peak, rms), read in chunks so a memory-mapped file stays out of RAM."""
    peaks, rms = [], []
    for s in range(0, len(audio), chunk):
        a = np.asarray(audio[s:s + chunk], np.float32)  # (t, S, C)
        peaks.append(np.abs(a).max(axis=(1, 2)))
        rms.append(np.sqrt((a ** 2).mean(axis=(1, 2))))
    return np.concatenate(peaks), np.concatenate(rms)


def data_info(root: str | Path, verify: bool = False) -> dict[str, Any]:
    """Open every episode (raising EpisodeFormatError on the first bad one) and summarise them."""
    paths = list_episodes(root)
    eps: list[Episode] = []
    for p in paths:
        e = Episode(p)
        if verify:
            e.verify()
        eps.append(e)
    steps = [len(e) for e in eps]
    total = int(sum(steps))
    maps = Counter()
    for e in eps:
        maps[e.map_id] += len(e)
    nonsilent, peak_all, rms_all, has_audio = 0, [], [], 0
    cov, rev, cov_w = [], [], []
    for e in eps:
        if e.audio is not None:
            peak, rms = audio_levels(e.audio)
            nonsilent += int((peak > SILENCE_LEVEL).sum())
            has_audio += len(e)
            peak_all.append(peak)
            rms_all.append(rms)
        if e.pose is not None:
            st = coverage_stats(np.asarray(e.pose), e.tick_rate)
            cov.append(st["coverage_cells_per_1k"])
            rev.append(st["revisit_fraction"])
            cov_w.append(len(e))
    rates = [e.meta.get("stats", {}).get("record_steps_per_s") for e in eps]
    rate_w = [(r, len(e)) for r, e in zip(rates, eps) if r]
    first = eps[0]
    info: dict[str, Any] = {
        "path": str(root),
        "steps": total,
        "episodes": len(eps),
        "maps": dict(sorted(maps.items())),
        "episode_steps": {"min": int(min(steps)), "mean": float(np.mean(steps)), "max": int(max(steps))},
        "resolution": list(first.resolution),
        "tick_rate": first.tick_rate,
        "action_schema": first.schema.to_dict(),
        "sources": sorted({str(e.meta.get("source", "unknown")) for e in eps}),
        "audio": first.meta.get("audio"),
        "audio_nonsilent_fraction": (nonsilent / has_audio) if has_audio else None,
        "audio_peak_mean": float(np.concatenate(peak_all).mean()) if peak_all else None,
        "audio_rms_mean": float(np.concatenate(rms_all).mean()) if rms_all else None,
        "coverage_cells_per_1k": float(np.average(cov, weights=cov_w)) if cov else None,
        "revisit_fraction": float(np.average(rev, weights=cov_w)) if rev else None,
        "record_steps_per_s": float(np.average([r for r, _ in rate_w], weights=[w for _, w in rate_w])) if rate_w else None,
        "button_press_fraction": dict(zip(first.schema.buttons, _button_means(eps))),
        "env_action_space": first.meta.get("env_action_space"),
        "schemas_agree": all(e.schema == first.schema for e in eps),
        "verified": verify,
    }
    return info


def _button_means(eps: list[Episode]) -> list[float]:
    n = eps[0].schema.num_buttons
    if n == 0:
        return []
    acc = np.zeros(n)
    for e in eps:
        acc += np.asarray(e.buttons, np.float64).sum(axis=0)
    return (acc / sum(len(e) for e in eps)).round(4).tolist()


def format_info(info: dict[str, Any]) -> str:
    def f(v: Any, fmt: str = "{:.3f}") -> str:
        return "n/a" if v is None else fmt.format(v)

    lines = [
        f"data set        {info['path']}",
        f"steps           {info['steps']:,} in {info['episodes']} episodes "
        f"(per episode {info['episode_steps']['min']}–{info['episode_steps']['max']})",
        f"maps            " + ", ".join(f"{k} ({v:,} steps)" for k, v in info["maps"].items()),
        f"frames          {info['resolution'][0]}×{info['resolution'][1]} RGB at {info['tick_rate']:.2f} steps/s",
        f"sources         {', '.join(info['sources'])}",
        f"audio           " + ("none" if not info["audio"] else
                               f"{info['audio']['sample_rate']} Hz × {info['audio']['channels']} ch, "
                               f"non-silent {f(info['audio_nonsilent_fraction'], '{:.1%}')} of steps, "
                               f"mean peak {f(info['audio_peak_mean'], '{:.0f}')}"),
        f"coverage        {f(info['coverage_cells_per_1k'], '{:.1f}')} cells per 1k steps, "
        f"revisits {f(info['revisit_fraction'], '{:.1%}')} of steps",
        f"recorded at     {f(info['record_steps_per_s'], '{:.0f}')} steps/s",
        f"actions         {_actions_line(info)}",
    ]
    if not info.get("schemas_agree", True):
        lines.append("WARNING         episodes have different action schemas (one data set trains one schema)")
    return "\n".join(lines)


def _actions_line(info: dict[str, Any]) -> str:
    """Buttons with how often each is held (a recording whose engine sent no input shows 0 %),
    axes by name, and the recorded env's own action space when there is one."""
    sch, press = info["action_schema"], info["button_press_fraction"]
    parts = [f"{len(sch['buttons'])} buttons" + (" (" + ", ".join(f"{b} {p:.0%}" for b, p in press.items()) + ")"
                                                 if press else "")]
    if sch.get("axes"):
        parts.append(f"{len(sch['axes'])} axes ({', '.join(sch['axes'])})")
    env = info.get("env_action_space")
    if env:
        parts.append(f"env space {env.get('type')}")
    return ", ".join(parts)


def main_info(root: str, json_out: str | None, verify: bool) -> int:
    if json_out:
        check_output_file(json_out)  # before --verify reads every file
    info = data_info(root, verify=verify)
    print(format_info(info))
    if json_out:
        Path(json_out).write_text(json.dumps(info, indent=1) + "\n")
    return 0


__all__ = ["data_info", "format_info", "main_info", "EpisodeFormatError"]
