"""Start contexts: the real frames a new session is primed with.

A world checkpoint may carry ``starts.safetensors`` (written by ``worldsim export``): ``K``
short real contexts from its training data — ``frames`` (K, c, H, W, 3) uint8, ``audio``
(K, c, S, C) int16, ``buttons`` (K, c-1, NB) uint8, ``axes`` (K, c-1, NA) float32. A
session opened without a start takes context ``seed % K``. A single image is also a valid
start (one-frame context); without either, a flat grey frame is used.

The file may also carry the contexts' latents (``encode_starts``): ``frame_latents``
(K, c, C, h, w) and ``audio_latents`` (K, c, Da) float32, encoded in fp32 by the world's own
codecs, with ``codec_digest`` (sha256 of the codec weight files). Opening a shipped start then
skips encoding its context (on an AVX2 CPU in fp32 ~50 ms of a first open). A digest that does
not match the codecs beside the file (a codec retrained or swapped) makes the latents ignored:
the context is encoded at open, as without them.

It may carry, too, the network's state right after priming on each start (``primed.*``: the
KV cache's filled slots, the pending last context tick, the latest latent; fp32, made by the
world's own dynamics with ``encode_starts``), checked by ``primed_digest`` (sha256 of the codec
and dynamics weights, the dynamics' config and the turn prior's re-aim settings). The first open
of a shipped start then runs no forward at all — a restore where priming took ~70 ms on an AVX2
CPU in fp32 — exactly as a reopen does (``World.open``).
Another digest, or a shape the world's cache does not have, makes them ignored.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from worldsim.errors import WorldsimError

STARTS_FILE = "starts.safetensors"
LATENT_KEYS = ("frame_latents", "audio_latents", "codec_digest")
CODEC_FILES = ("frame_codec.safetensors", "audio_codec.safetensors")
PRIMED = "primed."  # prefix of the primed-state arrays
PENDING_FIELDS = ("frame", "audio", "prior", "level", "action")


def codec_digest(root: str | os.PathLike, names: Sequence[str] = CODEC_FILES) -> np.ndarray:
    """sha256 of the world's codec weight files (or ``names``), as a (32,) uint8 array."""
    h = hashlib.sha256()
    for name in names:
        f = Path(root) / name
        if f.exists():
            h.update(name.encode())
            h.update(f.read_bytes())
    return np.frombuffer(h.digest(), np.uint8).copy()


