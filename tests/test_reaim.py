"""The learned turn prior (model/reaim_net.py, train/reaim_trainer.py): it starts as the latent
slide, the reaim stage teaches it a world's pixel prior from a latent store, a world that ships
it turns with it (and can be told not to), and export keeps or drops it with the prior."""

import json
import pytest
import torch

from tests.helpers import random_world
from worldsim.cli import main
from worldsim.model.action_inputs import shift_latent
from worldsim.model.reaim_net import LearnedReaim, ReaimNet, ReaimNetConfig
from worldsim.model.view_warp import LatentReaim

CFG = "name: t\nseed: 1\nreaim_train: {steps: 60, pairs: 384, batch: 32, lr: 0.003, warmup: 5, width: 16, " \
      "sub: 2, fine_width: 8, log_every: 10, save_every: 30, target_batch: 64}\n"


def test_a_new_net_is_the_latent_slide_and_small_turns_keep_their_latent():
    torch.manual_seed(0)
    net = ReaimNet(ReaimNetConfig(latent_channels=4, width=8, cells_per_degree=0.1))
    z, yaw = torch.randn(3, 4, 8, 8), torch.tensor([0.5, 3.0, -7.0])
    torch.testing.assert_close(net(z, yaw), shift_latent(z, yaw * 0.1))  # zero-initialised residual
    with torch.no_grad():
        net.net[-1].bias.fill_(0.25)  # a trained net changes what it turns …
    out = LearnedReaim(net, min_deg=1.0)(z, yaw)
    assert torch.equal(out[0], z[0])  # … but a turn under min_deg keeps the latent as it was
    torch.testing.assert_close(out[1:], net(z[1:], yaw[1:]))
    with pytest.raises(ValueError, match="reaim.width"):
        ReaimNet(ReaimNetConfig(width=0))


