"""Runtime: sessions, batching, snapshot/fork, clocks; Gymnasium and PettingZoo envs."""

import gc
import json
import time

import gymnasium as gym
import numpy as np
import pytest

from tests.helpers import random_world
from worldsim.actions import ActionError
from worldsim.errors import WorldsimError
from worldsim.runtime import World
from worldsim.runtime.clock import LockstepDriver, RealtimeDriver

ACTS = [{"keys": ["forward"]}, {"keys": ["turn_left"]}, {"mouse": [4.0, 0.0]}, None, {"keys": ["attack", "run"]}]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return World.load(str(random_world(tmp_path_factory.mktemp("w") / "world")))


def _run(session, acts):
    return [session.step(a) for a in acts]


def _same(a, b):
    return all(np.array_equal(x.frames, y.frames) and np.array_equal(x.audio, y.audio) for x, y in zip(a, b))


def test_session_chunk_shapes_and_determinism(world):
    s = world.open(seed=3)
    c = s.step({"keys": ["forward"]})
    assert c.frames.shape == (1, 64, 64, 3) and c.frames.dtype == np.uint8
    assert c.audio.shape == (1260, 2) and c.audio.dtype == np.int16 and c.tick == 1
    assert _same(_run(world.open(seed=7), ACTS), _run(world.open(seed=7), ACTS))
    assert not _same(_run(world.open(seed=7), ACTS), _run(world.open(seed=8), ACTS))


def test_snapshot_restore_and_fork_replay_bit_exactly(world):
    s = world.open(seed=11)
    _run(s, ACTS[:2])
    snap = s.snapshot()
    fork = s.fork()
    first = _run(s, ACTS)
    assert _same(first, _run(world.restore(snap), ACTS))
    assert _same(first, _run(fork, ACTS))
    assert fork.tick == s.tick == 7


def test_pixel_turn_prior_world_replays_and_batches(tmp_path):
    """A world whose turn prior re-aims pictures (decode, warp, encode each tick): snapshots and
    forks replay bit-exactly, and a batched step matches the sessions stepped alone."""
    w = World.load(str(random_world(tmp_path / "world", prior_space="pixel")))
    assert w.model.dynamics.reaim is not None
    s = w.open(seed=5)
    _run(s, ACTS[:2])
    snap, fork = s.snapshot(), s.fork()
    first = _run(s, ACTS)
    assert _same(first, _run(w.restore(snap), ACTS)) and _same(first, _run(fork, ACTS))
    # the picture kept from the last tick is what decoding its latent again gives
    x, y = w.open(seed=9), w.open(seed=9)
    for act in ACTS:
        assert act is ACTS[0] or x.state.prev_frame.shape == (1, 64, 64, 3)  # kept after every shown tick
        y.state.prev_frame = None
        assert _same([x.step(act)], [y.step(act)])
    a, b = w.open(seed=1), w.open(seed=2)
    solo = _run(a.fork(), ACTS[:3])
    for act, y in zip(ACTS[:3], solo):
        x = w.step_many({a: act, b: {"keys": ["turn_right"]}})[a]
        assert np.abs(x.frames.astype(int) - y.frames).max() <= 8


def test_pixel_turn_prior_decodes_with_the_world_s_prior_codec(tmp_path):
    """A world that keeps a faithful decoder for its pixel prior (frame_codec_prior, beside a
    sharpened frame_codec) re-aims that decoder's pictures, not the ones it shows."""
    import torch
    from worldsim.model.checkpoint import load_component, save_component
    from worldsim.model.frame_codec import FrameCodec, FrameCodecConfig
    root = random_world(tmp_path / "world", prior_space="pixel")
    fc, _ = load_component(root, "frame_codec", FrameCodec, FrameCodecConfig)
    with torch.no_grad():
        for p in fc.decoder.parameters():
            p.add_(0.05 * torch.randn_like(p))
    save_component(root, "frame_codec_prior", fc, fc.cfg)
    w = World.load(str(root))
    assert w.model.prior_codec is not None and w.model.dynamics.reaim.codec is w.model.prior_codec
    s = w.open(seed=4)
    _run(s, ACTS[:2])
    assert s.state.prev_frame is None  # what was shown is not what the prior decodes
    snap = s.snapshot()
    assert _same(_run(s, ACTS), _run(w.restore(snap), ACTS))
    plain = World.load(str(random_world(tmp_path / "plain", prior_space="pixel")))
    assert not _same(_run(plain.open(seed=4), ACTS), _run(w.open(seed=4), ACTS))


