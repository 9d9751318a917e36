"""`worldsim info`: what this install can run (versions, devices, precision, the default world),
or, given files, what saved sessions hold and whether a world can resume them."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from worldsim import __version__
from worldsim.errors import WorldsimError


def add_info_args(p: argparse.ArgumentParser) -> None:
    p.description = ("Without paths: versions, devices and the default world. With paths: each saved session "
                     "(.wsnap: `worldsim play --save`, Session.save, a `worldsim serve --save-dir` directory) "
                     "with its world, tick, seed and remembered views.")
    p.add_argument("paths", nargs="*", metavar="SAVE", help="a .wsnap file, or a directory of them")
    p.add_argument("--world", default=None, metavar="W",
                   help="with SAVE paths: also say whether world W (a directory or 'default') can resume each one")
    p.add_argument("--json", action="store_true", help="print JSON")


def info_saves(args: argparse.Namespace) -> int:
    """`worldsim info SAVE...`: one line (or JSON object) per saved session; exit 1 if any file is
    not a readable snapshot, or (with --world) one that world cannot resume."""
    from worldsim.runtime.snapshot_file import SUFFIX, read_header, why_not_resumable

    files: list[Path] = []
    for p in map(Path, args.paths):
        if p.is_dir():
            found = sorted(p.glob(f"*{SUFFIX}"))
            if not found:
                raise WorldsimError(f"{p}: no saved sessions (*{SUFFIX}) in this directory")
            files += found
        else:
            files.append(p)
    world = None
    if args.world is not None:
        from worldsim.runtime import World

        world = World.load(args.world, device="cpu")
    rows, bad = [], 0
    for f in files:
        try:
            row: dict[str, Any] = read_header(f)
        except WorldsimError as e:
            rows.append({"file": str(f), "error": str(e)})
            bad += 1
            continue
        if world is not None:
            why = why_not_resumable(row, world.name, world.stream_digest)
            row["resumable"], row["why_not"] = why is None, why
            bad += why is not None
        rows.append(row)
    if args.json:
        print(json.dumps(rows, indent=1))
    else:
        for r in rows:
            if "error" in r:
                print(f"ERROR {r['error']}")  # the message names the file
                continue
            fit = "" if world is None else ("  resumable by " + world.name if r["resumable"] else
                                            f"  NOT resumable by {world.name}: {r['why_not']}")
            print(f"{r['file']}: world {r['world']}, tick {r['tick']}, seed {r['seed']}, {r['views']} remembered views, "
                  f"{r['bytes'] / 1e6:.1f} MB, saved {r['saved']}{fit}")
    return 1 if bad else 0


def main_info(args: argparse.Namespace) -> int:
    if args.paths:
        return info_saves(args)
    if args.world is not None:
        raise WorldsimError("--world checks saved sessions: give their files or directories too")
    import platform

    import torch

    from worldsim.model.packed_linear import INT8_AVAILABLE
    from worldsim.precision import compute_dtype, cpu_has_native_bf16, precision_name, world_precision

    info = {
        "worldsim": __version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda_available": torch.cuda.is_available(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "cpu_native_bf16": cpu_has_native_bf16(),
        "default_world": None,
    }
    info["precision"] = world_precision(info["device"])
    info["activations"] = precision_name(compute_dtype(info["device"]))  # what int8 computes around its linears
    info["int8_available"] = INT8_AVAILABLE
    from worldsim.model.world_model import default_world_info

    info["default_world"] = default_world_info()
    if args.json:
        print(json.dumps(info, indent=1))
    else:
        for k, v in info.items():
            print(f"{k:16s}{v}")
    return 0
