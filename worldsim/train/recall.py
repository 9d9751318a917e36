"""Training targets for the dynamics' memory input: what the scene memory would bring back.

At inference :class:`~worldsim.model.memory.SceneMemory` retrieves, on every tick, a latent
seen beyond the KV window near the viewer's (dead-reckoned) pose. To teach the network to
*use* such a memory, training needs the same retrieval on recorded data: for every tick of
the latent store, the earlier tick of the same episode (at least ``min_age`` ticks older)
whose recorded pose matches best, with the same score as the runtime's (flat near a perfect
match, 0 at ``pos_tol`` units or ``yaw_tol`` degrees) and the heading difference, so the
trainer can turn the remembered view to the current heading. The runtime re-aims the remembered
latent as the world turns a tick (its learned turn prior, or decode → warp → encode:
:meth:`~worldsim.model.world_model.WorldModel.reaim_memories`); the trainer slides the latent
instead (blurrier at large differences: an approximation).
Recorded poses stand in for dead reckoning (measured: feeding the real poses to the runtime
memory moved loop-closure PSNR by only +0.26 dB).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from worldsim.model.memory import MemoryConfig, match_score


@dataclass
class RecallTargets:
    index: np.ndarray    # (T,) int64 store index of the remembered tick, -1 = none
    weight: np.ndarray   # (T,) float32 match score in [0, 1]
    dyaw: np.ndarray     # (T,) float32 remembered heading − current heading, degrees

    @property
    def hit_fraction(self) -> float:
        return float((self.index >= 0).mean()) if len(self.index) else 0.0


def recall_targets(pose: np.ndarray, bounds: np.ndarray, cfg: MemoryConfig, min_age: int) -> RecallTargets:
    """pose (T, ≥4) recorded x, y, z, yaw (degrees, counter-clockwise, as ViZDoom and the
    runtime's PoseTracker); bounds (E + 1,) episode offsets."""
    T = len(pose)
    index = np.full(T, -1, np.int64)
    weight = np.zeros(T, np.float32)
    dyaw = np.zeros(T, np.float32)
    for a, b in zip(bounds[:-1], bounds[1:]):
        p = np.asarray(pose[a:b], np.float64)
        n = len(p)
        for s in range(min_age, n, 512):  # rows in chunks: (rows, n) pairwise at most
            rows = np.arange(s, min(n, s + 512))
            d = np.hypot(p[None, :, 0] - p[rows, None, 0], p[None, :, 1] - p[rows, None, 1])  # (R, n)
            dy = (p[None, :, 3] - p[rows, None, 3] + 180.0) % 360.0 - 180.0
            score = match_score(d, dy, cfg)
            score[np.arange(n)[None, :] > rows[:, None] - min_age] = 0.0  # only views old enough
            best = score.argmax(1)
            ok = score[np.arange(len(rows)), best] > 0
            r = rows[ok]
            index[a + r] = a + best[ok]
            weight[a + r] = score[ok, best[ok]]
            dyaw[a + r] = dy[ok, best[ok]]
    return RecallTargets(index, weight, dyaw)
