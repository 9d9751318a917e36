"""Training segments from episodes: context + target steps, aligned frame/action/audio.

A segment of length ``context + horizon`` starting at step ``s`` holds steps
``s .. s+context+horizon-1`` of one episode; step ``t``'s frame, audio, buttons and axes
sit at the same index (see FORMAT.md for what that alignment means).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from worldsim.actions import ActionSchema
from worldsim.data.episode import Episode, EpisodeFormatError, open_episodes


@dataclass
class Segment:
    """One training example; arrays have the step axis first (T = context + horizon)."""

    frames: torch.Tensor  # (T, H, W, 3) uint8
    buttons: torch.Tensor  # (T, NB) uint8
    axes: torch.Tensor  # (T, NA) float32
    audio: torch.Tensor | None  # (T, S, C) int16
    pose: torch.Tensor | None  # (T, 5) float32
    depth: torch.Tensor | None  # (T, H, W) uint8
    episode: int
    start: int


def split_episodes(episodes: Sequence[Episode], held_out_maps: Sequence[str] | None = None,
                   held_out_fraction: float = 0.1) -> tuple[list[Episode], list[Episode]]:
    """Split into (train, held_out).

    With ``held_out_maps``, episodes of those maps are held out. Otherwise the data set is
    split within each map: its last ``held_out_fraction`` of episodes (at least one when a map
    has two or more) are held out, so a one-level world still gets unseen trajectories.
    """
    if held_out_maps:
        known = {e.map_id for e in episodes}
        missing = set(held_out_maps) - known
        if missing:
            raise ValueError(f"held-out map(s) {sorted(missing)} not in the data set (maps: {sorted(known)})")
        held = [e for e in episodes if e.map_id in held_out_maps]
        return [e for e in episodes if e.map_id not in held_out_maps], held
    train: list[Episode] = []
    held: list[Episode] = []
    by_map: dict[str, list[Episode]] = {}
    for e in episodes:
        by_map.setdefault(e.map_id, []).append(e)
    for eps in by_map.values():
        n_held = 0 if len(eps) < 2 else max(1, int(round(len(eps) * held_out_fraction)))
        train += eps[: len(eps) - n_held]
        held += eps[len(eps) - n_held:]
    return train, held


class SegmentDataset(torch.utils.data.Dataset):
    """Map-style dataset of fixed-length segments drawn from memory-mapped episodes."""

    def __init__(self, episodes: Sequence[Episode] | str | os.PathLike, context: int, horizon: int = 1,
                 stride: int = 1, with_audio: bool = True, with_depth: bool = False):
        if isinstance(episodes, (str, os.PathLike)):
            episodes = open_episodes(episodes)
        self.episodes = list(episodes)
        if not self.episodes:
            raise ValueError("no episodes given")
        if context < 1 or horizon < 0 or stride < 1:
            raise ValueError("context must be ≥ 1, horizon ≥ 0, stride ≥ 1")
        self.length = context + horizon
        self.context, self.horizon = context, horizon
        self.with_audio, self.with_depth = with_audio, with_depth
        first = self.episodes[0]
        self.schema: ActionSchema = first.schema
        for e in self.episodes[1:]:
            if e.schema != self.schema:
                raise EpisodeFormatError(e.path, "action schema differs from the other episodes in this data set")
            if e.resolution != first.resolution:
                raise EpisodeFormatError(e.path, f"resolution {e.resolution} differs from {first.resolution}")
        index = []
        for i, e in enumerate(self.episodes):
            for s in range(0, len(e) - self.length + 1, stride):
                index.append((i, s))
        if not index:
            raise ValueError(f"no episode is long enough for segments of {self.length} steps")
        self.index = np.asarray(index, np.int64)  # (N, 2): episode, start

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> Segment:
        ei, s = (int(v) for v in self.index[i])
        e = self.episodes[ei]
        sl = slice(s, s + self.length)
        audio = None
        if self.with_audio and e.audio is not None:
            audio = torch.from_numpy(np.array(e.audio[sl]))
        return Segment(
            frames=torch.from_numpy(np.array(e.frames[sl])),
            buttons=torch.from_numpy(np.array(e.buttons[sl])),
            axes=torch.from_numpy(np.array(e.axes[sl])),
            audio=audio,
            pose=torch.from_numpy(np.array(e.pose[sl])) if e.pose is not None else None,
            depth=torch.from_numpy(np.array(e.depth[sl])) if (self.with_depth and e.depth is not None) else None,
            episode=ei,
            start=s,
        )


def collate_segments(batch: list[Segment]) -> dict[str, torch.Tensor]:
    """Stack segments into a batch dict of (B, T, ...) tensors (missing fields left out)."""
    out: dict[str, torch.Tensor] = {
        "frames": torch.stack([b.frames for b in batch]),  # (B, T, H, W, 3)
        "buttons": torch.stack([b.buttons for b in batch]),  # (B, T, NB)
        "axes": torch.stack([b.axes for b in batch]),  # (B, T, NA)
    }
    for name in ("audio", "pose", "depth"):
        vals = [getattr(b, name) for b in batch]
        if all(v is not None for v in vals):
            out[name] = torch.stack(vals)
    return out


def default_data_dir() -> Path:
    """Where `worldsim record` puts data unless told otherwise (overridable by $WORLDSIM_DATA)."""
    return Path(os.environ.get("WORLDSIM_DATA", "data"))