def test_light_turn_prior_skips_the_reaim_and_the_clock_falls_to_it(tmp_path, world):
    """The clocks' lowest level: one sampling step with the previous latent slid for the turn (no
    decode, warp, encode), declared in the chunk's timings; a world with a latent prior has no
    such level, and the flag changes nothing there."""
    w = World.load(str(random_world(tmp_path / "world", prior_space="pixel")))
    assert w.model.light_prior and not world.model.light_prior
    s = w.open(seed=5)
    fork = s.fork()
    reaim = w.model.dynamics.reaim

    def boom(*a, **k):
        raise AssertionError("the light prior must not re-aim")

    w.model.dynamics.reaim = boom
    try:
        c = s.step({"mouse": [9.0, 0.0]}, light_prior=True)
        assert c.timings["light_prior"] == 1.0
        with pytest.raises(AssertionError, match="must not re-aim"):
            fork.fork().step({"mouse": [9.0, 0.0]})  # the full level does re-aim
    finally:
        w.model.dynamics.reaim = reaim
    full = fork.step({"mouse": [9.0, 0.0]})
    assert full.timings["light_prior"] == 0.0 and not np.array_equal(full.frames, c.frames)
    a = world.open(seed=3)
    plain = world.open(seed=3).step(ACTS[2])
    lit = a.step(ACTS[2], light_prior=True)
    assert lit.timings["light_prior"] == 0.0 and _same([plain], [lit])
    d = RealtimeDriver(w, rate=1000.0)  # impossible deadline: sheds the steps, then the re-aim
    d.add(w.open(seed=2), {"mouse": [5.0, 0.0]})
    d.run_for(0.3)
    assert d.governor.light and d.governor.steps == 1 and d.stats.degraded > 0


