"""Snapshots on disk: a session saved to a file and resumed later, in this process or another.

A :class:`~worldsim.runtime.session.Snapshot` is the whole streaming state of a session (KV cache,
latest latent, pending tick, random generators, scene memory). :func:`save_snapshot` writes it as
one safetensors file — tensors only, never pickle — whose header metadata holds a small JSON
document: the format and its version, the world's name and the digest of what its stream depends
on (:func:`~worldsim.runtime.starts.primed_digest`: the weights and their settings), the tick and
the seed, and the scene memory's scalars. :func:`load_snapshot` checks all of that against the
world that is to resume it, so a file from another world or from other weights is refused with
a clear error instead of resuming into nonsense; a resumed session replays bit-exactly what the
saved one would have (tests/test_snapshot_file.py).

Size: the KV cache (8 ticks of every layer, ~1.5 MB for the default world) plus the scene memory's
filled slots (2 KB a view, up to 4.3 MB when all 2,048 are filled).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from worldsim.errors import WorldsimError

FORMAT, VERSION = "worldsim-snapshot", 1
SUFFIX = ".wsnap"


def save_snapshot(snap: Any, path: str | os.PathLike, digest: str | None) -> Path:
    """Write ``snap`` (a :class:`~worldsim.runtime.session.Snapshot`) to ``path``, atomically."""
    from safetensors.torch import save_file

    st = snap.state
    t: dict[str, torch.Tensor] = {"prev": st["prev"], "time": st["time"],
                                  "cache.time": st["cache"].time, "cache.cursor": st["cache"].cursor}
    for i, (k, v) in enumerate(zip(st["cache"].k, st["cache"].v)):
        t[f"cache.k.{i}"], t[f"cache.v.{i}"] = k, v
    for b, g in enumerate(st.get("rng", ())):
        t[f"rng.{b}"] = g
    if st.get("pending") is not None:
        for f in ("frame", "audio", "prior", "level", "action"):
            x = getattr(st["pending"], f)
            if x is not None:
                t[f"pending.{f}"] = x
    if st.get("prev_frame") is not None:
        t["prev_frame"] = st["prev_frame"]
    mems = []
    for b, m in enumerate(st.get("memories", ())):
        if m is None:
            mems.append(None)
            continue
        arrays, scalars = m.state()  # only its filled slots: a young session's file stays small
        t.update({f"memory.{b}.{k}": torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()})
        mems.append(scalars)
    meta = {"format": FORMAT, "version": VERSION, "world": snap.world, "digest": digest, "tick": snap.tick,
            "seed": snap.seed, "layers": len(st["cache"].k), "rows": len(st.get("rng", ())), "memories": mems,
            "pending": st.get("pending") is not None}
    path = Path(path)
    tmp = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({k: v.detach().cpu().contiguous() for k, v in t.items()}, str(tmp),
                  metadata={"worldsim": json.dumps(meta)})
        os.replace(tmp, path)
    except OSError as e:
        try:
            tmp.unlink(missing_ok=True)
        except OSError:
            pass
        raise WorldsimError(f"{path}: cannot write the snapshot there ({e.strerror or e})") from None
    return path


def _read(path: Path, tensors: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    """A snapshot file's JSON header and its tensors (``tensors``) or only their shapes;
    WorldsimError when it is missing, not a worldsim snapshot, or of another format version."""
    from safetensors import safe_open

    if not path.is_file():
        raise WorldsimError(f"{path}: no such snapshot file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get("worldsim", "null"))
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise WorldsimError(f"{path}: not a worldsim snapshot (no {FORMAT} header)")
            t = {k: f.get_tensor(k) if tensors else f.get_slice(k).get_shape() for k in f.keys()}
    except WorldsimError:
        raise
    except Exception as e:  # safetensors' own error types differ across versions
        raise WorldsimError(f"{path}: not a readable snapshot file ({e})") from None
    if meta.get("version") != VERSION:
        raise WorldsimError(f"{path}: snapshot format version {meta.get('version')}, this worldsim reads {VERSION}")
    return meta, t


def why_not_resumable(header: dict[str, Any], world_name: str, digest: str | None) -> str | None:
    """Why the world named ``world_name`` (stream digest ``digest``) cannot resume a snapshot with
    this header (:func:`read_header`'s, or the file's own JSON), or None when it can."""
    if header.get("world") != world_name:
        return f"a snapshot of world {header.get('world')!r}, not of {world_name!r}"
    if digest is not None and header.get("digest") is not None and header["digest"] != digest:
        return (f"saved by world {world_name!r} with other weights or settings than this one's (its stream "
                "would not continue): resume it with the world that saved it")
    return None


def read_header(path: str | os.PathLike) -> dict[str, Any]:
    """What a snapshot file says of itself, without reading its tensors (`worldsim info FILE`):
    ``world``, ``digest`` (of the weights that saved it), ``tick``, ``seed``, ``views`` (the scene
    memory's remembered views), ``bytes``, ``saved`` (the file's time, ISO 8601 UTC). WorldsimError
    for a file that is not a readable snapshot."""
    import datetime

    path = Path(path)
    meta, shapes = _read(path, tensors=False)
    try:
        views = sum(int(shape[0]) for k, shape in shapes.items() if k.startswith("memory.") and k.endswith(".slots"))
        st = path.stat()
        return {"file": str(path), "world": str(meta["world"]), "digest": meta.get("digest"), "tick": int(meta["tick"]),
                "seed": int(meta["seed"]), "views": views, "bytes": st.st_size,
                "saved": datetime.datetime.fromtimestamp(st.st_mtime, datetime.timezone.utc).isoformat(timespec="seconds")}
    except (KeyError, ValueError, TypeError, IndexError, OSError) as e:
        raise WorldsimError(f"{path}: a damaged or incomplete snapshot ({type(e).__name__}: {e})") from None


def load_snapshot(path: str | os.PathLike, model: Any, world_name: str, digest: str | None) -> Any:
    """The :class:`~worldsim.runtime.session.Snapshot` saved in ``path``, for the world ``model``
    (named ``world_name``, its stream digest ``digest``); WorldsimError when it is not a snapshot
    file, or one of another world or other weights."""
    from worldsim.model.kv_cache import KVCacheSnapshot
    from worldsim.model.memory import PoseTracker, SceneMemory
    from worldsim.model.stream_state import Pending
    from worldsim.runtime.session import Snapshot

    path = Path(path)
    meta, t = _read(path, tensors=True)
    problem = why_not_resumable(meta, world_name, digest)
    if problem:
        raise WorldsimError(f"{path}: {problem}")
    dev = model.device
    try:
        cache = model.dynamics.new_cache(1, device=dev, dtype=model.dtype)
        n = int(meta["layers"])
        k = [t[f"cache.k.{i}"].to(dev, cache.k[0].dtype) for i in range(n)]
        v = [t[f"cache.v.{i}"].to(dev, cache.v[0].dtype) for i in range(n)]
        if n != cache.n_layers or k[0].shape[1:] != cache.k[0].shape[1:]:
            raise WorldsimError(f"{path}: its KV cache ({n} layers, {tuple(k[0].shape[1:])}) does not fit this "
                                f"world's ({cache.n_layers} layers, {tuple(cache.k[0].shape[1:])})")
        state: dict[str, Any] = {
            "cache": KVCacheSnapshot(k, v, t["cache.time"].to(dev), t["cache.cursor"].to(dev)),
            "prev": t["prev"].to(dev), "time": t["time"].to(dev),
            "rng": [t[f"rng.{b}"] for b in range(int(meta["rows"]))],
            "pending": (Pending(*(t[f"pending.{f}"].to(dev) if f"pending.{f}" in t else None
                                  for f in ("frame", "audio", "prior", "level", "action")))
                        if meta.get("pending") else None),
            "prev_frame": t["prev_frame"].to(dev) if "prev_frame" in t else None}
        mems = []
        for b, scalars in enumerate(meta.get("memories") or []):
            if scalars is None:
                mems.append(None)
                continue
            m = SceneMemory(model.memory_cfg, tuple(state["prev"].shape[1:]),
                            PoseTracker(model.memory_cfg, *model._names))
            try:
                m.load_state({k: t[f"memory.{b}.{k}"].numpy() for k in ("slots", "keys", "latents", "where", "tick",
                                                                          "conf", "pose")}, scalars)
            except ValueError as e:
                raise WorldsimError(f"{path}: {e}") from None
            mems.append(m)
        state["memories"] = mems
        return Snapshot(world_name, int(meta["tick"]), int(meta["seed"]), state)
    except WorldsimError:
        raise
    except (KeyError, ValueError, TypeError, RuntimeError) as e:
        raise WorldsimError(f"{path}: a damaged or incomplete snapshot ({type(e).__name__}: {e})") from None
