"""The precision policy: bf16 only where the hardware runs it natively, fp32 otherwise, forced by
--precision / $WORLDSIM_PRECISION; the shipped bf16 world runs the same network in either."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from worldsim.cli import main
from worldsim.precision import (ENV, PrecisionError, autocast, compute_dtype, cpu_has_native_bf16,
                                requested_precision)
from worldsim.runtime import World


def test_auto_follows_the_cpu_and_explicit_choices_win(monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert compute_dtype("cpu") == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    assert compute_dtype("cpu", "bf16") == torch.bfloat16 and compute_dtype("cpu", "fp32") == torch.float32
    monkeypatch.setenv(ENV, "bf16")
    assert compute_dtype("cpu") == torch.bfloat16
    assert compute_dtype("cpu", "fp32") == torch.float32  # an argument beats the environment
    monkeypatch.setenv(ENV, " FP32 ")
    assert requested_precision() == "fp32" and compute_dtype("cpu") == torch.float32


def test_bad_precision_is_a_clear_error(monkeypatch, capsys):
    with pytest.raises(PrecisionError, match="expected one of auto, bf16, fp32"):
        compute_dtype("cpu", "fp16")
    monkeypatch.setenv(ENV, "half")
    with pytest.raises(PrecisionError, match=r"\$WORLDSIM_PRECISION"):
        compute_dtype("cpu")
    with pytest.raises(PrecisionError):
        World.load("default")
    assert main(["bench", "--ticks", "1", "--rss-ticks", "0"]) == 2  # a clear message, no traceback
    assert "$WORLDSIM_PRECISION" in capsys.readouterr().err
    monkeypatch.delenv(ENV)
    with pytest.raises(SystemExit) as e:  # argparse refuses a value outside the choices
        main(["bench", "--precision", "fp16"])
    assert e.value.code == 2


def test_autocast_is_a_no_op_in_fp32_and_casts_in_bf16():
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with autocast("cpu", torch.float32):
        assert (a @ b).dtype == torch.float32
    with autocast("cpu", torch.bfloat16):
        assert (a @ b).dtype == torch.bfloat16


def test_the_default_world_runs_in_either_precision_and_they_agree():
    chunks = {}
    for prec, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        w = World.load("default", precision=prec)
        assert w.model.dtype == dt and next(w.model.dynamics.parameters()).dtype == dt
        s = w.open(seed=3)
        assert s._state.cache.k[0].dtype == dt  # the KV cache holds the compute dtype
        chunks[prec] = [s.step({"keys": ["forward"]}) for _ in range(2)]
    for a, b in zip(chunks["fp32"], chunks["bf16"]):
        # bf16 weights are exact in fp32, so only activation rounding differs: the same picture
        diff = np.abs(a.frames.astype(np.int16) - b.frames.astype(np.int16))
        assert diff.mean() < 6, diff.mean()
        assert np.corrcoef(a.frames.ravel(), b.frames.ravel())[0, 1] > 0.95


def test_info_reports_the_resolved_precision():
    out = subprocess.run([sys.executable, "-m", "worldsim.cli", "info", "--json"], capture_output=True, text=True,
                         timeout=120, env={**__import__("os").environ, ENV: "fp32"})
    info = json.loads(out.stdout)
    assert info["precision"] == "fp32" and isinstance(info["cpu_native_bf16"], bool)


def test_bench_compares_the_precisions_side_by_side(tmp_path):
    out = tmp_path / "prec.json"
    assert main(["bench", "--compare-precision", "--ticks", "3", "--quiet", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["precision_compare"]
    assert r["auto"] in ("fp32", "bf16") and r["ticks"] == 3
    for p in ("fp32", "bf16"):
        assert r[p]["fps"] > 0 and r[p]["matmul_gflops"] > 0
    assert r["bf16_over_fp32"] == pytest.approx(r["bf16"]["fps"] / r["fp32"]["fps"])