def test_tick_breakdown_counts_a_decode_inside_the_turn_prior_once(tmp_path, monkeypatch):
    """A pixel prior without a kept picture decodes with the frame codec inside the turn prior:
    that time is the frame decoder's, not the prior's too. A fake clock that only a decode moves
    (1 s each) makes the split exact."""
    import types

    from worldsim.bench import tick_parts
    w = World.load(str(random_world(tmp_path / "world", prior_space="pixel")))
    assert w.model.prior_codec is None
    clock = [0.0]
    monkeypatch.setattr(tick_parts, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    decode, step_batch = w.model.frame_codec.decode, w.model.step_batch

    def slow_decode(z):
        clock[0] += 1.0
        return decode(z)

    def forget(state, *a, **k):  # no picture kept: every tick's prior decodes its latent again
        state.prev_frame = None
        return step_batch(state, *a, **k)

    monkeypatch.setattr(w.model.frame_codec, "decode", slow_decode)
    monkeypatch.setattr(w.model, "step_batch", forget)
    parts = tick_parts.tick_breakdown(w, 1, ACTS, warmup=1)
    # a tick: one decode shown + one inside the prior, both the frame decoder's; nothing else moves the clock
    assert parts["frame_decoder"] == parts["total"] == 2000.0
    assert parts["turn_prior"] == parts["dynamics"] == parts["rest"] == 0.0


def test_step_many_batches_and_sessions_join_and_leave(world):
    a, b = world.open(seed=1), world.open(seed=2)
    solo_a = _run(a.fork(), ACTS)
    out = []
    for i, act in enumerate(ACTS):
        group = {a: act, b: None}
        if i == 2:
            c = world.open(seed=3)  # joins mid-way
        if i >= 2:
            group[c] = {"keys": ["use"]}
        if i == 4:
            del group[b]  # leaves
        r = world.step_many(group)
        assert set(r) == set(group)
        out.append(r[a])
    # batched rows match the same session stepped alone up to bf16 rounding
    for x, y in zip(out, solo_a):
        assert np.abs(x.frames.astype(int) - y.frames).max() <= 8


def test_kept_batch_equals_regrouping_every_tick(world):
    """A steady group keeps one batched state between ticks; reading, snapshotting, stepping a
    member alone, reordering or changing the group must give exactly what fresh per-tick
    batches give."""
    def script(w, ss, regroup):
        a, b, c = ss
        plan = [{a: ACTS[0], b: None, c: ACTS[1]}, {c: ACTS[2], a: None, b: ACTS[3]}, {a: ACTS[1], b: ACTS[2]},
                {a: ACTS[3]}, {a: None, b: None, c: ACTS[0]}, "snap", {b: ACTS[1], c: None, a: ACTS[2]}]
        out = []
        for step in plan:
            if regroup:
                w.ungroup()
            if step == "snap":
                out.append(b.snapshot().state["prev"].numpy().copy())
                continue
            r = w.step_many(step)
            out += [r[s].frames for s in ss if s in r]
        return out
    ss = [world.open(seed=i) for i in (4, 5, 6)]
    ref = [s.fork() for s in ss]
    got, want = script(world, ss, False), script(world, ref, True)
    assert len(got) == len(want) and all(np.array_equal(x, y) for x, y in zip(got, want))
    ss[0].close()
    assert world.step_many({ss[1]: None, ss[2]: None})[ss[1]].tick == 6


def test_start_options(world):
    img = np.full((64, 64, 3), 30, np.uint8)
    assert world.open(start=img).step().frames.shape == (1, 64, 64, 3)
    with pytest.raises(WorldsimError, match="start image"):
        world.open(start=np.zeros((32, 32, 3), np.uint8))
    with pytest.raises(WorldsimError, match="actions"):
        world.open(start={"frames": np.zeros((3, 64, 64, 3), np.uint8), "buttons": np.zeros((1, 9))})


def test_bad_actions_and_closed_sessions(world):
    s = world.open()
    with pytest.raises(ActionError, match="unknown button"):
        s.step({"keys": ["jump"]})
    with pytest.raises(ActionError):
        s.step((np.zeros(3), np.zeros(2)))
    with pytest.raises(ActionError):
        s.step("forward")
    # an axis far beyond any input device would overflow the network and fail a batched tick for every
    # session in it: refused in every action form, before any session is stepped
    other = world.open(seed=1)
    n = world.schema.num_buttons
    for huge in ({"mouse": [1e30, 0.0]}, (np.zeros(n), np.array([0.0, -1e12])), world.schema.from_arrays(np.zeros(n), [1e7, 0])):
        with pytest.raises(ActionError, match="within"):
            world.step_many({other: {}, s: huge})
    assert other.tick == 0  # nothing stepped
    s.step({"mouse": [1e5, 0.0]})  # large but allowed: a frame, finite
    s.step()  # the session still works after bad input
    s.close()
    with pytest.raises(WorldsimError, match="closed"):
        s.step()


def test_lockstep_and_realtime_drivers(world):
    s = world.open(seed=1)
    assert LockstepDriver(world).step({s: None})[s].tick == 1
    got = []
    d = RealtimeDriver(world, rate=50.0, on_chunk=lambda sess, c: got.append(c.tick))
    d.add(s, {"keys": ["forward"]})
    gc.unfreeze()
    d.start()
    assert gc.get_freeze_count() > 0  # the loaded world left the collector's view (see clock.freeze_heap)
    time.sleep(0.3)
    d.set_action(s, {"keys": ["turn_left"]})
    time.sleep(0.3)
    d.stop()
    st = d.stats.summary()
    assert st["ticks"] >= 5 and got == sorted(got) and d.latest(s).tick == got[-1]
    assert st["ticks"] + st["skipped"] >= 20  # 0.6 s at 50 Hz: every deadline ran or was counted as skipped
    with pytest.raises(ActionError):
        d.set_action(s, {"keys": ["nope"]})


def test_realtime_degrades_instead_of_stalling(world):
    s = world.open(seed=2)
    d = RealtimeDriver(world, rate=1000.0)  # impossible deadline: must shed sampling steps, then skip
    d.add(s)
    d.run_for(0.3)
    assert d.governor.steps == d.governor.min_steps and d.stats.degraded > 0 and d.stats.skipped > 0


def test_step_governor_climbs_back_when_the_full_count_is_measured_to_fit():
    from worldsim.runtime.clock import StepGovernor

    def run(gov, cost, ticks, first=None):
        counts = []
        for t in range(ticks):
            counts.append(gov.steps)
            gov.update(first if (t == 0 and first) else cost[gov.steps])
        return counts

    # a step costs little beside the rest of the tick (int8 on AVX2): one slow first tick sheds a
    # step; a probe finds that two fit, and play stays there
    period = 1 / 17.5  # budget 0.9 × 57 ms = 51 ms
    counts = run(StepGovernor(2, period), {1: 35.0, 2: 38.0}, 400, first=130.0)
    assert counts[1] == 1 and counts[-300:] == [2] * 300
    # two do not fit: after the probes that measure it, one step, with a probe per `forget` ticks
    gov = StepGovernor(2, period)
    counts = run(gov, {1: 35.0, 2: 60.0}, 2000)
    assert counts.count(2) <= 3 + 2000 // gov.forget + 1 and counts[-1] == 1
    # the old rule still holds: compute under half the budget climbs at once
    gov = StepGovernor(3, period)
    assert run(gov, {1: 20.0, 2: 60.0, 3: 90.0}, 3) == [3, 2, 1] and gov.steps == 2
    assert StepGovernor(2, period, min_steps=2).max_steps == 2
    # a one-step world with a light prior: its only lower level, left and climbed back the same way
    levels = []
    gov = StepGovernor(1, period, light=True)
    for t in range(300):
        levels.append((gov.steps, gov.light))
        gov.update(130.0 if t < 3 else 40.0)  # a slow start (warm-up), then one step fits
    assert levels[0] == (1, False) and levels[1] == (1, True) and levels[-200:] == [(1, False)] * 200
    gov = StepGovernor(1, period, light=True)
    for _ in range(600):
        gov.update(70.0 if not gov.light else 45.0)  # one full step never fits: stays light, probes rarely
    assert gov.light and gov.plan == {"sampling_steps": 1, "light_prior": True}
    assert StepGovernor(2, period, min_steps=2, light=True).bottom == 2  # a floor above one step keeps the re-aim


def test_gymnasium_env_passes_check_env(world):
    from gymnasium.utils.env_checker import check_env

    from worldsim.envs import WorldModelEnv
    env = WorldModelEnv(world, max_episode_steps=5)
    check_env(env, skip_render_check=False)
    env_a = WorldModelEnv(world, audio=True, max_episode_steps=3, render_mode="rgb_array")
    check_env(env_a)
    o1, _ = env_a.reset(seed=4)
    a = env_a.action_space.sample()
    r1 = env_a.step(a)[0]
    env_a.reset(seed=4)
    r2 = env_a.step(a)[0]
    assert np.array_equal(r1["frame"], r2["frame"]) and np.array_equal(r1["audio"], r2["audio"])
    assert env_a.metadata["render_fps"] == 17.5


def test_registered_and_vector_env(world, monkeypatch):
    import worldsim.envs  # noqa: F401  registers worldsim/Doom-v0
    from worldsim.envs import gym_env
    monkeypatch.setitem(gym_env._WORLDS, ("default", None, None), world)
    env = gym.make("worldsim/Doom-v0", max_episode_steps=4)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3)
    venv = gym.make_vec("worldsim/Doom-v0", num_envs=3, vectorization_mode="vector_entry_point", max_episode_steps=2)
    obs, _ = venv.reset(seed=1)
    assert obs.shape == (3, 64, 64, 3)
    for _ in range(3):
        obs, rew, term, trunc, _ = venv.step(venv.action_space.sample())
    assert obs.shape == (3, 64, 64, 3) and rew.shape == (3,)
    venv.close()


