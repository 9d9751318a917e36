"""Pack a latent store small enough to carry to another machine, and unpack it there.

A lent GPU machine may have no recordings, no ViZDoom and only a narrow transfer; the
dynamics stage needs only the latent store (``worldsim train --latents``). A pack is one or
more ``.npz`` files, each a whole number of episodes: latents quantised to uint8 per channel
(error ≈ 0.015 of the latents' unit scale, far below the training's context noise),
actions, poses and the store's index, lzma-compressed (~0.9 KB per tick instead of 2.2).

    python -m worldsim.train.latent_pack pack runs/X/latents packs/ --parts 2
    python -m worldsim.train.latent_pack unpack runs/gpu/latents packs/part*.npz
"""

from __future__ import annotations

import argparse
import io
import json
import lzma
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from worldsim.train.latents import LatentStore, load_latents


def _quantise(x: np.ndarray) -> dict[str, np.ndarray]:
    axes = (0,) + tuple(range(2, x.ndim))  # per channel (axis 1)
    lo = x.min(axis=axes, keepdims=True).astype(np.float32)
    hi = np.maximum(x.max(axis=axes, keepdims=True).astype(np.float32), lo + 1e-6)
    q = np.round((x.astype(np.float32) - lo) / (hi - lo) * 255.0).astype(np.uint8)
    return {"q": q, "lo": lo, "hi": hi}


def _dequantise(q: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    return (q.astype(np.float32) / 255.0 * (hi - lo) + lo).astype(np.float16)


def pack(store_dir: str | os.PathLike, out_dir: str | os.PathLike, parts: int = 1) -> list[Path]:
    """Split ``store_dir`` into ``parts`` files of whole episodes (about equal sizes)."""
    st = load_latents(Path(store_dir))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    E = len(st.bounds) - 1
    if not 1 <= parts <= E:
        raise ValueError(f"--parts must be between 1 and the store's {E} episodes, got {parts}")
    cuts = np.searchsorted(st.bounds, np.linspace(0, st.bounds[-1], parts + 1)[1:-1])
    edges = [0, *sorted(set(int(c) for c in cuts)), E]
    files = []
    for i, (e0, e1) in enumerate(zip(edges[:-1], edges[1:])):
        a, b = int(st.bounds[e0]), int(st.bounds[e1])
        arrays: dict[str, np.ndarray] = {"bounds": st.bounds[e0:e1 + 1] - a, "buttons": st.buttons[a:b],
                                         "axes": st.axes[a:b]}
        for name, x in (("frames", st.frames[a:b]), ("audio", None if st.audio is None else st.audio[a:b])):
            if x is not None:
                arrays.update({f"{name}_{k}": v for k, v in _quantise(np.asarray(x)).items()})
        if st.pose is not None:
            arrays["pose"] = st.pose[a:b].astype(np.float32)
        info = {**st.info, "bounds": None, "part": [i, len(edges) - 1]}
        arrays["info"] = np.frombuffer(json.dumps(info).encode(), np.uint8)
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        f = out / f"part{i}.npz.xz"
        tmp = f.with_suffix(".partial")
        tmp.write_bytes(lzma.compress(buf.getvalue(), preset=6))
        os.replace(tmp, f)
        files.append(f)
    return files


def unpack(out_dir: str | os.PathLike, files: Sequence[str | os.PathLike]) -> LatentStore:
    """Join the given pack files (any subset, in order) into a latent store at ``out_dir``."""
    if not files:
        raise ValueError("no pack files given")
    parts = []
    for f in files:
        try:
            with np.load(io.BytesIO(lzma.decompress(Path(f).read_bytes()))) as z:
                parts.append({k: z[k] for k in z.files})
        except (OSError, lzma.LZMAError, ValueError) as e:
            raise ValueError(f"{f}: not a latent pack ({e})") from None
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    info = json.loads(parts[0]["info"].tobytes().decode())
    bounds = [0]
    for p in parts:
        bounds += (np.asarray(p["bounds"][1:]) + bounds[-1]).tolist()
    np.save(out / "frames.npy", np.concatenate([_dequantise(p["frames_q"], p["frames_lo"], p["frames_hi"]) for p in parts]))
    if "audio_q" in parts[0]:
        np.save(out / "audio.npy", np.concatenate([_dequantise(p["audio_q"], p["audio_lo"], p["audio_hi"]) for p in parts]))
    np.save(out / "buttons.npy", np.concatenate([p["buttons"] for p in parts]))
    np.save(out / "axes.npy", np.concatenate([p["axes"] for p in parts]))
    if all("pose" in p for p in parts):
        np.save(out / "pose.npy", np.concatenate([p["pose"] for p in parts]))
    info.pop("part", None)
    info.update(bounds=bounds, key={"packed_from": [str(f) for f in files]})
    (out / "index.json").write_text(json.dumps(info))
    return load_latents(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m worldsim.train.latent_pack", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pack", help="store → pack files")
    p.add_argument("store", type=Path)
    p.add_argument("out", type=Path)
    p.add_argument("--parts", type=int, default=1)
    u = sub.add_parser("unpack", help="pack files → store")
    u.add_argument("out", type=Path)
    u.add_argument("files", nargs="+", type=Path)
    a = ap.parse_args(argv)
    if a.cmd == "pack":
        for f in pack(a.store, a.out, a.parts):
            print(f"{f} ({f.stat().st_size / 1e6:.1f} MB)")
    else:
        st = unpack(a.out, a.files)
        print(f"{a.out}: {len(st.frames)} ticks, {len(st.bounds) - 1} episodes")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
