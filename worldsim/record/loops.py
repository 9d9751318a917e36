"""Loop trajectories for the memory evaluation: leave a place and come back to it.

``worldsim record vizdoom --loops`` records episodes of the form *explore for a while, then
run one pattern, then stop*. Each pattern returns the player to where it started, facing the
same way, after at least 4× the dynamics' context window (8 ticks):

* ``spin``      a slow 360° mouse turn in place (5°/tick, 72 ticks);
* ``out_back``  walk out 14 ticks, stop, turn round, walk back, stop, turn round (90 ticks);
* ``square``    four sides of a square, stopping and turning left 90° at each corner — a
                loop through whatever rooms lie there (136 ticks).

The player comes to rest (``SETTLE`` no-op ticks, inside the exploration part) before the
pattern starts, and after each walk, so momentum does not carry it off its path.

The episode's ``meta.json`` lists the loop as ``{"t1", "t2", "pattern", "returned", "dist",
"dyaw"}``: ``frames[t1]`` is the last view before the pattern, ``frames[t2]`` the view on
return; ``returned`` says whether the real player (recorded pose) really came back within
tolerance — walls can stop a walk short, and the evaluation only scores loops that closed.
"""

from __future__ import annotations

import numpy as np

from worldsim.actions import VIZDOOM_SCHEMA, Action

POS_TOL, YAW_TOL = 48.0, 20.0  # map units, degrees: what counts as "back at the same place"


def _a(keys: tuple[str, ...] = (), dx: float = 0.0) -> Action:
    return VIZDOOM_SCHEMA.parse({"keys": list(keys), "mouse": [dx, 0.0]})


SETTLE = 16  # no-op ticks before a pattern (and after each walk): DOOM's momentum dies down


def pattern(name: str) -> list[Action]:
    """The pattern's actions; the player should be at rest when it starts (see SETTLE)."""
    rest = [_a()] * SETTLE
    if name == "spin":
        return [_a(dx=5.0)] * 72
    if name == "out_back":
        leg, turn = [_a(("forward",))] * 14, [_a(dx=12.0)] * 15
        return leg + rest + turn + leg + rest + turn
    if name == "square":
        return ([_a(("forward",))] * 8 + rest + [_a(dx=-9.0)] * 10) * 4
    raise ValueError(f"unknown loop pattern {name!r}; known: {', '.join(PATTERNS)}")


PATTERNS = ("spin", "out_back", "square")


def closed(pose: np.ndarray, t1: int, t2: int) -> tuple[bool, float, float]:
    """Did the player at ``t2`` stand where it stood at ``t1``, facing the same way?"""
    d = float(np.hypot(*(pose[t2, :2] - pose[t1, :2])))
    dyaw = float(abs((pose[t2, 3] - pose[t1, 3] + 180.0) % 360.0 - 180.0))
    return d <= POS_TOL and dyaw <= YAW_TOL, d, dyaw