def test_a_world_of_a_gym_recording_takes_the_envs_own_actions(tmp_path):
    """A world trained on `worldsim record gym` data keeps the env's action space: a CartPole
    policy (an int) steps the learned CartPole, alone or batched."""
    from gymnasium.utils.env_checker import check_env

    from worldsim.actions import ActionSchema
    from worldsim.envs import WorldModelEnv, WorldModelVectorEnv

    cart = ActionSchema(buttons=("action_0", "action_1"), groups=(("action_0", "action_1"),))
    root = random_world(tmp_path / "cart", schema=cart)
    wj = json.loads((root / "world.json").read_text())
    # a world of another game (no DOOM wad): its scene memory, which places views by DOOM's
    # player physics, is off unless world.json or the caller turns it on
    game = {k: v for k, v in wj.items() if k != "wad"}
    (root / "world.json").write_text(json.dumps({**game, "env_action_space": {"type": "Discrete", "n": 2, "start": 0}}))
    assert World.load(str(root)).open(seed=0).state.memories == [None]
    assert World.load(str(root), memory=True).open(seed=0).state.memories[0] is not None
    (root / "world.json").write_text(json.dumps({**wj, "env_action_space": {"type": "Discrete", "n": 2, "start": 0}}))
    w = World.load(str(root))
    env = WorldModelEnv(w, max_episode_steps=4)
    assert env.action_space == gym.spaces.Discrete(2)
    check_env(env, skip_render_check=True)
    env.reset(seed=1)
    one = env.step(1)[0]
    env.reset(seed=1)
    assert np.array_equal(env.step(np.int64(1))[0], one) and not np.array_equal(env.step(0)[0], one)
    assert isinstance(WorldModelEnv(w, action_space="schema").action_space, gym.spaces.Dict)
    venv = WorldModelVectorEnv(3, world=w, max_episode_steps=2)
    assert venv.action_space == gym.spaces.MultiDiscrete([2, 2, 2])
    venv.reset(seed=0)
    assert venv.step(np.array([0, 1, 1]))[0].shape == (3, 64, 64, 3)
    with pytest.raises(ValueError, match="action_space must be one of"):
        WorldModelEnv(w, action_space="native")
    from pettingzoo.test import parallel_api_test

    from worldsim.envs.npc import WorldModelParallelEnv
    npcs = WorldModelParallelEnv(num_agents=2, world=w, max_cycles=3)
    assert npcs.action_space("npc_0") == gym.spaces.Discrete(2)
    parallel_api_test(npcs, num_cycles=4)
    # a world.json whose recorded space does not fit its schema is refused, not guessed at
    (root / "world.json").write_text(json.dumps({**wj, "env_action_space": {"type": "Discrete", "n": 3}}))
    with pytest.raises(ValueError, match="does not match its action schema"):
        WorldModelEnv(World.load(str(root)))
    (root / "world.json").write_text(json.dumps({**wj, "env_action_space": {"type": "Discrete"}}))
    with pytest.raises(ActionError, match="env_action_space: bad Discrete"):
        WorldModelEnv(World.load(str(root)))


