"""Linear layers for CPU inference in fp32: oneDNN with each weight packed once.

A streaming tick multiplies 17–34 token rows by each weight (and 3–6 condition rows by the
adaLN matrix). At that size ``F.linear`` spends much of its time re-laying-out the weight on
every call; oneDNN's linear takes a weight *packed once* into its blocked layout and can fuse
the MLP's GELU. Measured on an AVX2 CPU, one thread (``out``-less microbenchmark,
``worldsim bench`` for the tick): 256→1024 + GELU at 17 rows 490 → 425 µs, the 256→9216
adaLN GEMV at 3 rows 4.5 → 1.4 ms.

Used only where it is the same computation: no autograd (training keeps ``F.linear``), CPU,
fp32 weights and input; bf16 and CUDA take the ordinary path. A packed weight is keyed by the
weight's storage and version, so ``load_state_dict`` (an in-place copy), an optimizer step or a
``.to()`` invalidates it.

**int8** (``--precision int8``, :mod:`worldsim.precision`): for CPUs without native bf16, the
layers of a module marked by :func:`use_int8` multiply in int8 instead — each weight quantized
once per output channel (symmetric, scale = max |w| / 127) and packed for fbgemm, each input
quantized per call over the whole tensor (7-bit range, which keeps fbgemm's AVX2 kernels from
saturating). On an AVX2 CPU, one thread, the dynamics' layers at 17 rows run ~1.2–1.8×
faster than in fp32; outputs differ from fp32 at the 1 % level, so an int8 world is its own
setting, evaluated as such (README, Speed). On a CPU with native bf16 and AVX512-VNNI (an AMD
EPYC, measured) fbgemm's int8 ran these layers ~1.6× faster than bf16 at every row count
(17–544 rows), so an int8 world there keeps bf16 activations around int8 linears.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn as nn
import torch.nn.functional as F

_OPS = getattr(torch.ops, "mkldnn", None)
AVAILABLE = (torch.backends.mkldnn.is_available() and hasattr(_OPS, "_linear_pointwise")
             and hasattr(_OPS, "_reorder_linear_weight"))
enabled = True  # module switch (tests compare both paths)
INT8_AVAILABLE = "fbgemm" in torch.backends.quantized.supported_engines and hasattr(torch.ops.quantized, "linear_dynamic")
# the op's overload itself: calling the packet re-resolves it in Python every call (~50 a tick)
_LINEAR_DYNAMIC = torch.ops.quantized.linear_dynamic.default if INT8_AVAILABLE else None
_INT8 = "_worldsim_int8"  # the attribute use_int8 sets on a module and its linear layers


def use_int8(module: nn.Module, on: bool = True) -> None:
    """Run ``module``'s linear layers (and its own :func:`linear` calls) in int8 at CPU inference.
    The layers' weights are quantized here, not on a session's first tick (~0.1 s)."""
    if on and not INT8_AVAILABLE:
        raise RuntimeError("int8 needs PyTorch's fbgemm quantized engine (x86 CPUs)")
    for m in [module, *module.modules()]:
        object.__setattr__(m, _INT8, bool(on))
        if on and isinstance(m, nn.Linear) and m.weight.device.type == "cpu":
            _int8_packed(m, m.weight, m.bias)


def _cached(owner: object, slot: str, weight: torch.Tensor, make, *also: torch.Tensor | None) -> object:
    """``make(weight)`` cached on ``owner`` under ``slot`` until ``weight`` (or a tensor in
    ``also``, e.g. a bias baked into the result) changes. The cache holds the source weight alive,
    so no other tensor can take its address: same address + same versions (shared with in-place
    writers: ``load_state_dict``, optimizer steps) = same values. Checked on every call of a
    streaming tick's ~50 linears, so kept to a few attribute reads."""
    key = (weight.data_ptr(), weight.shape, weight._version, *(t._version for t in also if t is not None))
    hit = owner.__dict__.get(slot)
    if hit is None or hit[0] != key:
        hit = (key, weight.detach(), make(weight.detach()))
        object.__setattr__(owner, slot, hit)  # not a registered buffer: never saved, never moved
    return hit[2]


