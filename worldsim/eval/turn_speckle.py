"""Speckle while turning: fine detail a world paints under a held turn key and small mouse turns.

A turn prior's error is fed back every tick a player turns; off the latents' manifold the sharpened
frame decoder paints it as checkered speckle, mostly in the lower middle of the picture (around the
weapon). This measures it as the mean absolute Laplacian of the luma there, over ``starts`` shipped
start contexts × ``ticks`` ticks (the first 10 skipped) of ``turn_right`` held, and of a slow mouse
sway; the recordings' own frames give the reference (``--data``).

    python -m worldsim.eval.turn_speckle default default:pixel --data data/heldout

``WORLD:pixel`` loads a world that ships a learned turn prior with the pixel prior instead.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

REGION = (slice(24, None), slice(12, 50))  # rows, columns of the Laplacian map (the picture's lower middle)


def speckle(frame: np.ndarray) -> float:
    """Mean |Laplacian| of a uint8 frame's luma (H, W, 3) in :data:`REGION`."""
    y = frame.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)  # (H, W)
    lap = np.abs(4 * y[1:-1, 1:-1] - y[:-2, 1:-1] - y[2:, 1:-1] - y[1:-1, :-2] - y[1:-1, 2:])
    return float(lap[REGION].mean())


def world_speckle(spec: str, starts: int = 8, ticks: int = 40) -> dict[str, float]:
    from worldsim.runtime import World

    path, _, how = spec.partition(":")
    w = World.load(path, learned_reaim=how != "pixel")
    out = {}
    for kind in ("turn_key", "mouse"):
        vals = []
        for seed in range(starts):
            s = w.open(seed=seed)
            for t in range(ticks):
                a = {"keys": ["turn_right"]} if kind == "turn_key" else {"mouse": [2.0 * np.sin(t / 3), 0.0]}
                f = s.step(a).frames[0]
                if t >= 10:
                    vals.append(speckle(f))
        out[kind] = float(np.mean(vals))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worldsim.eval.turn_speckle", description=__doc__.split("\n\n")[0])
    ap.add_argument("worlds", nargs="+", help="world directories or 'default'; WORLD:pixel for the pixel turn prior")
    ap.add_argument("--data", help="recorded episodes: their frames' value for reference")
    ap.add_argument("--starts", type=int, default=8)
    ap.add_argument("--ticks", type=int, default=40)
    args = ap.parse_args(argv)
    if args.starts < 1 or args.ticks <= 10:
        ap.error("--starts must be ≥ 1 and --ticks > 10")
    import torch
    torch.set_num_threads(1)
    if args.data:
        from worldsim.data.episode import open_episodes
        vals = [speckle(np.asarray(e.frames[t])) for e in open_episodes(args.data) for t in range(0, len(e), 5)]
        print(f"recorded frames ({args.data}): {np.mean(vals):.2f}")
    for spec in args.worlds:
        r = world_speckle(spec, args.starts, args.ticks)
        print(f"{spec}: turn key held {r['turn_key']:.2f}, mouse sway {r['mouse']:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
