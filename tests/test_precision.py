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
    assert isinstance(info["int8_available"], bool)


def test_bench_compares_the_precisions_side_by_side(tmp_path):
    out = tmp_path / "prec.json"
    assert main(["bench", "--compare-precision", "--ticks", "3", "--quiet", "--json", str(out)]) == 0
    r = json.loads(out.read_text())["precision_compare"]
    assert r["auto"] in ("fp32", "bf16", "int8") and r["ticks"] == 3
    for p in ("fp32", "bf16"):
        assert r[p]["fps"] > 0 and r[p]["matmul_gflops"] > 0 and r[p]["batch_fps"] > 0
        assert r[p]["batch_over_single"] == pytest.approx(r[p]["batch_fps"] / r[p]["fps"])
    assert r["bf16_over_fp32"] == pytest.approx(r["bf16"]["fps"] / r["fp32"]["fps"])
    from worldsim.model.packed_linear import INT8_AVAILABLE
    if INT8_AVAILABLE:  # int8 beside them on a CPU that runs it
        assert r["int8"]["fps"] > 0 and r["int8_over_fp32"] == pytest.approx(r["int8"]["fps"] / r["fp32"]["fps"])
        assert r["int8_over_bf16"]["batch_fps"] == pytest.approx(r["int8"]["batch_fps"] / r["bf16"]["batch_fps"])


needs_int8 = pytest.mark.skipif(not __import__("worldsim.model.packed_linear", fromlist=["x"]).INT8_AVAILABLE,
                                reason="PyTorch's fbgemm int8 engine (x86) is not available")


@needs_int8
def test_int8_linears_stay_close_to_fp32_and_follow_weight_changes():
    from worldsim.model import packed_linear
    torch.manual_seed(0)
    lin = torch.nn.Linear(256, 1024)
    x = torch.randn(17, 256)
    packed_linear.use_int8(lin)
    with torch.no_grad():
        ref = lin(x)
        y = packed_linear.apply(lin, x)
        assert not torch.equal(y, ref)  # the int8 path ran
        assert ((y - ref).norm() / ref.norm()).item() < 0.02
        g = packed_linear.apply(lin, x, gelu=True)
        assert ((g - torch.nn.functional.gelu(ref)).norm() / ref.norm()).item() < 0.02
        lin.weight.mul_(2)  # an in-place weight change re-quantizes
        y2 = packed_linear.apply(lin, x)
        assert ((y2 - lin(x)).norm() / lin(x).norm()).item() < 0.02
        lin.bias.add_(1.0)  # so does a bias change alone (the bias is packed with the weight)
        y3 = packed_linear.apply(lin, x)
        assert ((y3 - lin(x)).norm() / lin(x).norm()).item() < 0.02 and not torch.allclose(y3, y2, atol=0.5)
        lb = torch.nn.Linear(256, 1024).to(torch.bfloat16)  # a bf16 world's layer: bf16 in, bf16 out
        packed_linear.use_int8(lb)
        xb = x.to(torch.bfloat16)
        yb, refb = packed_linear.apply(lb, xb, gelu=True), torch.nn.functional.gelu(lb.float()(xb.float()))
        assert yb.dtype == torch.bfloat16 and ((yb.float() - refb).norm() / refb.norm()).item() < 0.02
        # an int8 MLP keeps its hidden activations in fp32 and gives back the input's dtype
        down = torch.nn.Linear(1024, 256).to(torch.bfloat16)
        packed_linear.use_int8(down)
        mb = packed_linear.mlp(lb, down, xb)
        refm = torch.nn.functional.linear(refb, down.weight.float(), down.bias.float())
        assert mb.dtype == torch.bfloat16 and ((mb.float() - refm).norm() / refm.norm()).item() < 0.03
        packed_linear.use_int8(down, False)  # not int8 on both sides: the ordinary path
        torch.testing.assert_close(packed_linear.mlp(lb, down, xb), down(packed_linear.apply(lb, xb, gelu=True)))
    assert packed_linear.apply(lin, x.requires_grad_()).requires_grad  # training: the plain path
    packed_linear.use_int8(lin, False)
    with torch.no_grad():
        torch.testing.assert_close(packed_linear.apply(lin, x), lin(x), rtol=1e-5, atol=1e-5)


@needs_int8
def test_an_int8_world_is_deterministic_and_draws_what_fp32_draws():
    acts = [{"keys": ["forward"]}, {"keys": ["turn_left"], "mouse": [2.0, 0.0]}, {"keys": ["attack"]}]
    w8, w32 = World.load("default", precision="int8"), World.load("default", precision="fp32")
    assert w8.model.precision == "int8" and w32.model.precision == "fp32"
    # only the dynamics' linears are int8: activations in the CPU's own float (bf16 where native)
    assert w8.model.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)
    a, b, c = w8.open(seed=3), w8.open(seed=3), w32.open(seed=3)
    for act in acts:
        x, y, z = a.step(act), b.step(act), c.step(act)
        assert np.array_equal(x.frames, y.frames) and np.array_equal(x.audio, y.audio)
        diff = np.abs(x.frames.astype(np.int16) - z.frames.astype(np.int16))
        assert diff.mean() < 6, diff.mean()
        assert np.corrcoef(x.frames.ravel(), z.frames.ravel())[0, 1] > 0.95


def test_int8_is_refused_where_it_cannot_run(monkeypatch):
    from worldsim.model import packed_linear
    from worldsim.precision import int8_linears
    assert int8_linears("cpu", "fp32") is False
    with pytest.raises(PrecisionError, match="CPUs only"):
        int8_linears("cuda", "int8")
    monkeypatch.setattr(packed_linear, "INT8_AVAILABLE", False)
    with pytest.raises(PrecisionError, match="fbgemm"):
        int8_linears("cpu", "int8")
    with pytest.raises(PrecisionError, match="fbgemm"):
        World.load("default", precision="int8")


def test_auto_runs_worlds_in_int8_on_an_x86_cpu_without_amx(monkeypatch):
    import worldsim.precision as prec
    from worldsim.model import packed_linear
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(prec, "cpu_has_amx", lambda: False)
    monkeypatch.setattr(packed_linear, "INT8_AVAILABLE", True)
    assert prec.world_precision("cpu") == "int8" and prec.compute_dtype("cpu") == torch.float32  # training: fp32
    assert prec.world_precision("cpu", "fp32") == "fp32"  # a forced precision wins
    monkeypatch.setattr(packed_linear, "INT8_AVAILABLE", False)  # no int8 engine (e.g. ARM): fp32, no error
    assert prec.world_precision("cpu") == "fp32"
    monkeypatch.setattr(packed_linear, "INT8_AVAILABLE", True)
    monkeypatch.setattr(prec, "cpu_has_native_bf16", lambda: True)  # AVX512-BF16 without AMX: int8 around bf16
    assert prec.world_precision("cpu") == "int8" and prec.compute_dtype("cpu") == torch.bfloat16
    monkeypatch.setattr(prec, "cpu_has_amx", lambda: True)  # AMX: bf16 tiles beat fbgemm's int8
    assert prec.world_precision("cpu") == "bf16"
    assert prec.world_precision("cuda") == prec.precision_name(prec.compute_dtype("cuda"))  # never int8 off the CPU