class StartContexts:
    def __init__(self, arrays: dict[str, np.ndarray] | None, model):
        self.arrays = arrays
        self.model = model

    @classmethod
    def load(cls, root: str | os.PathLike | None, model) -> "StartContexts":
        if root is None or not (Path(root) / STARTS_FILE).exists():
            return cls(None, model)
        from safetensors.numpy import load_file
        try:
            arrays = load_file(str(Path(root) / STARTS_FILE))
        except Exception as e:
            raise WorldsimError(f"{Path(root) / STARTS_FILE}: unreadable ({e})") from None
        if any(k in arrays for k in LATENT_KEYS) and not (
                "codec_digest" in arrays and np.array_equal(arrays["codec_digest"], codec_digest(root))):
            arrays = {k: v for k, v in arrays.items() if k not in LATENT_KEYS}  # stale or unchecked: encode at open
        if any(k.startswith(PRIMED) for k in arrays) and not (
                "primed_digest" in arrays and np.array_equal(
                    arrays["primed_digest"], primed_digest(root, getattr(model, "reaim_net", None) is not None))):
            arrays = {k: v for k, v in arrays.items() if not k.startswith(PRIMED)}  # stale: prime at open
        return cls(arrays, model)

    def __len__(self) -> int:
        return 0 if self.arrays is None else int(self.arrays["frames"].shape[0])

    def index(self, start: Any, seed: int) -> int | None:
        """Which shipped start ``context(start, seed)`` returns, or None for any other context."""
        return seed % len(self) if start is None and self.arrays is not None else None

    def latents(self, index: int | None) -> tuple[np.ndarray, np.ndarray | None] | None:
        """Stored latents of shipped start ``index``: frame (c, C, h, w), audio (c, Da) or None;
        None when the file has none (or stale ones)."""
        a = self.arrays
        if index is None or a is None or "frame_latents" not in a:
            return None
        return a["frame_latents"][index], a["audio_latents"][index] if "audio_latents" in a else None

    def primed(self, index: int | None) -> dict[str, Any] | None:
        """The stored network state after priming on shipped start ``index``, as
        ``StreamState.restore`` takes it (no generator, no scene memory), on the model's device
        and in its cache dtype; None when the file has none or they do not fit this world."""
        a = self.arrays
        if index is None or a is None or any(PRIMED + k not in a for k in ("cursor", "slot_time", "prev", "time")):
            return None
        import torch

        from worldsim.model.kv_cache import KVCacheSnapshot
        from worldsim.model.stream_state import Pending
        m = self.model
        like = m.dynamics.new_cache(1, device=m.device, dtype=m.dtype)  # the shapes this world streams with
        ks, vs = [], []
        for layer in range(like.n_layers):
            for name, out, ref in (("k", ks, like.k[layer]), ("v", vs, like.v[layer])):
                x = a.get(f"{PRIMED}{name}.{layer}")
                if x is None or x.shape[1:2] + x.shape[3:] != ref.shape[1:2] + ref.shape[3:] or x.shape[2] > ref.shape[2]:
                    return None
                full = torch.zeros_like(ref)  # (1, H, slots * N, Dh): the empty slots after the filled ones
                full[:, :, :x.shape[2]] = torch.as_tensor(x[index:index + 1]).to(ref.dtype)
                out.append(full)
        if a[PRIMED + "slot_time"].shape[1:] != like.time.shape[1:]:
            return None

        def t(name: str) -> Any:
            x = a.get(PRIMED + name)
            return None if x is None else torch.as_tensor(np.array(x[index:index + 1])).to(m.device)
        pend = Pending(*(t("pending." + f) for f in PENDING_FIELDS))
        return {"cache": KVCacheSnapshot(ks, vs, t("slot_time"), t("cursor")), "prev": t("prev"), "time": t("time"),
                "pending": pend}

    def context(self, start: Any, seed: int) -> dict[str, np.ndarray | None]:
        m = self.model
        H, W = m.resolution
        nb, na = m.schema.num_buttons, m.schema.num_axes
        if start is None:
            if self.arrays is None:
                start = np.full((H, W, 3), 96, np.uint8)
            else:
                k = self.index(start, seed)
                a = self.arrays
                return {"frames": a["frames"][k], "audio": a["audio"][k] if "audio" in a else None,
                        "buttons": a["buttons"][k], "axes": a["axes"][k]}
        if isinstance(start, np.ndarray):
            if start.shape != (H, W, 3) or start.dtype != np.uint8:
                raise WorldsimError(f"start image must be ({H}, {W}, 3) uint8, got {start.shape} {start.dtype}")
            return {"frames": start[None], "audio": None, "buttons": np.zeros((0, nb), np.uint8),
                    "axes": np.zeros((0, na), np.float32)}
        if isinstance(start, Mapping):
            try:
                fr = np.asarray(start["frames"])
                b = np.asarray(start.get("buttons", np.zeros((len(fr) - 1, nb))), np.uint8)
                ax = np.asarray(start.get("axes", np.zeros((len(fr) - 1, na))), np.float32)
            except KeyError:
                raise WorldsimError("a start context needs 'frames'") from None
            if fr.ndim != 4 or fr.shape[1:] != (H, W, 3) or fr.dtype != np.uint8 or len(fr) < 1:
                raise WorldsimError(f"start frames must be (c, {H}, {W}, 3) uint8, got {fr.shape} {fr.dtype}")
            if b.shape != (len(fr) - 1, nb) or ax.shape != (len(fr) - 1, na):
                raise WorldsimError(f"a context of {len(fr)} frames needs {len(fr) - 1} actions "
                                    f"(buttons ({len(fr) - 1}, {nb}), axes ({len(fr) - 1}, {na}))")
            c = m.context_steps
            au = start.get("audio")
            au = None if au is None else np.asarray(au, np.int16)[-c:]
            return {"frames": fr[-c:], "audio": au, "buttons": b[-(c - 1):] if c > 1 else b[:0],
                    "axes": ax[-(c - 1):] if c > 1 else ax[:0]}
        raise WorldsimError(f"unsupported start {type(start).__name__}: use None, an image or a context dict")


