"""`worldsim train` end to end on a toy world: stages, loss drops, resume, DDP, bad input."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers import toy_world
from worldsim.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    return toy_world(tmp_path_factory.mktemp("toy"), episodes=2, steps=60)


def _log(run: Path, name: str) -> list[dict]:
    return [json.loads(line) for line in (run / f"{name}.log.jsonl").read_text().splitlines()]


def test_tiny_trains_evaluates_and_resumes(toy, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--config", "tiny", "--data", str(toy), "--out", str(run), "--quiet"]) == 0
    for f in ("world.json", "frame_codec.safetensors", "audio_codec.safetensors", "dynamics.safetensors", "dynamics.train.pt"):
        assert (run / f).exists(), f
    world = json.loads((run / "world.json").read_text())
    assert world["wad"] == "freedoom2" and world["maps"] == ["MAP01"] and world["resolution"] == [64, 64]
    assert isinstance(world["memory"], dict)  # the scene memory's settings (overlay: none to find in 2 toy episodes)
    fl = _log(run, "frame_codec")
    assert fl[-1]["loss"] < fl[0]["loss"]
    dl = _log(run, "dynamics")
    assert dl[-1]["step"] == 30
    # last, the turn prior learned in latent space (tests/test_reaim.py)
    assert json.loads((run / "reaim.json").read_text())["meta"]["train_steps"] == 5

    # resume continues from step 30 (optimizer state included) rather than starting over
    cfg = ROOT / "configs" / "tiny.yaml"
    more = tmp_path / "more.yaml"
    more.write_text(cfg.read_text().replace("dynamics_train: {steps: 30, batch: 4", "dynamics_train: {steps: 40, batch: 2"))
    assert main(["train", "--config", str(more), "--data", str(toy), "--out", str(run), "--resume", "--quiet",
                 "--stage", "dynamics"]) == 0
    dl = _log(run, "dynamics")
    assert dl[-1]["step"] == 40 and min(r["step"] for r in dl[len(dl) - 1:]) > 30
    meta = json.loads((run / "dynamics.json").read_text())["meta"]
    assert meta["train_steps"] == 40
    assert meta["predictions_seen"] == 30 * 4 * 3 + 10 * 2 * 3  # counted per batch size actually used

    # the run directory is a world checkpoint the evaluation harness can load and score
    from worldsim.eval.harness import load_model
    model = load_model(str(run))
    from worldsim.eval.interface import build_context
    from worldsim.data.episode import open_episodes
    e = open_episodes(toy)[0]
    ctx = build_context(e.frames, e.buttons, e.axes, e.audio, 10, model.context_steps)
    outs = [model.open(ctx, seed=5).step(e.buttons[10], e.axes[10]) for _ in range(2)]
    assert outs[0][0].shape == (64, 64, 3) and outs[0][1].shape == (1260, 2)
    real = np.asarray(e.audio[10:13])  # the eval's codec ceiling: real sound through the codec
    rt = model.audio_roundtrip(real)
    assert rt.shape == real.shape and rt.dtype == np.int16
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])

    # export: bf16 copy that loads the same way
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0
    from worldsim.model.world_model import WorldModel
    assert WorldModel.load(out).context_steps == model.context_steps
    assert main(["export", str(run), "--out", str(out), "--starts", str(toy)]) == 0
    assert "memory" in json.loads((out / "world.json").read_text())
    from worldsim.runtime import World  # the starts come with their latents and primed state, by the exported world
    exported = World.load(out)
    assert exported.starts.latents(0) is not None and exported.starts.primed(0) is not None

    # lighter decoders trained against the frozen encoders (frame: sub-pixel decoder_channels; audio:
    # decoder_widths): the encoders, statistics and latents (and so the dynamics) stay valid
    from safetensors.torch import load_file
    stamp = (run / "latents" / "frames.npy").stat().st_mtime_ns
    for kind, field, widths, old, steps in (("frame", "decoder_channels", [16, 16, 8], "latent_channels: 4}", 12),
                                            ("audio", "decoder_widths", [4, 8, 8], "widths: [8, 8, 16], latent_channels: 4}", 10)):
        codec, stage = f"{kind}_codec", f"{kind}_decoder"
        before = load_file(str(run / f"{codec}.safetensors"))
        dec = tmp_path / f"{stage}.yaml"
        new = old[:-1] + f", {field}: {widths}}}"
        dec.write_text(cfg.read_text().replace(old, new, 1) + f"{stage}_train: {{steps: {steps}, batch: 8, lr: 0.003, "
                       "warmup: 2, save_every: 6, log_every: 2}\n")
        assert main(["train", "--config", str(dec), "--data", str(toy), "--out", str(run), "--quiet",
                     "--stage", stage, "--stage", "latents"]) == 0
        trained = json.loads((run / f"{codec}.json").read_text())
        assert trained["config"][field] == widths
        assert trained["meta"]["decoder_train_steps"] == steps
        after = load_file(str(run / f"{codec}.safetensors"))
        kept = [k for k in before if k.startswith("encoder.") or k.startswith("latent_")]
        assert kept and all(np.array_equal(before[k].numpy(), after[k].numpy()) for k in kept)
        assert any(k.startswith("decoder.") and (k not in before or after[k].shape != before[k].shape)
                   for k in after)  # a different decoder
        assert (run / "latents" / "frames.npy").stat().st_mtime_ns == stamp  # latents not rebuilt
        dl = _log(run, stage)
        assert dl[-1]["step"] == steps and dl[-1]["loss"] < dl[0]["loss"]
        frames, audio = WorldModel.load(run).open(ctx, seed=5).step(e.buttons[10], e.axes[10])
        assert frames.shape == (64, 64, 3) and audio.shape == (1260, 2)
        # asked again: nothing to do (the trained decoder is the one the config names)
        assert main(["train", "--config", str(dec), "--data", str(toy), "--out", str(run), "--quiet",
                     "--stage", stage]) == 0
        assert _log(run, stage)[-1]["step"] == steps

    # the memory input added to the trained dynamics, trained on the prebuilt latent store alone
    # (as on a lent GPU that has no recordings): new zero layer, fresh optimizer, deadline honoured
    mem = tmp_path / "mem.yaml"
    mem.write_text(cfg.read_text().replace("dynamics_train: {steps: 30, batch: 4",
                                           "dynamics_train: {steps: 60, schedule_start: 40, rollout_frac: 0.5, rollout_ticks: 1, batch: 4")
                   .replace("dynamics: {", "dynamics: {memory_input: true, ", 1))
    d = json.loads((run / "dynamics.json").read_text())
    d["meta"]["history"] = [{"steps": "0-40", "note": "how these weights came to be"}]
    (run / "dynamics.json").write_text(json.dumps(d))
    assert main(["train", "--config", str(mem), "--latents", str(run / "latents"), "--out", str(run), "--resume",
                 "--quiet", "--stage", "dynamics", "--max-steps", "3"]) == 0
    d = json.loads((run / "dynamics.json").read_text())
    assert d["config"]["memory_input"] is True and d["meta"]["train_steps"] == 43
    assert d["meta"]["history"] == [{"steps": "0-40", "note": "how these weights came to be"}]  # kept on resume
    w = load_file(str(run / "dynamics.safetensors"))
    assert w["memory_in.weight"].abs().sum() > 0  # trained away from zero
    assert main(["train", "--config", str(mem), "--latents", str(run / "latents"), "--out", str(run), "--resume",
                 "--quiet", "--stage", "dynamics", "--max-minutes", "0.0001"]) == 0
    assert json.loads((run / "dynamics.json").read_text())["meta"]["train_steps"] == 44  # one step, then the deadline
    model = WorldModel.load(run)
    model.set_memory(True)
    s = model.open(ctx, seed=1)
    for _ in range(3):
        frames, _ = s.step(e.buttons[10], e.axes[10])
    assert frames.shape == (64, 64, 3)
    assert main(["train", "--config", str(mem), "--latents", str(run / "latents"), "--out", str(run), "--quiet"]) == 2


def test_latents_encoded_by_two_worker_processes_equal_one_process(tmp_path):
    """``build_latents(workers=2)`` (``worldsim train --encode-workers 2``) deals the episodes to a
    spawned process and this one: the store is the one a single process writes, row for row."""
    from tests.helpers import plain_episodes
    from worldsim.actions import ActionSchema
    from worldsim.data import open_episodes
    from worldsim.model.audio_codec import AudioCodec, AudioCodecConfig
    from worldsim.model.frame_codec import FrameCodec, FrameCodecConfig
    import torch

    from worldsim.train.latents import build_latents

    schema = ActionSchema(buttons=("a", "b"))
    torch.manual_seed(0)
    fc = FrameCodec(FrameCodecConfig(channels=(8, 16, 16), latent_channels=4)).to(memory_format=torch.channels_last)
    ac = AudioCodec(AudioCodecConfig(widths=(8, 8, 16), latent_channels=4))
    eps = []
    for i, steps in enumerate((9, 5, 12)):  # unequal lengths: the rows of each episode land at its own offset
        root = plain_episodes(tmp_path / f"d{i}", schema, episodes=1, steps=steps, seed=i)
        audio = np.load(root / "ep_000000" / "audio.npy", mmap_mode="r+")
        audio[:] = np.random.default_rng(i).integers(-8000, 8000, audio.shape, dtype=np.int16)
        audio.flush()
        del audio
        eps += open_episodes(root)
    one = build_latents(eps, fc, ac, tmp_path, tmp_path / "one", progress=False, batch=4)
    two = build_latents(eps, fc, ac, tmp_path, tmp_path / "two", progress=False, batch=4, workers=2)
    assert one.frames.shape == (26, 4, 8, 8) and np.abs(one.frames).sum() > 0 and np.abs(one.audio).sum() > 0
    np.testing.assert_array_equal(two.frames, one.frames)
    np.testing.assert_array_equal(two.audio, one.audio)
    np.testing.assert_array_equal(two.bounds, one.bounds)
    with pytest.raises(ValueError, match="workers"):
        build_latents(eps, fc, ac, tmp_path, tmp_path / "bad", progress=False, workers=0)


def test_a_gym_recordings_action_space_reaches_the_world(tmp_path):
    """The env's own action space travels episodes → latent store → world.json (WorldModelEnv
    reads it there); episodes that disagree on it give none."""
    from tests.helpers import plain_episodes
    from worldsim.actions import ActionSchema
    from worldsim.data import open_episodes
    from worldsim.model.audio_codec import AudioCodec, AudioCodecConfig
    from worldsim.model.frame_codec import FrameCodec, FrameCodecConfig
    from worldsim.train.latents import build_latents
    from worldsim.train.pipeline import RunConfig, write_world_json

    cart = ActionSchema(buttons=("action_0", "action_1"), groups=(("action_0", "action_1"),))
    space = {"type": "Discrete", "n": 2, "start": 0}
    fc, ac = FrameCodec(FrameCodecConfig(channels=(8, 16, 16), latent_channels=4)), AudioCodec(AudioCodecConfig(
        widths=(8, 8, 16), latent_channels=4))
    data = plain_episodes(tmp_path / "cp", cart, episodes=2, steps=8, meta={"env_action_space": space})
    store = build_latents(open_episodes(data), fc, ac, tmp_path, tmp_path / "lat", progress=False)
    assert store.info["env_action_space"] == space
    write_world_json(tmp_path, RunConfig(name="cp"), store.info)
    assert json.loads((tmp_path / "world.json").read_text())["env_action_space"] == space
    plain_episodes(tmp_path / "mixed", cart, episodes=1, steps=8, meta={"env_action_space": space})
    plain_episodes(tmp_path / "mixed2", cart, episodes=1, steps=8)
    eps = open_episodes(tmp_path / "mixed") + open_episodes(tmp_path / "mixed2")
    assert build_latents(eps, fc, ac, tmp_path, tmp_path / "lat2", progress=False).info["env_action_space"] is None


def test_turn_prior_only_where_the_picture_turns(toy, tmp_path):
    """The turn prior slides the last frame by the commanded yaw: kept for a camera that turns
    with the player (the toy's scrolling wall), dropped for one that does not (same actions and
    poses, a still picture — a top-down or fixed camera)."""
    from worldsim.data import open_episodes, write_episode
    from worldsim.train.turns import camera_turns, fit_turn_weights

    eps = open_episodes(toy)
    w = fit_turn_weights(eps)
    assert abs(w[0]) > 1 and camera_turns(eps, w, 0.6)
    for e in eps:
        write_episode(tmp_path / "still" / e.path.name, e.schema, {
            "frames": np.repeat(np.random.default_rng(0).integers(0, 256, (1, 64, 64, 3), dtype=np.uint8), len(e), 0)
            + (np.arange(len(e)) % 2).astype(np.uint8)[:, None, None, None],  # a still picture, a little noise
            "buttons": np.asarray(e.buttons),
            "axes": np.asarray(e.axes), "pose": np.asarray(e.pose)}, {"tick_rate": e.tick_rate, "map": "still"})
    still = open_episodes(tmp_path / "still")
    assert fit_turn_weights(still) == w and not camera_turns(still, w, 0.6)


def test_episodes_recorded_differently_are_refused_before_training(tmp_path, capsys):
    import shutil

    from tests.helpers import plain_episodes
    from worldsim.actions import ActionSchema
    plain_episodes(tmp_path / "a", ActionSchema(buttons=("jump",)), steps=12)
    plain_episodes(tmp_path / "b", ActionSchema(buttons=("jump", "duck")), steps=12)
    shutil.move(str(tmp_path / "b" / "ep_000000"), str(tmp_path / "a" / "ep_000001"))
    assert main(["train", "--config", "tiny", "--data", str(tmp_path / "a"), "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "ep_000001: its action schema" in err and "differs from ep_000000" in err
    assert not (tmp_path / "run" / "frame_codec.safetensors").exists()  # refused before any training


def test_ctrl_c_saves_the_step_it_stops_at_and_resume_continues(toy, tmp_path):
    """A long run interrupted between saves keeps every step: Ctrl-C finishes the step, saves
    weights + optimizer state, exits 130; a second run with --resume picks up there."""
    import signal
    import time

    cfg = tmp_path / "long.yaml"
    cfg.write_text((ROOT / "configs" / "tiny.yaml").read_text().replace(
        "dynamics_train: {steps: 30, batch: 4, lr: 0.002, warmup: 5, save_every: 10, log_every: 5}",
        "dynamics_train: {steps: 100000, batch: 4, lr: 0.002, warmup: 5, save_every: 100000, log_every: 1}"))
    run = tmp_path / "run"
    p = subprocess.Popen([sys.executable, "-m", "worldsim.cli", "train", "--config", str(cfg), "--data", str(toy),
                          "--out", str(run), "--quiet", "--threads", "1"], stderr=subprocess.PIPE, text=True)
    log = run / "dynamics.log.jsonl"
    deadline = time.monotonic() + 240
    while not (log.exists() and len(log.read_text().splitlines()) >= 12) and time.monotonic() < deadline:
        assert p.poll() is None, p.stderr.read()
        time.sleep(0.2)
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 130, err
    step = json.loads((run / "dynamics.json").read_text())["meta"]["train_steps"]
    assert step >= 12 and f"stopped: dynamics at step {step} (saved)" in err
    import torch
    assert torch.load(run / "dynamics.train.pt", weights_only=True)["step"] == step
    assert main(["train", "--config", str(cfg), "--data", str(toy), "--out", str(run), "--resume", "--quiet",
                 "--stage", "dynamics", "--max-steps", "3"]) == 0
    assert json.loads((run / "dynamics.json").read_text())["meta"]["train_steps"] == step + 3


def test_ddp_two_cpu_processes(toy, tmp_path):
    run = tmp_path / "ddp"
    assert main(["train", "--config", "tiny", "--data", str(toy), "--out", str(run), "--quiet",
                 "--stage", "frame_codec", "--stage", "audio_codec", "--stage", "latents"]) == 0
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "worldsim.cli",
           "train", "--config", "tiny", "--data", str(toy), "--out", str(run), "--quiet", "--stage", "dynamics",
           "--max-steps", "4"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    meta = json.loads((run / "dynamics.json").read_text())["meta"]
    # 4 steps × batch 4 × 2 processes × (context 4 - 1) predictions
    assert meta["train_steps"] == 4 and meta["predictions_seen"] == 4 * 4 * 2 * 3


@pytest.mark.parametrize("args, message", [
    (["--config", "nope.yaml"], "no such config"),
    (["--config", "tiny", "--data", "/nonexistent/data"], "no such data directory"),
    (["--config", "tiny", "--max-steps", "0"], "--max-steps"),
    (["--config", "tiny", "--max-minutes", "-1"], "--max-minutes"),
    (["--config", "tiny", "--latents", "/nonexistent/lat", "--stage", "dynamics"], "not a latent store"),
    (["--config", "tiny", "--latents", "/nonexistent/lat"], "--stage dynamics"),
])
def test_train_bad_input_is_one_clear_line(args, message, capsys, tmp_path):
    assert main(["train", *args, "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_train_bad_config_keys(tmp_path, toy, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("dynamics: {d_modl: 3}\n")
    assert main(["train", "--config", str(bad), "--data", str(toy), "--out", str(tmp_path / "r")]) == 2
    assert "d_modl" in capsys.readouterr().err
    bad.write_text("frame_codec: [1, 2\n")
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    assert "YAML" in capsys.readouterr().err


@pytest.mark.parametrize("yaml_text, message", [
    ('dynamics_train: {steps: "abc"}', "dynamics_train: steps must be an integer, got 'abc'"),
    ("dynamics_train: {steps: 1e5}", "write 100000 or 1.0e+5"),          # PyYAML reads 1e5 as a string
    ('seed: "x"', "seed must be an integer"),
    ("audio: 3", "audio must be true/false, got 3"),
    ('frame_codec: {channels: [32, "a"]}', "frame_codec: channels[1] must be an integer"),
    ("dynamics_train: {train_only: [a, 3]}", "train_only[1] must be a string"),
    ("frame_codec_train: {batch: 0}", "frame_codec_train: batch must be >= 1, got 0"),
    ("audio_codec_train: {lr: -1}", "audio_codec_train: lr must be > 0"),
    ("dynamics: {d_model: 30, n_heads: 4}", "d_model 30 must be a multiple of n_heads 4"),
    ("dynamics: {context: 0}", "dynamics.context must be >= 1"),
    ("frame_codec: {resolution: 60}", "must be a multiple of 2**len(channels) = 8"),
    ("sampler: {steps: 0}", "sampler.steps must be >= 1"),
    ("sampler: {context_level: 2}", "sampler.context_level must be in [0, 1]"),
    ("dynamics_train: {tau_max: 3}", "dynamics_train.tau_max must be in [0, 1]"),
    ("audio_codec: {samples: 1000}", "audio_codec.samples (per tick) 1000 is not a multiple"),
    ("dynamics_rounds: [{name: a, steps: 90000, batch: 0}]", "dynamics_rounds[0] (a): dynamics_train.batch must be >= 1"),
    ("dynamics_rounds: [{name: a, steps: x}]", "dynamics_rounds[0] (a): steps must be an integer, got 'x'"),
    ("sampler: {steps: 2", "not valid YAML (expected ',' or '}', but got '<stream end>' at line 3, column 1)"),
    ("sampler: {temperature: 0}", "sampler.temperature must be > 0"),
])
def test_config_values_are_typed_and_bounded(tmp_path, yaml_text, message):
    """A value no run could use stops `worldsim train` as the config is read (before any stage
    runs and before --out is touched), naming the file, section and field."""
    from worldsim.train.pipeline import TrainConfigError, load_run_config

    bad = tmp_path / "bad.yaml"
    bad.write_text(f"name: x\n{yaml_text}\n")
    with pytest.raises(TrainConfigError) as e:
        load_run_config(bad)
    assert str(e.value).startswith(str(bad)) and message in str(e.value) and "\n" not in str(e.value)


def test_config_values_are_coerced_where_lossless(tmp_path):
    from worldsim.train.pipeline import load_run_config

    good = tmp_path / "good.yaml"
    good.write_text("dynamics_train: {steps: 30000.0, lr: 1}\nheldout: null\nframe_codec: {channels: [8, 16, 16]}\n")
    cfg = load_run_config(good)
    assert cfg.dynamics_train.steps == 30000 and isinstance(cfg.dynamics_train.steps, int)
    assert cfg.dynamics_train.lr == 1.0 and isinstance(cfg.dynamics_train.lr, float)
    assert cfg.heldout is None and cfg.frame_codec.channels == (8, 16, 16)


def test_checkpoint_with_a_mistyped_config_is_a_clear_error(tmp_path):
    import json
    import shutil

    from worldsim.model.checkpoint import CheckpointError
    from worldsim.model.world_model import WorldModel

    src = ROOT / "worldsim" / "assets" / "default_world"
    shutil.copytree(src, tmp_path / "w")
    meta = json.loads((tmp_path / "w" / "dynamics.json").read_text())
    meta["config"]["n_heads"] = "4"
    (tmp_path / "w" / "dynamics.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="dynamics.json: n_heads must be an integer, got '4'"):
        WorldModel.load(tmp_path / "w")


def test_load_bad_checkpoint_dir(tmp_path):
    from worldsim.model.checkpoint import CheckpointError
    from worldsim.model.world_model import WorldModel
    with pytest.raises(CheckpointError, match="no such checkpoint"):
        WorldModel.load(tmp_path / "missing")
    (tmp_path / "w").mkdir()
    with pytest.raises(CheckpointError, match="world.json"):
        WorldModel.load(tmp_path / "w")


def test_self_rollout_generates_only_the_chosen_context_ticks():
    import torch

    from worldsim.model.dynamics import Dynamics, DynamicsConfig
    from worldsim.train.dynamics_trainer import DynamicsTrainConfig, dynamics_loss, self_rollout

    torch.manual_seed(0)
    m = Dynamics(DynamicsConfig(d_model=32, n_layers=2, n_heads=2, context=6, audio_channels=4, audio_positions=4,
                                turn_weights=(6.0, 4.5, 1.0), memory_input=True))
    B, T = 6, 6
    batch = {"frames": torch.randn(B, T, 16, 8, 8), "audio": torch.randn(B, T, 4, 4),
             "buttons": torch.randint(0, 2, (B, T, 9), dtype=torch.uint8), "axes": torch.randn(B, T, 2)}
    names = (["forward", "back", "strafe_left", "strafe_right", "turn_left", "turn_right", "attack", "use", "run"],
             ["mouse_dx", "mouse_dy"])
    tcfg = DynamicsTrainConfig(rollout_frac=1.0, rollout_ticks=3)
    ctx = self_rollout(m, batch, tcfg, names, "cpu")
    z = batch["frames"]
    assert torch.equal(ctx[:, 0], z[:, 0]) and torch.equal(ctx[:, 4:], z[:, 4:])  # real before and after
    assert all(not torch.allclose(ctx[:, i], z[:, i]) for i in (1, 2, 3))          # generated in between
    assert torch.equal(self_rollout(m, batch, DynamicsTrainConfig(rollout_frac=0.0), names, "cpu"), z)
    loss, _ = dynamics_loss(m, batch, tcfg, names, "cpu")  # targets stay the real ticks; gradients flow
    loss.backward()
    assert torch.isfinite(loss) and m.frame_out.weight.grad is not None


def test_training_forward_skips_only_what_the_loss_never_reads():
    """``first_output=T``: the packed forward returns the noisy blocks' velocities only (the last
    layer skips the clean blocks' queries, MLP and head); values and gradients are the full
    forward's for those blocks."""
    import torch

    from worldsim.model.dynamics import Dynamics, DynamicsConfig
    from worldsim.train.dynamics_trainer import DynamicsTrainConfig, pack_inputs

    torch.manual_seed(0)
    m = Dynamics(DynamicsConfig(d_model=32, n_layers=2, n_heads=2, context=4, audio_channels=4, audio_positions=4))
    with torch.no_grad():  # no zero-initialised gates: every layer shapes the output
        for q in m.parameters():
            q.normal_(0, 0.1)
    B, T = 3, 4
    batch = {"frames": torch.randn(B, T, 16, 8, 8), "audio": torch.randn(B, T, 4, 4),
             "buttons": torch.randint(0, 2, (B, T, 9), dtype=torch.uint8), "axes": torch.randn(B, T, 2)}
    names = (["forward", "back", "strafe_left", "strafe_right", "turn_left", "turn_right", "attack", "use", "run"],
             ["mouse_dx", "mouse_dy"])
    p = pack_inputs(m, batch, DynamicsTrainConfig(), names, torch.Generator().manual_seed(1))
    grads = []
    for first in (0, p["T"]):
        m.zero_grad()
        pf, pa = m(*p["inputs"], first_output=first)
        pf, pa = (pf[:, p["T"]:], pa[:, p["T"]:]) if first == 0 else (pf, pa)
        assert pf.shape[1] == pa.shape[1] == T - 1
        (pf.square().mean() + pa.square().mean()).backward()
        grads.append((pf.detach(), pa.detach(), [q.grad.clone() for q in m.parameters()]))
    (f0, a0, g0), (f1, a1, g1) = grads
    torch.testing.assert_close(f1, f0, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(a1, a0, atol=1e-5, rtol=1e-4)
    for x, y in zip(g1, g0):
        torch.testing.assert_close(x, y, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("name", sorted(p.stem for p in (ROOT / "configs").glob("*.yaml")))
def test_every_shipped_config_loads(name):
    from worldsim.train.pipeline import load_run_config

    cfg = load_run_config(name)
    assert cfg.dynamics.context >= 2 and cfg.dynamics_train.steps > cfg.dynamics_train.schedule_start


def test_pixel_turn_prior_trains_from_scratch_and_switches_on_a_trained_run(toy, tmp_path):
    """``dynamics.prior_space: pixel``: the turn prior re-aims decoded pictures in training (real
    and self-rolled-out context) as at runtime; ``dynamics_train.prior_space`` switches a trained
    run's dynamics to it on the run's latent store (a fine-tune; later stages keep the switch)."""
    from worldsim.model.world_model import WorldModel
    cfg = (ROOT / "configs" / "tiny.yaml").read_text()
    pix = tmp_path / "pix.yaml"
    pix.write_text(cfg.replace("dynamics: {", "dynamics: {prior_space: pixel, turn_weights: [6.0, 4.5, 1.0], ", 1)
                   .replace("dynamics_train: {steps: 30, batch: 4", "dynamics_train: {steps: 4, rollout_frac: 0.5, rollout_ticks: 1, batch: 4"))
    run = tmp_path / "scratch"
    assert main(["train", "--config", str(pix), "--data", str(toy), "--out", str(run), "--quiet"]) == 0
    assert json.loads((run / "dynamics.json").read_text())["config"]["prior_space"] == "pixel"
    assert _log(run, "dynamics")[-1]["step"] == 4
    w = WorldModel.load(run)
    assert w.dynamics.reaim is not None and w.prior_codec is None
    # the decoder stage sharpens the shown decoder; the prior keeps decoding with the one it started from
    adv = tmp_path / "adv.yaml"
    adv.write_text(pix.read_text() + "frame_decoder_adv_train: {steps: 2, batch: 2, bank_starts: 2, bank_horizon: 2, "
                   "bank_batch: 2, save_every: 2, log_every: 1}\n")
    assert main(["train", "--config", str(adv), "--data", str(toy), "--out", str(run), "--quiet",
                 "--stage", "frame_decoder_adv"]) == 0
    import torch
    from safetensors.torch import load_file
    kept, base = (load_file(str(run / d / "frame_codec.safetensors")) for d in (".", "decoder_adv"))
    prior = load_file(str(run / "frame_codec_prior.safetensors"))
    assert all(torch.equal(prior[k], v) for k, v in base.items())
    assert any(not torch.equal(kept[k], v) for k, v in base.items())
    assert main(["export", str(run), "--out", str(tmp_path / "exp")]) == 0
    assert WorldModel.load(tmp_path / "exp").prior_codec is not None

    run2 = tmp_path / "switch"
    plain = tmp_path / "plain.yaml"
    plain.write_text(cfg.replace("dynamics: {", "dynamics: {turn_weights: [6.0, 4.5, 1.0], ", 1)
                     .replace("dynamics_train: {steps: 30, batch: 4", "dynamics_train: {steps: 4, batch: 4"))
    assert main(["train", "--config", str(plain), "--data", str(toy), "--out", str(run2), "--quiet"]) == 0
    assert json.loads((run2 / "dynamics.json").read_text())["config"]["prior_space"] == "latent"
    more = tmp_path / "more.yaml"
    more.write_text(plain.read_text().replace("dynamics_train: {steps: 4", "dynamics_train: {steps: 8, prior_space: pixel, "
                                                                          "rollout_frac: 0.5, rollout_ticks: 1"))
    assert main(["train", "--config", str(more), "--latents", str(run2 / "latents"), "--out", str(run2), "--resume",
                 "--quiet", "--stage", "dynamics"]) == 0
    d = json.loads((run2 / "dynamics.json").read_text())
    assert d["config"]["prior_space"] == "pixel" and d["meta"]["train_steps"] == 8
    from worldsim.data.episode import open_episodes
    model = WorldModel.load(run2)
    e = open_episodes(toy)[0]
    c = model.context_steps
    st = model.new_state([0])
    model.prime(st, np.array(e.frames[:c])[None], np.array(e.audio[:c])[None], np.array(e.buttons[:c - 1])[None],
                np.array(e.axes[:c - 1])[None])
    turn = np.asarray(e.buttons[c - 1:c]).copy()
    frames, _ = model.step_batch(st, turn, np.asarray(e.axes[c - 1:c]))
    assert frames.shape == (1, 64, 64, 3)
