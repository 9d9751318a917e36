"""Encode recorded episodes once with the trained codecs into a latent store.

The dynamics model trains on latents only, so the codecs run once over the data rather
than on every step; the store is ~2 KB per step (float16) and lives in memory during
training. ``<out>/latents/`` holds ``frames.npy`` (T, C, h, w) f16, ``audio.npy``
(T, Ca, Pa) f16, ``buttons.npy``, ``axes.npy``, ``pose.npy`` (when recorded) and
``index.json`` (episode boundaries, the codec checkpoints' train steps, the data's schema,
WAD and maps). A store whose codecs or episodes changed is rebuilt.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from worldsim.data.episode import Episode
from worldsim.model.checkpoint import read_component_json
from worldsim.train.loop import autocast


@dataclass
class LatentStore:
    frames: np.ndarray      # (T, C, h, w) float16
    audio: np.ndarray | None  # (T, Ca, Pa) float16
    buttons: np.ndarray     # (T, NB) uint8
    axes: np.ndarray        # (T, NA) float32
    bounds: np.ndarray      # (E + 1,) episode start offsets
    info: dict
    pose: np.ndarray | None = None  # (T, 5) recorded x, y, z, yaw, pitch (when every episode has one)

    def window_starts(self, length: int) -> np.ndarray:
        """Every start index whose window of ``length`` ticks stays inside one episode."""
        out = [np.arange(a, b - length + 1) for a, b in zip(self.bounds[:-1], self.bounds[1:]) if b - a >= length]
        return np.concatenate(out) if out else np.zeros(0, dtype=np.int64)


def _key(episodes: Sequence[Episode], codec_dir: Path) -> dict:
    steps = {n: read_component_json(codec_dir, n).get("meta", {}).get("train_steps")
             for n in ("frame_codec", "audio_codec") if (codec_dir / f"{n}.json").exists()}
    return {"episodes": [str(Path(e.path).resolve()) for e in episodes], "lengths": [len(e) for e in episodes],
            "codec_steps": steps}


def _encode_episode(e: Episode, frame_codec, audio_codec, fz: np.ndarray, az: np.ndarray | None, pos: int,
                    batch: int, device: str, done: Any = None) -> None:
    """Encode one episode into rows ``pos ..`` of the store's frame (and audio) memmaps."""
    n = len(e)
    for s in range(0, n, batch):
        sl = slice(s, min(n, s + batch))
        with autocast(device):
            fz[pos + sl.start:pos + sl.stop] = frame_codec.encode(torch.from_numpy(np.array(e.frames[sl])).to(device)).cpu().numpy()
            if az is not None:
                az[pos + sl.start:pos + sl.stop] = audio_codec.encode(torch.from_numpy(np.array(e.audio[sl])).to(device)).cpu().numpy()
        if done is not None:
            with done.get_lock():
                done.value += sl.stop - sl.start


@torch.no_grad()
def _encode_share(frame_codec, audio_codec, jobs: list[tuple[str, int]], out: str, batch: int, done: Any) -> None:
    """A worker process of :func:`build_latents`: its episodes (path, first row) into the shared memmaps."""
    torch.set_num_threads(1)  # one core per worker (README: more threads collapse on a busy 2-core machine)
    fz = np.load(Path(out) / "frames.npy.partial", mmap_mode="r+")
    az = np.load(Path(out) / "audio.npy.partial", mmap_mode="r+") if audio_codec is not None else None
    for path, pos in jobs:  # the audio codec arrives frozen (build_latents): its 2-D copies travel in its __dict__
        _encode_episode(Episode(path), frame_codec, audio_codec, fz, az, pos, batch, "cpu", done)
    fz.flush()
    if az is not None:
        az.flush()