def test_pettingzoo_parallel_api(world):
    from pettingzoo.test import parallel_api_test

    from worldsim.envs.npc import WorldModelParallelEnv
    env = WorldModelParallelEnv(num_agents=3, world=world, max_cycles=6)
    parallel_api_test(env, num_cycles=8)


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


def test_shipped_default_world_loads_steps_and_is_described():
    import json
    import subprocess
    import sys
    from pathlib import Path

    from worldsim.model.world_model import DEFAULT_WORLD_DIR

    files = sorted(p.name for p in Path(DEFAULT_WORLD_DIR).iterdir())
    assert {"world.json", "dynamics.safetensors", "frame_codec.safetensors", "audio_codec.safetensors"} <= set(files)
    assert sum(p.stat().st_size for p in Path(DEFAULT_WORLD_DIR).iterdir()) <= 40 * 2**20  # ≤ 40 MB budget
    w = World.load("default")
    s = w.open(seed=0)
    a = s.step({"keys": ["forward"]})
    b = w.open(seed=0).step({"keys": ["turn_left"]})
    assert a.frames.shape == (1, 64, 64, 3) and a.audio.shape == (1260, 2)
    assert not np.array_equal(a.frames, b.frames)  # the action changes the very next frame
    assert a.frames.std() > 5  # a picture, not a flat field
    # real-time play of the shipped world can always shed something: a step, or the re-aim below one step
    from worldsim.runtime.clock import StepGovernor
    gov = StepGovernor.for_world(w, 1 / w.tick_rate)
    assert gov.bottom < gov.max_steps and gov.max_steps == w.model.sampler.cfg.steps
    lit = w.open(seed=0).step({"keys": ["forward"]}, light_prior=True)
    assert lit.timings["light_prior"] == 1.0 and lit.frames.std() > 5
    out = subprocess.run([sys.executable, "-m", "worldsim.cli", "info", "--json"], capture_output=True, text=True, timeout=120)
    dw = json.loads(out.stdout)["default_world"]
    assert dw["wad"] == "freedoom2" and dw["maps"] == ["MAP01"] and dw["tick_rate"] == 17.5 and dw["resolution"] == [64, 64]


