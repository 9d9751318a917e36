"""Rolling KV cache for the block-causal dynamics transformer.

Streaming state is an explicit object (audiocraft/nanochat style). It keeps the keys and
values of the last ``slots`` *clean* blocks (one block = one tick's tokens), one tensor
per layer: ``k[l]``/``v[l]`` of shape ``(B, H, slots * N, Dh)``, written in a ring. Each
slot also remembers the tick it holds (``time``, ``-1`` = empty), because the attention
bias depends only on the tick distance between query and key — so absolute tick counts
never grow into the numbers the network sees, and rows of a batch may be at different
ticks (sessions that joined at different times).

Contract:
* ``append(layer, k, v)`` stages one block's keys/values for ``layer`` (called by every
  layer during a *commit* forward); ``commit(time)`` then makes the staged block visible.
  Forwards that do not commit (the denoising passes) read the cache but leave it unchanged.
* ``snapshot()`` returns an independent copy; ``restore(snap)`` puts it back bit-exactly.
* ``select(rows)`` / ``merge`` support batching sessions that join and leave.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class KVCacheSnapshot:
    k: list[torch.Tensor]
    v: list[torch.Tensor]
    time: torch.Tensor
    cursor: torch.Tensor


class KVCache:
    def __init__(self, n_layers: int, batch: int, heads: int, head_dim: int, slots: int, block_tokens: int,
                 device: torch.device | str = "cpu", dtype: torch.dtype = torch.bfloat16):
        self.n_layers, self.slots, self.N = n_layers, slots, block_tokens
        shape = (batch, heads, slots * block_tokens, head_dim)
        self.k = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.v = [torch.zeros(shape, device=device, dtype=dtype) for _ in range(n_layers)]
        self.time = torch.full((batch, slots), -1, dtype=torch.long, device=device)  # (B, slots)
        self.cursor = torch.zeros(batch, dtype=torch.long, device=device)  # next slot to write, per row
        self._staged: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}

    @property
    def batch(self) -> int:
        return self.time.shape[0]

    def reset(self) -> None:
        self.time.fill_(-1)
        self.cursor.zero_()
        self._staged.clear()

    def append(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> None:
        """Stage one block: ``k``, ``v`` of shape ``(B, H, N, Dh)``."""
        self._staged[layer] = (k, v)

    def commit(self, time: torch.Tensor) -> None:
        """Write the staged block(s) of every layer into each row's next slot(s), tagged with
        ``time``: (B,) for one block, or (B, m) for m consecutive blocks staged together."""
        if len(self._staged) != self.n_layers:
            raise RuntimeError(f"KVCache.commit: {len(self._staged)} of {self.n_layers} layers staged")
        times = time[:, None] if time.dim() == 1 else time  # (B, m)
        rows = torch.arange(self.batch, device=self.time.device)
        # rows in step (one session, or sessions opened together) write one slot: a plain copy
        # instead of a scatter per layer (a streaming tick commits every layer once)
        same = self.time.device.type == "cpu" and bool((self.cursor == self.cursor[0]).all())
        for j in range(times.shape[1]):
            blk = slice(j * self.N, (j + 1) * self.N)
            slot = int(self.cursor[0]) if same else None
            for layer, (k, v) in self._staged.items():
                kc = self.k[layer].view(self.batch, k.shape[1], self.slots, self.N, -1)  # (B, H, slots, N, Dh)
                vc = self.v[layer].view(self.batch, v.shape[1], self.slots, self.N, -1)
                if same:
                    kc[:, :, slot].copy_(k[:, :, blk])
                    vc[:, :, slot].copy_(v[:, :, blk])
                else:
                    kc[rows, :, self.cursor] = k[:, :, blk].to(kc.dtype)
                    vc[rows, :, self.cursor] = v[:, :, blk].to(vc.dtype)
            self.time[rows, self.cursor] = times[:, j].to(self.time.device)
            self.cursor = (self.cursor + 1) % self.slots
        self._staged.clear()

    def snapshot(self) -> KVCacheSnapshot:
        return KVCacheSnapshot([t.clone() for t in self.k], [t.clone() for t in self.v],
                               self.time.clone(), self.cursor.clone())

    def restore(self, snap: KVCacheSnapshot) -> None:
        if len(snap.k) != self.n_layers or snap.k[0].shape != self.k[0].shape:
            raise ValueError("KVCache.restore: snapshot shape does not match this cache")
        for dst, src in zip(self.k + self.v, snap.k + snap.v):
            dst.copy_(src)
        self.time.copy_(snap.time)
        self.cursor = snap.cursor.clone()
        self._staged.clear()

    def select(self, rows: torch.Tensor | list[int]) -> "KVCache":
        """A new cache holding the given rows (copies)."""
        rows = torch.as_tensor(rows, dtype=torch.long, device=self.time.device)
        out = KVCache.__new__(KVCache)
        out.n_layers, out.slots, out.N = self.n_layers, self.slots, self.N
        out.k = [t[rows].clone() for t in self.k]
        out.v = [t[rows].clone() for t in self.v]
        out.time, out.cursor, out._staged = self.time[rows].clone(), self.cursor[rows].clone(), {}
        return out

    @staticmethod
    def cat(caches: list["KVCache"]) -> "KVCache":
        """Stack the rows of several caches (same layers/slots) into one batch."""
        first = caches[0]
        out = KVCache.__new__(KVCache)
        out.n_layers, out.slots, out.N = first.n_layers, first.slots, first.N
        out.k = [torch.cat([c.k[i] for c in caches]) for i in range(first.n_layers)]
        out.v = [torch.cat([c.v[i] for c in caches]) for i in range(first.n_layers)]
        out.time = torch.cat([c.time for c in caches])
        out.cursor = torch.cat([c.cursor for c in caches])
        out._staged = {}
        return out
