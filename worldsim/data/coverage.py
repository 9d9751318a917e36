"""How well a recording covers its map, from the recorded pose.

- coverage: distinct 64-unit floor cells visited per 1,000 steps (averaged over the
  episode's full 1,000-step windows; a shorter episode is scaled to 1,000 steps);
- revisit fraction: the fraction of steps spent in a cell that the player had left at
  least ``revisit_gap_s`` seconds earlier (staying put in one cell is not a revisit).
"""

from __future__ import annotations

import numpy as np

CELL_UNITS = 64.0


def pose_cells(pose: np.ndarray, cell: float = CELL_UNITS) -> np.ndarray:
    """(T, 5) pose → (T,) int64 cell ids from x, y."""
    ij = np.floor(np.asarray(pose[:, :2], np.float64) / cell).astype(np.int64)  # (T, 2)
    return ij[:, 0] * 1_000_003 + ij[:, 1]


def cells_per_1k(cells: np.ndarray, window: int = 1000) -> float:
    """Mean number of distinct cells per `window` steps."""
    n = len(cells)
    if n == 0:
        return 0.0
    if n < window:
        return len(np.unique(cells)) * window / n
    counts = [len(np.unique(cells[s:s + window])) for s in range(0, n - window + 1, window)]
    return float(np.mean(counts))


def revisit_mask(cells: np.ndarray, gap_steps: int) -> np.ndarray:
    """(T,) bool: step t is in a cell the player left ≥ gap_steps steps before entering it again."""
    last_seen: dict[int, int] = {}
    mask = np.zeros(len(cells), bool)
    in_revisit = False
    prev = None
    for t, c in enumerate(cells.tolist()):
        if c != prev:  # entered a new cell: is it a return?
            seen = last_seen.get(c)
            in_revisit = seen is not None and t - seen >= gap_steps
        mask[t] = in_revisit
        last_seen[c] = t
        prev = c
    return mask


def coverage_stats(pose: np.ndarray, tick_rate: float, revisit_gap_s: float = 10.0) -> dict[str, float]:
    cells = pose_cells(pose)
    gap = max(1, int(round(revisit_gap_s * tick_rate)))
    return {
        "coverage_cells_per_1k": cells_per_1k(cells),
        "revisit_fraction": float(revisit_mask(cells, gap).mean()) if len(cells) else 0.0,
        "distinct_cells": int(len(np.unique(cells))),
    }