def test_reopening_a_shipped_start_reuses_its_priming_and_changes_nothing():
    """The network's half of priming a shipped start runs once per world; later sessions on that
    start copy it, keep their own seed's noise and fill their own scene memory."""
    w = World.load("default")
    acts = [{"keys": ["forward"]}, {"keys": ["turn_left"], "mouse": [3.0, 0.0]}, {"keys": ["attack"]}]
    n = len(w.starts)
    assert n > 1 and not w._primed
    first = _run(w.open(seed=3), acts)  # primes start 3 and keeps its state
    assert set(w._primed) == {3}
    again = w.open(seed=3)  # from the kept state, after the first session stepped on
    assert again.tick == 0 and again._state.memories[0] is not None and again._state.memories[0].hits == 0
    second = _run(again, acts)
    for a, b in zip(first, second):
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    other = _run(w.open(seed=3 + n), acts)  # same start, another seed: its own noise
    assert set(w._primed) == {3}
    assert any(not np.array_equal(a.frames, b.frames) for a, b in zip(first, other))
    fresh = World.load("default")  # a world that never primed start 3 answers the same
    for a, b in zip(_run(fresh.open(seed=3 + n), acts), other):
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)


def test_shipped_starts_open_from_their_stored_latents(tmp_path):
    """A world's starts file may carry its contexts' latents (``encode_starts``; ``worldsim
    export`` writes them): opening a shipped start then runs no encoder. Latents made by other
    codecs than the world's (digest mismatch) are ignored."""
    import torch
    from safetensors.torch import load_file, save_file

    from worldsim.runtime.starts import codec_digest, encode_starts
    root = random_world(tmp_path / "w")
    assert World.load(root).starts.latents(0) is None
    encode_starts(root)
    w = World.load(root)
    z, za = w.starts.latents(1)
    ctx = w.starts.context(None, 1)
    fp32 = World.load(root, precision="fp32").model  # the latents are encoded in fp32, whatever runs them
    with torch.no_grad():
        torch.testing.assert_close(torch.as_tensor(z), fp32.frame_codec.encode(torch.as_tensor(ctx["frames"])),
                                   rtol=1e-4, atol=1e-4)
        assert za.shape == (len(ctx["frames"]), w.model.dynamics.cfg.audio_dim)
    calls = []
    for codec in (w.model.frame_codec, w.model.audio_codec):
        codec.encode = lambda *a, _f=codec.encode: calls.append(1) or _f(*a)
    s = w.open(seed=1)
    assert not calls  # the context came from the file
    acts = [{"keys": ["forward"]}, {"keys": ["attack"]}]
    again = _run(World.load(root).open(seed=1), acts)
    for a, b in zip(_run(s, acts), again):
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)

    starts = root / "starts.safetensors"  # latents without a digest are not trusted either
    kept = load_file(str(starts))
    save_file({k: v for k, v in kept.items() if k != "codec_digest"}, str(starts))
    assert World.load(root).starts.latents(1) is None
    save_file(kept, str(starts))
    assert World.load(root).starts.latents(1) is not None

    f = root / "frame_codec.safetensors"  # another frame codec: the stored latents are stale
    sd = load_file(str(f))
    save_file({k: v + 0.01 for k, v in sd.items()}, str(f))
    assert not np.array_equal(codec_digest(root), load_file(str(root / "starts.safetensors"))["codec_digest"].numpy())
    stale = World.load(root)
    assert stale.starts.latents(1) is None
    assert stale.open(seed=1).step().frames.shape == (1, 64, 64, 3)


