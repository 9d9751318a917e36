"""Evaluate a policy in the learned simulator, beside the real game.

    python demos/robot_rollout.py --envs 4 --ticks 64 --out out/robot_rollout

The robotics workflow: a batch of rollouts of one scripted policy runs in a Gymnasium
vector env over the learned world (one batched forward per tick for all envs), and the same
actions run in real ViZDoom games started from the same places. Each env begins from a
context recorded in its real game (a different heading per env), so both worlds start from
the same picture. The demo prints how far the learned world drifts from the real one over
time (PSNR per horizon, with "hold the start frame" as the no-simulator reference) and
writes a side-by-side video (rows: envs; columns: real | learned) and the numbers as JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from worldsim.actions import Action, VIZDOOM_SCHEMA
from worldsim.envs import WorldModelVectorEnv
from worldsim.eval.metrics import psnr
from worldsim.play.media import Mp4Writer

HORIZONS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


def policy(t: int) -> dict:
    """A scripted (open-loop) patrol: walk, turn right 90°, walk, press use, turn back."""
    phase = t % 64
    if phase < 20:
        return {"keys": ["forward"]}
    if phase < 30:
        return {"mouse": [9.0, 0.0]}
    if phase < 48:
        return {"keys": ["forward", "run"]}
    if phase < 50:
        return {"keys": ["use"]}
    return {"mouse": [-6.0, 0.0]}


def _act(entry: dict) -> Action:
    return VIZDOOM_SCHEMA.parse(entry)


def real_starts(n: int, context: int, map_id: str, seed: int):
    """One real game per env: spawn, turn to a heading of its own, then record ``context`` ticks."""
    from worldsim.record.doom import DoomConfig, DoomGame

    games, starts = [], []
    for i in range(n):
        g = DoomGame(DoomConfig(map=map_id, audio=False, depth=False, seed=seed + i))
        g.new_episode(seed=seed + i)
        turn = 360.0 * i / n / 12
        pre = [{}] * 10 + [{"mouse": [turn, 0.0]}] * 12   # the player cannot turn in its first tics
        for a in pre:
            g.act(_act(a))
        frames, acts = [], []
        for k in range(context):
            frames.append(g.observe()[0])
            if k < context - 1:
                a = _act({"keys": ["forward"]} if k % 2 else {})
                acts.append(a)
                g.act(a)
        b, ax = VIZDOOM_SCHEMA.stack(acts)
        starts.append({"frames": np.stack(frames), "buttons": b, "axes": ax})
        games.append(g)
    return games, starts


def grid(real: list[np.ndarray], gen: list[np.ndarray], scale: int) -> np.ndarray:
    import cv2

    rows = [np.concatenate([r, np.full((r.shape[0], 2, 3), 255, np.uint8), g], 1) for r, g in zip(real, gen)]
    img = np.concatenate(rows, 0)                                            # (n*H, 2W+2, 3)
    img = img.repeat(scale, 0).repeat(scale, 1)
    bar = np.zeros((18, img.shape[1], 3), np.uint8)
    w = img.shape[1] // 2
    cv2.putText(bar, "real ViZDoom", (6, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    cv2.putText(bar, "learned world", (w + 6, 13), cv2.FONT_HERSHEY_SIMPLEX, 0.45, (255, 255, 255), 1)
    return np.concatenate([bar, img], 0)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--world", default="default")
    ap.add_argument("--envs", type=int, default=4)
    ap.add_argument("--ticks", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--scale", type=int, default=3, help="video upscale")
    ap.add_argument("--out", type=Path, default=Path("out/robot_rollout"))
    args = ap.parse_args(argv)
    if args.envs < 1 or args.ticks < 1:
        ap.error("--envs and --ticks must be ≥ 1")

    venv = WorldModelVectorEnv(num_envs=args.envs, world=args.world, max_episode_steps=args.ticks + 1)
    world = venv.world
    map_id = (world.model.world.get("maps") or ["MAP01"])[0]
    games, starts = real_starts(args.envs, world.model.context_steps, map_id, args.seed)
    venv.reset(seed=args.seed, options={"start": starts})
    hold = [s["frames"][-1] for s in starts]
    args.out.mkdir(parents=True, exist_ok=True)
    video, curve, ref = None, [], []
    for t in range(args.ticks):
        entry = policy(t)
        a = _act(entry)
        gen, _, _, _, _ = venv.step({"buttons": np.repeat(a.buttons[None], args.envs, 0),
                                     "axes": np.repeat(a.axes[None], args.envs, 0)})   # (N, H, W, 3)
        real = []
        for g in games:
            g.act(a)
            real.append(g.observe()[0])
        curve.append(float(psnr(gen, np.stack(real)).mean()))   # per-env PSNR, mean over envs
        ref.append(float(psnr(np.stack(hold), np.stack(real)).mean()))
        frame = grid(real, list(gen), args.scale)
        if video is None:
            video = Mp4Writer(args.out / "side_by_side.mp4", world.tick_rate, frame.shape[:2], scale=1)
        video.add(frame)
    video.close()
    venv.close()
    for g in games:
        g.game.close()

    print(f"{args.envs} envs × {args.ticks} ticks, scripted patrol, learned world vs real ViZDoom ({map_id})")
    print(f"{'tick':>6} {'PSNR learned':>13} {'PSNR hold-start':>16}")
    report = {"envs": args.envs, "ticks": args.ticks, "map": map_id, "psnr_learned": {}, "psnr_hold_start": {}}
    for h in HORIZONS:
        if h <= args.ticks:
            print(f"{h:>6} {curve[h - 1]:>13.2f} {ref[h - 1]:>16.2f}")
            report["psnr_learned"][h] = round(curve[h - 1], 2)
            report["psnr_hold_start"][h] = round(ref[h - 1], 2)
    report["psnr_learned_mean"] = round(float(np.mean(curve)), 2)
    report["psnr_hold_start_mean"] = round(float(np.mean(ref)), 2)
    (args.out / "divergence.json").write_text(json.dumps(report, indent=1))
    print(f"mean over the rollout: learned {report['psnr_learned_mean']:.2f} dB, "
          f"hold-start {report['psnr_hold_start_mean']:.2f} dB")
    print(f"wrote {args.out / 'side_by_side.mp4'} and {args.out / 'divergence.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
