"""Compute precision: bf16 where the hardware runs it natively, fp32 everywhere else.

bf16 autocast is worldsim's fast path: on a CPU with AVX512-BF16 or AMX a bf16 matmul runs
~4x faster than fp32 (measured ~420 vs ~100 GFLOP/s on one thread), and recent GPUs run it
natively. On a CPU without those instructions (an AVX2-only AMD EPYC, measured) oneDNN
emulates bf16 and the same work runs ~9x *slower* than fp32 (the frame encoder: 7.5 s vs
0.83 s for 256 frames), so a world that plays in real time on one machine would crawl on the
next. Every model process therefore resolves one precision at start-up:

* ``"auto"`` (the default): bf16 on CUDA devices that support it and on CPUs that report
  ``avx512_bf16`` or ``amx_bf16``; fp32 otherwise — and a *world* running on an x86 CPU (where
  PyTorch has its int8 engine) without AMX runs as ``"int8"``: its dynamics' linears in int8,
  the rest in that float. On an AVX2-only CPU int8 made a tick ~0.7× the fp32 time; on an
  AVX512-BF16 CPU (AMD EPYC, VNNI, no AMX) 0.87× the bf16 time, single session and batch of 16
  alike (README, Speed); with AMX, bf16 tiles outrun fbgemm's int8, so such a CPU keeps bf16;
* ``"bf16"`` / ``"fp32"``: forced, from ``--precision`` on the command line or the
  ``WORLDSIM_PRECISION`` environment variable (inherited by ``torchrun`` workers and tests);
* ``"int8"``: the dynamics' linear layers at inference multiply in int8
  (:mod:`worldsim.model.packed_linear`; x86 CPUs), everything else computes in the CPU's own
  float: fp32, or bf16 on a CPU with native bf16. On an AVX2-only CPU a tick of the default
  world took ~0.7× the fp32 time and `worldsim eval` scored the same as fp32 within its noise
  (README, Speed). Training computes in that float under it (a gradient needs the float weights).

Weights stored in bf16 (the shipped world) load into either: fp32 holds every bf16 value
exactly, so fp32 runs the same network, only with fewer rounding steps.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import ContextManager

import torch

from worldsim.errors import WorldsimError

PRECISIONS = ("auto", "bf16", "fp32", "int8")
ENV = "WORLDSIM_PRECISION"


class PrecisionError(WorldsimError, ValueError):
    pass


@functools.lru_cache(maxsize=None)
def _cpu_flags(*names: str) -> dict[str, bool]:
    """Which of the CPU features ``names`` this CPU has."""
    try:  # PyTorch's own CPU feature probe (cpuinfo): works on every OS it supports
        caps = torch._C._cpu._get_cpu_capability()
        return {n: bool(caps.get(n)) for n in names}
    except Exception:  # older/other builds: read the kernel's flags where there are some
        try:
            with open("/proc/cpuinfo") as f:
                flags = f.read().split()
        except OSError:
            return {n: False for n in names}
        return {n: n in flags for n in names}


def cpu_has_native_bf16() -> bool:
    """True when this CPU has bf16 dot-product instructions (AVX512-BF16 or AMX-BF16)."""
    return any(_cpu_flags("avx512_bf16", "amx_bf16").values())


def cpu_has_amx() -> bool:
    """True when this CPU has AMX tiles for bf16 (where bf16 matmuls outrun fbgemm's int8)."""
    return _cpu_flags("amx_bf16")["amx_bf16"]


def check_precision(name: str) -> str:
    name = str(name).strip().lower()
    if name not in PRECISIONS:
        raise PrecisionError(f"precision {name!r}: expected one of {', '.join(PRECISIONS)}")
    return name


def requested_precision(precision: str | None = None) -> str:
    """The asked-for precision: the argument, else ``$WORLDSIM_PRECISION``, else ``auto``."""
    if precision is None:
        env = os.environ.get(ENV, "").strip()
        if not env:
            return "auto"
        try:
            return check_precision(env)
        except PrecisionError as e:
            raise PrecisionError(f"${ENV}: {e}") from None
    return check_precision(precision)


def compute_dtype(device: str | torch.device = "cpu", precision: str | None = None) -> torch.dtype:
    """The dtype a model process computes in on ``device`` (see the module docstring)."""
    p = requested_precision(precision)
    if p == "bf16":
        return torch.bfloat16
    if p == "fp32":
        return torch.float32
    if p == "int8":  # int8 linears around the CPU's own float: bf16 where native
        return torch.bfloat16 if cpu_has_native_bf16() else torch.float32
    dev = str(device)
    if dev.startswith("cuda"):
        return torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if dev.startswith("cpu") and cpu_has_native_bf16() else torch.float32


def precision_name(dtype: torch.dtype) -> str:
    return "bf16" if dtype == torch.bfloat16 else "fp32"


def int8_linears(device: str | torch.device = "cpu", precision: str | None = None) -> bool:
    """Whether a world on ``device`` runs its dynamics' linears in int8: asked for (a clear error
    where it cannot run: not a CPU, or no int8 engine in this PyTorch), or ``auto`` on a CPU
    without native bf16 that has the engine."""
    from worldsim.model.packed_linear import INT8_AVAILABLE
    p = requested_precision(precision)
    if p == "auto":
        return str(device).startswith("cpu") and not cpu_has_amx() and INT8_AVAILABLE
    if p != "int8":
        return False
    if not str(device).startswith("cpu"):
        raise PrecisionError(f"precision int8 runs on CPUs only (device {device}): use bf16 or fp32 there")
    if not INT8_AVAILABLE:
        raise PrecisionError("precision int8 needs PyTorch's fbgemm engine (an x86 CPU): use fp32 here")
    return True


def world_precision(device: str | torch.device = "cpu", precision: str | None = None) -> str:
    """What a world loaded on ``device`` computes in: "bf16", "fp32" or "int8"."""
    return "int8" if int8_linears(device, precision) else precision_name(compute_dtype(device, precision))


def autocast(device: str | torch.device, dtype: torch.dtype | None = None) -> ContextManager:
    """bf16 autocast on ``device`` when ``dtype`` (default: :func:`compute_dtype`) is bf16;
    a no-op context for fp32 (autocast has no fp32 mode)."""
    dt = compute_dtype(device) if dtype is None else dtype
    if dt != torch.bfloat16:
        return contextlib.nullcontext()
    return torch.autocast("cuda" if str(device).startswith("cuda") else "cpu", dtype=torch.bfloat16)


def set_precision(precision: str | None) -> None:
    """Fix this process's precision (and its children's) from a command-line choice."""
    if precision is not None:
        os.environ[ENV] = check_precision(precision)