def test_the_default_worlds_starts_carry_valid_latents_and_priming():
    """The shipped world's starts file matches the files beside it (its digests): a first open of
    a shipped start restores a stored priming instead of running the network. A ship step that
    edits the world after ``encode_starts`` without running it again fails here."""
    w = World.load("default")
    assert len(w.starts) >= 1
    for k in range(len(w.starts)):
        assert w.starts.latents(k) is not None, f"start {k}: stale latents"
        assert w.starts.primed(k) is not None, f"start {k}: stale priming (run worldsim.runtime.starts.encode_starts)"


def test_shipped_starts_open_from_their_stored_priming(tmp_path):
    """``encode_starts`` also stores the network's state after priming on each start: a first
    open of a shipped start then runs no forward and continues exactly as live priming would;
    a state made by other dynamics weights (digest mismatch) is ignored."""
    from safetensors.torch import load_file, save_file

    from worldsim.runtime.starts import PRIMED, encode_starts
    root = random_world(tmp_path / "w")
    encode_starts(root)
    acts = [{"keys": ["forward"]}, {"keys": ["turn_left"], "mouse": [2.0, 0.0]}, {"keys": ["attack"]}]
    live = World.load(root, precision="fp32")  # the same file without the stored state: primes at open
    live.starts.arrays = {k: v for k, v in live.starts.arrays.items() if not k.startswith(PRIMED)}
    assert live.starts.primed(2) is None
    expect = _run(live.open(seed=2), acts)

    w = World.load(root, precision="fp32")
    calls = []
    dyn = w.model.dynamics
    dyn.stream = lambda *a, _f=dyn.stream, **k: calls.append(1) or _f(*a, **k)
    s = w.open(seed=2)
    assert not calls and set(w._primed) == {2}  # restored, not primed
    for a, b in zip(_run(s, acts), expect):
        assert np.array_equal(a.frames, b.frames) and np.array_equal(a.audio, b.audio)
    assert w.open(seed=5).step().frames.shape == (1, 64, 64, 3)  # every start has one

    meta = json.loads((root / "dynamics.json").read_text())  # a note in the meta: still valid
    meta.setdefault("meta", {})["note"] = "a history entry written after encode_starts"
    (root / "dynamics.json").write_text(json.dumps(meta))
    assert World.load(root).starts.primed(2) is not None
    meta["config"]["turn_weights"] = [1.0, 0.0, 0.5]  # another turn prior: stale
    (root / "dynamics.json").write_text(json.dumps(meta))
    assert World.load(root).starts.primed(2) is None

    f = root / "dynamics.safetensors"  # other dynamics weights: the stored state is stale
    sd = load_file(str(f))
    save_file({k: v + 0.01 for k, v in sd.items()}, str(f))
    stale = World.load(root)
    assert stale.starts.primed(2) is None and stale.starts.latents(2) is not None  # the latents still fit
    assert stale.open(seed=2).step().frames.shape == (1, 64, 64, 3)