def write_starts(episodes: Sequence[Any], out: str | os.PathLike, context: int, n: int = 8, seed: int = 0) -> Path:
    """Save ``n`` real contexts of ``context`` steps from ``episodes`` (spread over them)."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    eps = [e for e in episodes if len(e) > context + 1]
    if not eps:
        raise WorldsimError(f"no episode longer than {context + 1} steps to take start contexts from")
    fr, au, bu, ax = [], [], [], []
    for i in range(n):
        e = eps[i % len(eps)]
        s = int(rng.integers(0, len(e) - context))
        fr.append(np.array(e.frames[s:s + context]))
        if e.audio is not None:
            au.append(np.array(e.audio[s:s + context]))
        bu.append(np.array(e.buttons[s:s + context - 1]))
        ax.append(np.array(e.axes[s:s + context - 1]))
    arrays = {"frames": np.stack(fr), "buttons": np.stack(bu), "axes": np.stack(ax)}
    if len(au) == n:
        arrays["audio"] = np.stack(au)
    path = Path(out) / STARTS_FILE
    save_file(arrays, str(path))
    return path


def encode_starts(root: str | os.PathLike, batch: int = 64) -> Path:
    """Add the latents of ``root``'s start contexts to its starts file, encoded in fp32 by
    ``root``'s codecs (run after the codecs are final: ``worldsim export`` does)."""
    import torch
    from safetensors.numpy import load_file, save_file

    from worldsim.model.world_model import WorldModel

    path = Path(root) / STARTS_FILE
    arrays = {k: v for k, v in load_file(str(path)).items() if k not in LATENT_KEYS}
    model = WorldModel.load(root, precision="fp32")
    K, c = arrays["frames"].shape[:2]
    frames = arrays["frames"].reshape(K * c, *arrays["frames"].shape[2:])
    with torch.no_grad():
        z = torch.cat([model.frame_codec.encode(torch.as_tensor(frames[i:i + batch]))
                       for i in range(0, len(frames), batch)]).float()
        arrays["frame_latents"] = np.ascontiguousarray(z.reshape(K, c, *z.shape[1:]).numpy())  # (K, c, C, h, w)
        if "audio" in arrays and model.audio_codec is not None:
            au = arrays["audio"].reshape(K * c, *arrays["audio"].shape[2:])
            za = torch.cat([model.audio_codec.encode(torch.as_tensor(au[i:i + batch]))
                            for i in range(0, len(au), batch)]).float()
            arrays["audio_latents"] = np.ascontiguousarray(za.reshape(K, c, -1).numpy())  # (K, c, Da)
        arrays.update(_primed_arrays(model, arrays))
    arrays["codec_digest"] = codec_digest(root)
    arrays["primed_digest"] = primed_digest(root)
    save_file(arrays, str(path))
    return path


def primed_digest(root: str | os.PathLike, learned_reaim: bool = True) -> np.ndarray:
    """sha256 of what priming depends on: the codecs' weights (the pixel turn prior's own codec,
    ``frame_codec_prior``, and its learned form, ``reaim``, too), the dynamics' weights and config,
    and the prior's re-aim (the screen-fixed pixels and field of view of world.json's ``memory``). Not the files' notes: a
    history entry written into dynamics.json's meta leaves a stored priming valid (in session 25
    one such edit, after ``encode_starts``, left the shipped world priming every start at open).
    ``learned_reaim=False``: the digest of a world loaded to turn with the pixel prior its ``reaim``
    imitates, which a priming made with the net does not match."""
    import json

    def section(name: str, key: str) -> Any:
        f = Path(root) / name
        return json.loads(f.read_text()).get(key) if f.exists() else None

    mem = section("world.json", "memory") or {}
    what = {"dynamics": section("dynamics.json", "config"), "overlay": mem.get("overlay"), "fov": mem.get("fov")}
    if learned_reaim and section("reaim.json", "config") is not None:  # its settings (max_deg) too
        what["reaim"] = section("reaim.json", "config")
    reaim = ("reaim.safetensors",) if learned_reaim else ()
    h = hashlib.sha256(codec_digest(root, CODEC_FILES + ("frame_codec_prior.safetensors", "dynamics.safetensors")
                                    + reaim).tobytes())
    h.update(json.dumps(what, sort_keys=True).encode())
    return np.frombuffer(h.digest(), np.uint8).copy()


def _primed_arrays(model, arrays: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Each start primed by ``model`` (fp32, from the stored latents), as ``primed.*`` arrays
    stacked over the starts; the cache keeps only the slots priming fills (the first ones)."""
    model.set_memory(False)
    snaps = []
    for k in range(arrays["frames"].shape[0]):
        state = model.new_state([0])
        lat = (arrays["frame_latents"][k:k + 1], arrays["audio_latents"][k:k + 1] if "audio_latents" in arrays else None)
        model.prime(state, arrays["frames"][k:k + 1], arrays["audio"][k:k + 1] if "audio" in arrays else None,
                    arrays["buttons"][k:k + 1], arrays["axes"][k:k + 1], latents=lat)
        snaps.append(state.snapshot())
    filled = max(int(s["cache"].cursor.max()) for s in snaps) * snaps[0]["cache"].k[0].shape[2] // \
        snaps[0]["cache"].time.shape[1]  # priming writes slots 0, 1, … of an empty cache

    def stack(xs) -> np.ndarray:
        return np.ascontiguousarray(np.concatenate([x.detach().cpu().numpy() for x in xs]))
    out = {PRIMED + "slot_time": stack([s["cache"].time for s in snaps]),
           PRIMED + "cursor": stack([s["cache"].cursor for s in snaps]),
           PRIMED + "prev": stack([s["prev"] for s in snaps]), PRIMED + "time": stack([s["time"] for s in snaps])}
    for layer in range(len(snaps[0]["cache"].k)):
        out[f"{PRIMED}k.{layer}"] = stack([s["cache"].k[layer][:, :, :filled] for s in snaps])
        out[f"{PRIMED}v.{layer}"] = stack([s["cache"].v[layer][:, :, :filled] for s in snaps])
    for f in PENDING_FIELDS:
        if getattr(snaps[0]["pending"], f) is not None:
            out[f"{PRIMED}pending.{f}"] = stack([getattr(s["pending"], f) for s in snaps])
    return out
