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


def codec_digest(root: str | os.PathLike) -> np.ndarray:
    """sha256 of the world's codec weight files, as a (32,) uint8 array."""
    h = hashlib.sha256()
    for name in CODEC_FILES:
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
    arrays["codec_digest"] = codec_digest(root)
    save_file(arrays, str(path))
    return path
