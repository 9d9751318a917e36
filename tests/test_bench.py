"""`worldsim bench` with tiny settings: its figures and targets, its options and its errors."""

import json

import pytest

from tests.helpers import random_world
from worldsim.runtime import World


def test_bench_smoke(world, tmp_path):
    from worldsim.bench.runtime_bench import check_targets, run_bench
    path = str(world.model.path)
    r = run_bench(path, ticks=5, rss_ticks=10, batches=(1, 2), batch_ticks=3, progress=False, device="cpu:0")
    assert r["device"] == "cpu"  # forced (the cold-start process too), spelled as the rest of the code compares it
    for k in ("fps", "baseline_fps", "ratio_vs_baseline", "ttff_ms_warm", "ttff_ms_reopen", "ttff_ms_new_context",
              "ttff_ms_cold", "tick_ms_p50", "tick_ms_p99",
              "batch_fps", "rss_mb_start", "rss_mb_end", "matmul_gflops", "dynamics_gflops", "memory_overhead",
              "memory_views", "memory_cap", "memory_mb"):
        assert k in r, k
    assert r["fps"] > 0 and r["baseline_fps"] > 0 and r["matmul_gflops"] > 0 and r["dynamics_gflops"] > 0
    assert set(r["batch_fps"]) == {"1", "2"} and r["ttff_ms_cold"] > r["ttff_ms_warm"]
    assert set(check_targets(r)) >= {"fps", "ratio_vs_baseline", "ttff_ms_warm"}
    # each batch's tick split into its parts: they add up to the whole, and the model's methods are back
    for b in ("1", "2"):
        parts = r["tick_breakdown_ms"][b]
        assert set(parts) == {"dynamics", "frame_decoder", "audio_decoder", "turn_prior", "rest", "total"}
        assert parts["dynamics"] > 0 and parts["frame_decoder"] > 0 and parts["audio_decoder"] > 0
        assert parts["turn_prior"] > 0
        assert abs(sum(v for k, v in parts.items() if k != "total") - parts["total"]) < 1e-6
    m = world.model
    assert "decode" not in m.frame_codec.__dict__ and "stream" not in m.dynamics.__dict__
    assert "_turn_prior" not in m.__dict__
    # the FLOP count sees every layer's linears (oneDNN's packed ones included): at least one
    # block's tokens through all of them for each of the tick's forwards (a commit + 2 sampling steps)
    dyn = world.model.dynamics
    linear = sum(p.numel() for n, p in dyn.layers.named_parameters() if n.endswith("weight") and p.dim() == 2
                 and ".ada." not in n)
    assert r["dynamics_gflop_per_tick"] * 1e9 >= 2 * linear * dyn.cfg.block_tokens * 2


def test_bench_runs_any_worlds_actions(tmp_path):
    """The bench's action sequence comes from the world's schema: DOOM's fixed walk/turn/fire
    sequence for DOOM's, random buttons (one per exclusive group) and bounded axes otherwise."""
    from worldsim.actions import ActionSchema
    from worldsim.bench.runtime_bench import _actions, run_bench

    car = ActionSchema(buttons=("b0", "b1", "b2"), axes=("axis_0",), groups=(("b0", "b1"),),
                       axis_low=(0.0,), axis_high=(2.0,))
    w = World.load(str(random_world(tmp_path / "car", schema=car)))
    acts = _actions(w, 40)
    assert all(w.schema.parse(a) is not None for a in acts)  # every one valid for the world
    assert not any({"b0", "b1"} <= set(a["keys"]) for a in acts) and any(a["keys"] for a in acts)
    assert all(0.0 <= a["axes"]["axis_0"] <= 2.0 for a in acts)
    r = run_bench(str(w.model.path), ticks=4, rss_ticks=0, batches=(1, 2), batch_ticks=2, progress=False,
                  baseline=False, cold=False)
    assert r["fps"] > 0 and set(r["batch_fps"]) == {"1", "2"}


def test_bench_checks_its_json_path_before_measuring(tmp_path, monkeypatch):
    import argparse
    from worldsim.bench import runtime_bench
    from worldsim.errors import WorldsimError
    monkeypatch.setattr(runtime_bench, "run_bench", lambda *a, **k: pytest.fail("measured before the path check"))
    p = argparse.ArgumentParser()
    runtime_bench.add_bench_args(p)
    (tmp_path / "f").write_text("")
    with pytest.raises(WorldsimError, match="--json .*cannot write"):
        runtime_bench.main_bench(p.parse_args(["--json", str(tmp_path / "f" / "x.json")]))
    # a good path gets the figures, also printed first
    monkeypatch.setattr(runtime_bench, "run_bench", lambda *a, **k: {"fps": 1.0})
    assert runtime_bench.main_bench(p.parse_args(["--json", str(tmp_path / "d" / "x.json")])) == 0
    assert json.loads((tmp_path / "d" / "x.json").read_text())["fps"] == 1.0