@torch.no_grad()
def build_latents(episodes: Sequence[Episode], frame_codec, audio_codec, codec_dir: Path, out: Path,
                  batch: int = 256, device: str = "cpu", progress: bool = True, workers: int = 1) -> LatentStore:
    """Encode ``episodes`` into the latent store ``out`` (reused when its key still matches).
    ``workers`` > 1 (CPU only): that many processes of one thread each share the episodes
    (the codecs' weights reach them through shared memory); the store is the same."""
    if workers < 1:
        raise ValueError(f"latent encoding workers must be ≥ 1, got {workers}")
    out = Path(out)
    key = _key(episodes, Path(codec_dir))
    idx_file = out / "index.json"
    if idx_file.exists():
        try:
            info = json.loads(idx_file.read_text())
            if info.get("key") == key:
                _write_pose(episodes, out)  # stores built before poses were kept gain them here
                return load_latents(out)
        except (json.JSONDecodeError, OSError):
            pass
    out.mkdir(parents=True, exist_ok=True)
    (out / "pose.npy").unlink(missing_ok=True)  # belongs to the store being replaced
    lengths = [len(e) for e in episodes]
    total = int(sum(lengths))
    e0 = episodes[0]
    fz = np.lib.format.open_memmap(out / "frames.npy.partial", mode="w+", dtype=np.float16,
                                   shape=(total, frame_codec.cfg.latent_channels, frame_codec.cfg.latent_size,
                                          frame_codec.cfg.latent_size))
    az = None
    if audio_codec is not None:
        az = np.lib.format.open_memmap(out / "audio.npy.partial", mode="w+", dtype=np.float16,
                                       shape=(total, audio_codec.cfg.latent_channels, audio_codec.cfg.positions))
    buttons = np.zeros((total, len(e0.schema.buttons)), np.uint8)
    axes = np.zeros((total, len(e0.schema.axes)), np.float32)
    frame_codec.eval()
    if audio_codec is not None:
        audio_codec.eval()
        audio_codec.freeze_for_inference()  # 2-D channels-last convs: the audio encode ~2x faster (audio_codec.as_2d)
    from tqdm import tqdm
    bar = tqdm(total=total, desc="latents", disable=not progress, mininterval=2.0)
    offsets = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(int)
    for e, pos in zip(episodes, offsets):
        buttons[pos:pos + len(e)] = e.buttons
        axes[pos:pos + len(e)] = e.axes
    workers = min(workers, len(episodes)) if str(device) == "cpu" else 1
    if workers == 1:
        for e, pos in zip(episodes, offsets):
            _encode_episode(e, frame_codec, audio_codec, fz, az, int(pos), batch, device)
            bar.update(len(e))
    else:
        _encode_in_workers(episodes, offsets, frame_codec, audio_codec, fz, az, out, batch, workers, bar)
    bar.close()
    fz.flush()
    del fz
    os.replace(out / "frames.npy.partial", out / "frames.npy")
    if az is not None:
        az.flush()
        del az
        os.replace(out / "audio.npy.partial", out / "audio.npy")
    np.save(out / "buttons.npy", buttons)
    np.save(out / "axes.npy", axes)
    _write_pose(episodes, out)
    info = {"key": key, "bounds": np.concatenate([[0], np.cumsum(lengths)]).tolist(),
            "schema": e0.schema.to_dict(), "wad": e0.meta.get("wad"),
            "maps": sorted({e.map_id for e in episodes}), "tick_rate": e0.tick_rate,
            "resolution": list(e0.resolution), "audio": e0.meta.get("audio"),
            # the recorded env's own action space, when every episode agrees on one (WorldModelEnv)
            "env_action_space": _common(e.meta.get("env_action_space") for e in episodes)}
    tmp = out / "index.json.partial"
    tmp.write_text(json.dumps(info))
    os.replace(tmp, idx_file)
    return load_latents(out)


def _encode_in_workers(episodes: Sequence[Episode], offsets: np.ndarray, frame_codec, audio_codec, fz, az,
                       out: Path, batch: int, workers: int, bar: Any) -> None:
    """Deal the episodes round-robin (longest first) to ``workers - 1`` spawned processes and this one."""
    import time
    import torch.multiprocessing as mp

    fz.flush()
    if az is not None:
        az.flush()
    ctx = mp.get_context("spawn")  # not fork: a forked process inherits torch's thread pools half made
    done = ctx.Value("q", 0)
    order = sorted(range(len(episodes)), key=lambda i: -len(episodes[i]))
    shares = [[(str(episodes[i].path), int(offsets[i])) for i in order[k::workers]] for k in range(workers)]
    procs = [ctx.Process(target=_encode_share, args=(frame_codec, audio_codec, share, str(out), batch, done), daemon=True)
             for share in shares[1:]]
    for p in procs:
        p.start()
    try:
        mine = {str(e.path): e for e in episodes}
        for path, pos in shares[0]:
            _encode_episode(mine[path], frame_codec, audio_codec, fz, az, pos, batch, "cpu", done)
            bar.update(done.value - bar.n)
        while any(p.is_alive() for p in procs):
            time.sleep(0.5)
            bar.update(done.value - bar.n)
    finally:
        for p in procs:
            p.join(timeout=1.0)
            if p.is_alive():
                p.terminate()
    failed = [p.exitcode for p in procs if p.exitcode != 0]
    if failed:
        from worldsim.errors import WorldsimError
        raise WorldsimError(f"latent encoding: {len(failed)} worker process(es) failed (exit codes {failed}; "
                            "the error is printed above); nothing was kept — run again, or with one worker")
    bar.update(done.value - bar.n)


def _common(values) -> Any:
    """The one value all of ``values`` share, else None."""
    vals = list(values)
    return vals[0] if vals and all(v == vals[0] for v in vals) else None


def _write_pose(episodes: Sequence[Episode], out: Path) -> None:
    """``pose.npy`` (T, 5) when every episode recorded one (the memory input's training targets)."""
    if (out / "pose.npy").exists() or any(e.pose is None for e in episodes):
        return
    pose = np.concatenate([np.asarray(e.pose, np.float32) for e in episodes])
    np.save(out / "pose.partial.npy", pose)
    os.replace(out / "pose.partial.npy", out / "pose.npy")


def load_latents(out: Path) -> LatentStore:
    out = Path(out)
    info = json.loads((out / "index.json").read_text())
    audio = np.load(out / "audio.npy") if (out / "audio.npy").exists() else None
    pose = np.load(out / "pose.npy") if (out / "pose.npy").exists() else None
    store = LatentStore(np.load(out / "frames.npy"), audio, np.load(out / "buttons.npy"), np.load(out / "axes.npy"),
                        np.asarray(info["bounds"], np.int64), info, pose)
    if pose is not None and len(pose) != len(store.frames):
        raise ValueError(f"{out}: pose.npy has {len(pose)} rows, frames.npy {len(store.frames)}")
    return store