def _quantize_packed(weight: torch.Tensor, bias: torch.Tensor | None):
    """fbgemm's packed int8 weight (one scale per output channel, symmetric) with its fp32 bias."""
    w = weight.float()
    scale = (w.abs().amax(dim=1) / 127.0).clamp_min(1e-12).double()  # (out,): one scale per output channel
    with warnings.catch_warnings():  # torch ≥ 2.10 marks quantized tensors deprecated; 2.13 (pinned) has them
        warnings.simplefilter("ignore")
        qw = torch.quantize_per_channel(w, scale, torch.zeros_like(scale, dtype=torch.long), 0, torch.qint8)
        return torch.ops.quantized.linear_prepack(qw, None if bias is None else bias.detach().float())


def _int8_packed(owner: object, weight: torch.Tensor, bias: torch.Tensor | None):
    return _cached(owner, "_int8_weight", weight, lambda w: _quantize_packed(w, bias), bias)


def _usable(x: torch.Tensor, weight: torch.Tensor) -> bool:
    return (enabled and AVAILABLE and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype == torch.float32 and weight.dtype == torch.float32)


def packed(owner: object, weight: torch.Tensor, slot: str = "_packed_weight") -> torch.Tensor:
    """``weight`` (out, in) in oneDNN's layout, cached on ``owner`` until the weight changes."""
    return _cached(owner, slot, weight, torch.ops.mkldnn._reorder_linear_weight)


def _int8_usable(x: torch.Tensor) -> bool:
    return (enabled and not torch.is_grad_enabled() and x.device.type == "cpu"
            and x.dtype in (torch.float32, torch.bfloat16))


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, owner: object,
           gelu: bool = False) -> torch.Tensor:
    """``F.linear(x, weight, bias)`` (then exact GELU if ``gelu``) for x (..., in)."""
    if owner.__dict__.get(_INT8) and _int8_usable(x):
        lead = x.shape[:-1]
        # fbgemm takes fp32 in and gives fp32 out; a bf16 world's activations round-trip through
        # fp32 around it (the GELU runs in fp32 too: on a CPU elementwise fp32 beats bf16)
        y = _LINEAR_DYNAMIC(x.reshape(-1, x.shape[-1]).float(), _int8_packed(owner, weight, bias), True)
        y = y.view(*lead, y.shape[-1])  # (..., out)
        return (F.gelu(y) if gelu else y).to(x.dtype)
    if not _usable(x, weight):
        y = F.linear(x, weight, bias)
        return F.gelu(y) if gelu else y
    lead = x.shape[:-1]
    x2 = x.reshape(-1, x.shape[-1])  # (rows, in): oneDNN's 2-D path is the fast one
    y = torch.ops.mkldnn._linear_pointwise(x2, packed(owner, weight), bias, "gelu" if gelu else "none",
                                           [], "none" if gelu else "")
    return y.view(*lead, y.shape[-1])


def apply(layer: nn.Linear, x: torch.Tensor, gelu: bool = False) -> torch.Tensor:
    """An ``nn.Linear`` through :func:`linear`."""
    return linear(x, layer.weight, layer.bias, layer, gelu)


def mlp(up: nn.Linear, down: nn.Linear, x: torch.Tensor) -> torch.Tensor:
    """``down(gelu(up(x)))`` through :func:`linear`. In int8 the hidden activations stay in the
    fp32 fbgemm gives and takes, instead of a round trip through a bf16 world's dtype: two
    passes over the widest tensor of a layer saved (~8 % of an int8 MLP at 272-544 rows)."""
    if up.__dict__.get(_INT8) and down.__dict__.get(_INT8) and _int8_usable(x):
        lead = x.shape[:-1]
        h = _LINEAR_DYNAMIC(x.reshape(-1, x.shape[-1]).float(), _int8_packed(up, up.weight, up.bias), True)
        y = _LINEAR_DYNAMIC(F.gelu(h), _int8_packed(down, down.weight, down.bias), True)
        return y.view(*lead, y.shape[-1]).to(x.dtype)  # (..., out)
    return apply(down, apply(up, x, gelu=True))