def test_a_path_that_cannot_be_made_is_a_one_line_cli_error(world, tmp_path, capsys):
    from worldsim.cli import main
    (tmp_path / "f").write_text("")
    assert main(["export", str(world.model.path), "--out", str(tmp_path / "f" / "w")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("worldsim export: error: ") and str(tmp_path / "f") in err and "\n" not in err


def test_bench_at_another_sampling_step_count(world):
    """``--sampling-steps``: every figure measures that count (fewer steps, fewer dynamics FLOPs),
    the cold start included; bad values and combinations are refused before anything runs."""
    import argparse

    import pytest

    from worldsim.bench.runtime_bench import add_bench_args, main_bench, run_bench
    path = str(world.model.path)
    full = world.model.sampler.cfg.steps
    kw = dict(ticks=3, rss_ticks=0, batches=(1,), batch_ticks=2, baseline=False, progress=False)
    r1 = run_bench(path, sampling_steps=1, **kw)
    rf = run_bench(path, cold=False, **kw)
    assert r1["sampling_steps"] == 1 and rf["sampling_steps"] == full > 1
    assert r1["dynamics_gflop_per_tick"] < rf["dynamics_gflop_per_tick"] and r1["ttff_ms_cold"] > 0
    ap = argparse.ArgumentParser()
    add_bench_args(ap)
    for bad in (["--sampling-steps", "0"], ["--sampling-steps", "1", "--bridge"],
                ["--sampling-steps", "1", "--compare-precision"]):
        with pytest.raises(SystemExit, match="sampling-steps"):
            main_bench(ap.parse_args(["--world", path, *bad]))


def test_bench_compares_two_worlds_side_by_side(world):
    """``--compare-world``: both worlds stepped in one process, single session and a batch, with
    the per-world batch scaling and B's speed over A's; refused beside the other special modes."""
    import argparse

    import pytest

    from worldsim.bench.compare import compare_precisions, compare_worlds
    from worldsim.bench.runtime_bench import add_bench_args, main_bench
    path = str(world.model.path)
    p = compare_precisions(path, ticks=2, block=1, batch=3, batch_ticks=1, progress=False)
    assert p["bf16"]["fps"] > 0 and p["bf16_over_fp32"] == pytest.approx(p["bf16"]["fps"] / p["fp32"]["fps"])
    assert p["batch"] == 3 and p["bf16_batch_over_fp32"] == pytest.approx(p["bf16"]["batch_fps"] / p["fp32"]["batch_fps"])
    r = compare_worlds(path, path, ticks=4, batch=3, batch_ticks=2, block=2, sampling_steps=1, progress=False)
    assert r["a"]["world"] == r["b"]["world"] == path and r["batch"] == 3 and r["batch_ticks"] == 2
    for k in ("a", "b"):
        assert r[k]["fps"] > 0 and r[k]["batch_fps"] > 0
        assert r[k]["batch_over_single"] == pytest.approx(r[k]["batch_fps"] / r[k]["fps"])
    assert r["b_over_a"]["fps"] == pytest.approx(r["b"]["fps"] / r["a"]["fps"])
    ap = argparse.ArgumentParser()
    add_bench_args(ap)
    for bad in (["--bridge"], ["--compare-precision"], ["--compare-attention"]):
        with pytest.raises(SystemExit, match="compare-world"):
            main_bench(ap.parse_args(["--world", path, "--compare-world", path, *bad]))


def test_bench_compares_the_attention_kernels_side_by_side(world, monkeypatch):
    """``--compare-attention``: each kernel forced for its own sessions' ticks, then auto again."""
    import pytest

    from worldsim.bench.compare import compare_attention
    from worldsim.model import attention as att
    seen = []
    real = att.attention
    monkeypatch.setattr(att, "attention", lambda *a: seen.append(att.ATTENTION_KERNEL) or real(*a))
    r = compare_attention(str(world.model.path), ticks=4, batch=3, batch_ticks=2, block=2, progress=False)
    assert {"plain", "sdpa"} <= set(seen) and att.ATTENTION_KERNEL == "auto"  # (opening sessions primes in auto)
    assert r["auto"] == att.streaming_kernel(world.model.dtype, world.model.device)
    for k in ("plain", "sdpa"):
        assert r[k]["fps"] > 0 and r[k]["batch_fps"] > 0
    assert r["sdpa_over_plain"]["fps"] == pytest.approx(r["sdpa"]["fps"] / r["plain"]["fps"])
