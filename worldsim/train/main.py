"""Argument handling for ``worldsim train`` and ``worldsim export`` (torchrun-aware)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

from worldsim.device import DEVICE_HELP, device_arg, pick_device
from worldsim.train.loop import TrainingStopped, stop_on_signal
from worldsim.train.pipeline import STAGES, TrainConfigError, export_world, load_run_config, run_training


def add_train_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", required=True, help="YAML file, or a name in configs/ (tiny, default, gpu)")
    p.add_argument("--data", help="episode directory (overrides the config's data)")
    p.add_argument("--out", type=Path, help="run directory (default runs/<config name>)")
    p.add_argument("--resume", action="store_true", help="continue from the run directory's weights and optimizer state")
    p.add_argument("--max-steps", type=int, help="train at most this many steps per stage in this invocation")
    p.add_argument("--max-minutes", type=float, help="stop the dynamics stage after this much wall time (saved)")
    p.add_argument("--latents", type=Path, help="train the dynamics on this prebuilt latent store (e.g. unpacked "
                   "with `python -m worldsim.train.latent_pack`) instead of encoding --data")
    p.add_argument("--stage", action="append", choices=STAGES, help="run only these stages (repeatable)")
    p.add_argument("--device", type=device_arg, help=DEVICE_HELP)
    p.add_argument("--threads", type=int, default=1, help="torch threads per process on CPU (default 1: "
                   "more collapse on a busy 2-core machine)")
    p.add_argument("--encode-workers", type=int, default=1, help="processes (one thread each) that encode the "
                   "recordings into the latent store on a CPU (default 1; 2 on an otherwise idle 2-core machine "
                   "halves that stage)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def main_train(args: argparse.Namespace) -> int:
    if args.max_steps is not None and args.max_steps < 1:
        raise TrainConfigError(f"--max-steps must be ≥ 1, got {args.max_steps}")
    if args.encode_workers < 1:
        raise TrainConfigError(f"--encode-workers must be ≥ 1, got {args.encode_workers}")
    if args.max_minutes is not None and not args.max_minutes > 0:
        raise TrainConfigError(f"--max-minutes must be > 0, got {args.max_minutes}")
    cfg = load_run_config(args.config)
    out = args.out or Path("runs") / cfg.name
    world = int(os.environ.get("WORLD_SIZE", "1"))
    local = int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(args.device)  # --device was checked when the flags were read
    if device.startswith("cuda"):
        if world > 1:
            device = f"cuda:{local}"
            torch.cuda.set_device(local)
    else:
        torch.set_num_threads(max(1, args.threads))
    if world > 1:
        import torch.distributed as dist
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    try:
        with stop_on_signal():  # Ctrl-C: finish the step, save, stop (see worldsim.train.loop)
            report = run_training(cfg, out, data=args.data, resume=args.resume, max_steps=args.max_steps,
                                  stages=tuple(args.stage or STAGES), device=device, progress=not args.quiet,
                                  latents=args.latents, encode_workers=args.encode_workers,
                                  max_seconds=None if args.max_minutes is None else 60.0 * args.max_minutes)
    except TrainingStopped as e:
        if int(os.environ.get("RANK", "0")) == 0:
            print(f"worldsim train: stopped: {e}; `--resume` continues {out}", file=sys.stderr)
        return 130
    finally:
        if world > 1:
            import torch.distributed as dist
            dist.destroy_process_group()
    if int(os.environ.get("RANK", "0")) == 0:
        print(f"trained {out}: " + ", ".join(f"{k} {v['steps']} steps" if "steps" in v else f"{k} skipped ({v.get('skipped')})"
                                             for k, v in report.items() if isinstance(v, dict)))
    return 0


def add_export_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run", type=Path, help="a run directory written by `worldsim train`")
    p.add_argument("--out", type=Path, required=True, help="where to write the bf16 world checkpoint")
    p.add_argument("--starts", type=Path, help="episode directory to take start contexts from (default: the run's)")
    p.add_argument("--prior-space", choices=("latent", "pixel"), default=None,
                   help="the world's turn prior (default: the run's): pixel re-aims the previous picture, decoded by "
                        "the frame codec the decoder stage started from when the run has one (README: Train a world)")


def main_export(args: argparse.Namespace) -> int:
    out = export_world(args.run, args.out, starts_data=args.starts, prior_space=args.prior_space)
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"exported {args.run} → {out} ({size / 1e6:.1f} MB)")
    return 0
