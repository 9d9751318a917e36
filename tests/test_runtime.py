"""Runtime: sessions, batching, snapshot/fork, turn priors, clocks (envs: test_envs.py; bench: test_bench.py;
the shipped world: test_default_world.py)."""

import gc
import time

import numpy as np
import pytest

from tests.helpers import random_world, step_all
from worldsim.actions import ActionError
from worldsim.errors import WorldsimError
from worldsim.runtime import World
from worldsim.runtime.clock import LockstepDriver, RealtimeDriver

ACTS = [{"keys": ["forward"]}, {"keys": ["turn_left"]}, {"mouse": [4.0, 0.0]}, None, {"keys": ["attack", "run"]}]


def _same(a, b):
    return all(np.array_equal(x.frames, y.frames) and np.array_equal(x.audio, y.audio) for x, y in zip(a, b))


def test_session_chunk_shapes_and_determinism(world):
    s = world.open(seed=3)
    c = s.step({"keys": ["forward"]})
    assert c.frames.shape == (1, 64, 64, 3) and c.frames.dtype == np.uint8
    assert c.audio.shape == (1260, 2) and c.audio.dtype == np.int16 and c.tick == 1
    assert _same(step_all(world.open(seed=7), ACTS), step_all(world.open(seed=7), ACTS))
    assert not _same(step_all(world.open(seed=7), ACTS), step_all(world.open(seed=8), ACTS))


def test_snapshot_restore_and_fork_replay_bit_exactly(world):
    s = world.open(seed=11)
    step_all(s, ACTS[:2])
    snap = s.snapshot()
    fork = s.fork()
    first = step_all(s, ACTS)
    assert _same(first, step_all(world.restore(snap), ACTS))
    assert _same(first, step_all(fork, ACTS))
    assert fork.tick == s.tick == 7


def test_pixel_turn_prior_world_replays_and_batches(tmp_path):
    """A world whose turn prior re-aims pictures (decode, warp, encode each tick): snapshots and
    forks replay bit-exactly, and a batched step matches the sessions stepped alone."""
    w = World.load(str(random_world(tmp_path / "world", prior_space="pixel")))
    assert w.model.dynamics.reaim is not None
    s = w.open(seed=5)
    step_all(s, ACTS[:2])
    snap, fork = s.snapshot(), s.fork()
    first = step_all(s, ACTS)
    assert _same(first, step_all(w.restore(snap), ACTS)) and _same(first, step_all(fork, ACTS))
    # the picture kept from the last tick is what decoding its latent again gives
    x, y = w.open(seed=9), w.open(seed=9)
    for act in ACTS:
        assert act is ACTS[0] or x.state.prev_frame.shape == (1, 64, 64, 3)  # kept after every shown tick
        y.state.prev_frame = None
        assert _same([x.step(act)], [y.step(act)])
    a, b = w.open(seed=1), w.open(seed=2)
    solo = step_all(a.fork(), ACTS[:3])
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
    step_all(s, ACTS[:2])
    assert s.state.prev_frame is None  # what was shown is not what the prior decodes
    snap = s.snapshot()
    assert _same(step_all(s, ACTS), step_all(w.restore(snap), ACTS))
    plain = World.load(str(random_world(tmp_path / "plain", prior_space="pixel")))
    assert not _same(step_all(plain.open(seed=4), ACTS), step_all(w.open(seed=4), ACTS))


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
    solo_a = step_all(a.fork(), ACTS)
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