def test_the_fine_grid_is_warped_as_the_picture_would_be():
    from worldsim.model.view_warp import yaw_grid
    # no turn: every grid (square or not) samples its own centres
    g = yaw_grid(torch.zeros(1), 90.0, 8, 32)[0]  # (8, 32, 2)
    torch.testing.assert_close(g[0, :, 0], (torch.arange(32) + 0.5) / 16 - 1)
    torch.testing.assert_close(g[:, 0, 1], (torch.arange(8) + 0.5) / 4 - 1)
    # a turn moves a coarse grid's samples as it moves the same points of the full-resolution one
    full, coarse = yaw_grid(torch.tensor([9.0]), 90.0, 64, 64)[0], yaw_grid(torch.tensor([9.0]), 90.0, 8, 32)[0]
    # (coarse row 3 / column 10 is centred at pixel (28, 21): between full rows 27-28 and columns 20-21)
    torch.testing.assert_close(coarse[3, 10], full[27:29, 20:22].mean((0, 1)), atol=2e-3, rtol=0)
    net = ReaimNet(ReaimNetConfig(latent_channels=4, width=8, sub=2, fine_width=6, cells_per_degree=0.1))
    z, yaw = torch.randn(2, 4, 8, 8), torch.tensor([2.0, -5.0])
    torch.testing.assert_close(net(z, yaw), shift_latent(z, yaw * 0.1))  # a new fine net starts as the slide too
    net.net[-1].weight.data.normal_()
    assert net(z, yaw).shape == (2, 4, 8, 8) and not torch.allclose(net(z, yaw), shift_latent(z, yaw * 0.1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A random pixel-prior world, its recordings' latent store, and the reaim stage run on them."""
    from worldsim.data.episode import open_episodes
    from worldsim.model.world_model import WorldModel
    from worldsim.train.latents import build_latents

    tmp = tmp_path_factory.mktemp("reaim")
    run = random_world(tmp / "run", prior_space="pixel")
    w = WorldModel.load(run)
    build_latents(open_episodes(tmp / "run_data"), w.frame_codec, w.audio_codec, run, tmp / "store", progress=False)
    cfg = tmp / "r.yaml"
    cfg.write_text(CFG)
    assert main(["train", "--config", str(cfg), "--out", str(run), "--latents", str(tmp / "store"), "--quiet",
                 "--stage", "reaim"]) == 0
    return tmp, run, cfg


def test_the_stage_learns_the_pixel_prior_better_than_the_slide(trained):
    _, run, _ = trained
    meta = json.loads((run / "reaim.json").read_text())["meta"]
    assert meta["train_steps"] == 60 and meta["pairs"] == 384
    assert meta["val_mse"] < meta["val_mse_slide"]  # held-out pairs: closer to the pixel prior than its start
    log = [json.loads(x) for x in (run / "reaim.log.jsonl").read_text().splitlines()]
    assert log[-1]["loss"] < log[0]["loss"]
    # the world's own sampler settings are untouched by a reaim-only run
    assert json.loads((run / "world.json").read_text())["sampler"] == {"steps": 2}


def test_a_world_with_the_net_turns_with_it_and_can_be_told_not_to(trained):
    from worldsim.model.world_model import WorldModel
    from worldsim.runtime import World

    _, run, _ = trained
    w = WorldModel.load(run)
    assert isinstance(w.dynamics.reaim, LearnedReaim)
    pixel = WorldModel.load(run, learned_reaim=False).dynamics.reaim
    assert type(pixel) is LatentReaim
    world = World.load(str(run))
    s = world.open(seed=3)
    a = world.model.schema.noop()
    a.buttons[world.model.schema.buttons.index("turn_right")] = 1
    for _ in range(3):
        chunk = s.step(a)
    assert chunk.frames.shape == (1, 64, 64, 3)
    # starts primed with the net serve a world that turns with it, not one told to take the pixel prior
    from worldsim.runtime.starts import encode_starts
    encode_starts(run)
    assert World.load(str(run)).starts.primed(0) is not None
    told = World.load(str(run), learned_reaim=False)
    assert type(told.model.dynamics.reaim) is LatentReaim and told.starts.primed(0) is None


def test_resume_skips_a_finished_stage_and_export_keeps_or_drops_the_net(trained):
    tmp, run, cfg = trained
    before = (run / "reaim.safetensors").read_bytes()
    assert main(["train", "--config", str(cfg), "--out", str(run), "--latents", str(tmp / "store"), "--quiet",
                 "--stage", "reaim", "--resume"]) == 0
    assert (run / "reaim.safetensors").read_bytes() == before
    out = tmp / "exported"
    assert main(["export", str(run), "--out", str(out)]) == 0
    assert (out / "reaim.json").exists()
    from worldsim.model.world_model import WorldModel
    assert isinstance(WorldModel.load(out).dynamics.reaim, LearnedReaim)
    back = tmp / "latent"
    assert main(["export", str(out), "--out", str(back), "--prior-space", "latent"]) == 0
    assert not (back / "reaim.json").exists()


def test_a_world_that_slides_latents_learns_the_prior_export_would_give_it(tmp_path):
    """A run whose dynamics still slides latents (the recipe switches to pixels at export) learns
    the pixel prior anyway; it turns with the net once exported with ``--prior-space pixel``."""
    from worldsim.data.episode import open_episodes
    from worldsim.model.world_model import WorldModel
    from worldsim.train.latents import build_latents

    run = random_world(tmp_path / "run", prior_space="latent")
    w = WorldModel.load(run)
    build_latents(open_episodes(tmp_path / "run_data"), w.frame_codec, w.audio_codec, run, tmp_path / "store",
                  progress=False)
    cfg = tmp_path / "r.yaml"
    cfg.write_text(CFG.replace("steps: 60", "steps: 10"))
    assert main(["train", "--config", str(cfg), "--out", str(run), "--latents", str(tmp_path / "store"), "--quiet",
                 "--stage", "reaim"]) == 0
    assert WorldModel.load(run).dynamics.reaim is None  # a latent-slide world ignores it …
    out = tmp_path / "pix"
    assert main(["export", str(run), "--out", str(out), "--prior-space", "pixel"]) == 0
    assert isinstance(WorldModel.load(out).dynamics.reaim, LearnedReaim)  # … until it turns in pixels


def test_the_stage_needs_turn_weights_and_a_latent_store(tmp_path, capsys):
    from worldsim.model.checkpoint import read_component_json, save_component
    from worldsim.model.dynamics import Dynamics, DynamicsConfig

    run = random_world(tmp_path / "run", prior_space="pixel")
    cfg = tmp_path / "r.yaml"
    cfg.write_text(CFG)
    assert main(["train", "--config", str(cfg), "--out", str(run), "--latents", str(tmp_path / "nowhere"), "--quiet",
                 "--stage", "reaim"]) != 0
    assert "not a latent store" in capsys.readouterr().err
    from worldsim.data.episode import open_episodes
    from worldsim.model.world_model import WorldModel
    from worldsim.train.latents import build_latents
    w = WorldModel.load(run)
    build_latents(open_episodes(tmp_path / "run_data"), w.frame_codec, w.audio_codec, run, tmp_path / "store",
                  progress=False)
    dcfg = DynamicsConfig(**{**read_component_json(run, "dynamics")["config"], "turn_weights": (), "prior_space": "latent"})
    save_component(run, "dynamics", Dynamics(dcfg), dcfg)
    assert main(["train", "--config", str(cfg), "--out", str(run), "--latents", str(tmp_path / "store"), "--quiet",
                 "--stage", "reaim"]) != 0
    assert "no turn weights" in capsys.readouterr().err
    assert not (run / "reaim.json").exists()


def test_the_recipe_skips_the_stage_for_a_picture_that_never_turns(tmp_path):
    """``worldsim train`` with every stage on recordings without turning (no turn weights, as a
    Gymnasium game's): the run finishes, with no learned prior to ship."""
    from tests.helpers import plain_episodes
    from worldsim.actions import VIZDOOM_SCHEMA

    data = plain_episodes(tmp_path / "data", VIZDOOM_SCHEMA, episodes=2, steps=30)
    run = tmp_path / "run"
    assert main(["train", "--config", "tiny", "--data", str(data), "--out", str(run), "--quiet"]) == 0
    assert (run / "dynamics.json").exists() and not (run / "reaim.json").exists()


def test_turn_speckle_measures_a_world_both_ways(trained, capsys):
    import numpy as np

    from worldsim.eval.turn_speckle import main as speckle_main, speckle
    assert speckle(np.full((64, 64, 3), 90, np.uint8)) < 1e-3  # (float rounding of the luma weights)
    checker = (np.indices((64, 64)).sum(0) % 2 * 255).astype(np.uint8)[..., None].repeat(3, -1)
    assert speckle(checker) > 500
    _, run, _ = trained
    assert speckle_main([str(run), f"{run}:pixel", "--starts", "1", "--ticks", "12"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 2 and out[1].startswith(f"{run}:pixel: turn key held")


def test_dynamics_training_can_turn_with_the_learned_prior(trained, tmp_path):
    """``dynamics_train.learned_prior``: training sees the prior the world plays with (the run's
    net, frozen), not the picture round trip it imitates; a run without the net is told what it lacks."""
    import shutil
    from worldsim.model.world_model import WorldModel
    from worldsim.train.dynamics_trainer import DynamicsTrainConfig, train_dynamics
    from worldsim.train.latents import load_latents
    from worldsim.train.turns import training_reaim

    tmp, run, _ = trained
    w = WorldModel.load(run)
    z, yaw = torch.randn(3, w.dynamics.cfg.latent_channels, 8, 8), torch.tensor([0.5, 4.0, -9.0])
    got = training_reaim(run, "cpu", 1.0, learned=True)(z, yaw)
    want = LearnedReaim(w.reaim_net.float(), 1.0)(z, yaw)
    torch.testing.assert_close(got.float(), want.float(), atol=0.05, rtol=0.05)  # the training's autocast
    assert torch.equal(got[0], z[0])  # under 1°: the latent as it was
    assert not torch.allclose(got.float(), training_reaim(run, "cpu", 1.0)(z, yaw).float(), atol=1e-3)
    # a dynamics stage with it trains (the run's own store), and says what it needs where it is missing
    cfg = w.dynamics.cfg
    store = load_latents(tmp / "store")
    out = tmp_path / "run"
    shutil.copytree(run, out)
    train_dynamics(store, out, cfg, DynamicsTrainConfig(steps=2, batch=2, learned_prior=True, rollout_frac=0.5,
                                                        rollout_ticks=1, save_every=2), progress=False)
    assert json.loads((out / "dynamics.json").read_text())["meta"]["train_steps"] == 2
    (out / "reaim.json").unlink()
    with pytest.raises(ValueError, match="learned turn prior"):
        train_dynamics(store, out, cfg, DynamicsTrainConfig(steps=4, batch=2, learned_prior=True), progress=False)
    with pytest.raises(ValueError, match="needs dynamics.prior_space 'pixel'"):  # a sliding world has no net to imitate
        train_dynamics(store, out, cfg, DynamicsTrainConfig(steps=4, batch=2, learned_prior=True, prior_space="latent"),
                       progress=False)
