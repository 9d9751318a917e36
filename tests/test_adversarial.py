"""Adversarial sharpening (worldsim.train.adversarial): the clean-tick estimate, the critic's
game, its hook in the dynamics loss, and that a resumed run resumes the critic too."""

import json
from pathlib import Path

import torch

from tests.helpers import toy_world
from tests.test_distill import NAMES, _batch, _tiny
from worldsim.cli import main
from worldsim.train.adversarial import Adversary, clean_estimate
from worldsim.train import dynamics_trainer
from worldsim.train.dynamics_trainer import DynamicsTrainConfig, dynamics_loss, pack_inputs

TINY = (Path(__file__).resolve().parents[1] / "configs" / "tiny.yaml").read_text()


def test_clean_estimate_inverts_the_flow_line():
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 3, 16, 8, generator=g), torch.randn(2, 3, 16, 8, generator=g)
    t = torch.rand(2, 3, generator=g)
    xt = (1 - t[..., None, None]) * x0 + t[..., None, None] * eps
    assert torch.allclose(clean_estimate(xt, t, eps - x0), x0, atol=1e-6)


def test_critic_learns_to_separate_and_its_term_leaves_it_alone():
    torch.manual_seed(0)
    adv = Adversary(4, lr=1e-3, width=16)
    prev = torch.randn(8, 4, 8, 8)
    real = prev + 0.5 * torch.randn(8, 4, 8, 8)  # detail
    fake = prev.clone()  # a blurred guess: no detail at all
    first = adv.update(prev, real, fake)["critic_gap"]
    for _ in range(30):
        last = adv.update(prev, real, fake)["critic_gap"]
    assert last > first + 0.5  # real scores above fake

    fake = fake.requires_grad_(True)
    before = [p.detach().clone() for p in adv.critic.parameters()]
    adv.generator_loss(prev, fake).backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None for p in adv.critic.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, adv.critic.parameters()))
    assert all(p.requires_grad for p in adv.critic.parameters())


def test_dynamics_loss_adds_the_adversarial_term_only_when_weighted():
    m = _tiny()
    adv = Adversary(16, width=16)
    crit0 = [p.detach().clone() for p in adv.critic.parameters()]
    off = DynamicsTrainConfig(adv_weight=0.0)
    torch.manual_seed(3)
    base, stats = dynamics_loss(m, _batch(), off, NAMES, "cpu", adversary=adv)
    assert "adv" not in stats
    assert all(torch.equal(a, b) for a, b in zip(crit0, adv.critic.parameters()))  # off: the critic is not stepped

    on = DynamicsTrainConfig(adv_weight=0.5)
    torch.manual_seed(3)
    loss, stats = dynamics_loss(m, _batch(), on, NAMES, "cpu", adversary=adv)
    assert {"adv", "critic", "critic_gap"} <= set(stats)
    assert torch.isclose(loss, base + 0.5 * stats["adv"], atol=1e-5)  # same batch and noise: only the term differs
    assert any(not torch.equal(a, b) for a, b in zip(crit0, adv.critic.parameters()))
    loss.backward()
    assert m.frame_out.weight.grad is not None and m.frame_out.weight.grad.abs().sum() > 0


def test_packed_batch_carries_the_real_ticks():
    m, b = _tiny(), _batch()
    p = pack_inputs(m, b, DynamicsTrainConfig(), NAMES)
    assert torch.equal(p["real"], b["frames"].float())


def test_training_with_the_critic_saves_and_resumes_it(tmp_path, monkeypatch):
    toy = toy_world(tmp_path / "toy", episodes=2, steps=40)
    run = tmp_path / "run"
    assert main(["train", "--config", "tiny", "--data", str(toy), "--out", str(run), "--quiet",
                 "--stage", "frame_codec", "--stage", "audio_codec", "--stage", "latents"]) == 0
    cfg = tmp_path / "adv.yaml"
    cfg.write_text(TINY.replace("dynamics_train: {", "dynamics_train: {adv_weight: 0.1, "))
    args = ["train", "--config", str(cfg), "--data", str(toy), "--out", str(run), "--quiet",
            "--stage", "dynamics"]
    assert main(args + ["--max-steps", "3"]) == 0
    state = torch.load(run / "dynamics.train.pt", weights_only=True)
    assert "adversary" in state
    log = [json.loads(x) for x in (run / "dynamics.log.jsonl").read_text().splitlines()]
    assert "adv" in log[-1] and "critic" in log[-1]

    saved = {k: v.clone() for k, v in state["adversary"]["critic"].items()}
    loaded = []

    class Spy(Adversary):
        def load_state_dict(self, st):
            super().load_state_dict(st)
            loaded.append({k: v.clone() for k, v in self.critic.state_dict().items()})

    monkeypatch.setattr(dynamics_trainer, "Adversary", Spy)
    assert main(args + ["--resume", "--max-steps", "2"]) == 0
    assert len(loaded) == 1 and all(torch.equal(saved[k], v) for k, v in loaded[0].items())
    after = torch.load(run / "dynamics.train.pt", weights_only=True)
    assert after["step"] == 5
    assert any(not torch.equal(v, saved[k]) for k, v in after["adversary"]["critic"].items())  # and it trained on


def test_bad_adversarial_settings_are_rejected(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("dynamics_train: {", "dynamics_train: {adv_weight: -1, "))
    assert main(["train", "--config", str(bad), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "adv_weight" in err and "Traceback" not in err


def test_ddp_two_processes_train_one_critic(tmp_path):
    import os
    import subprocess
    import sys
    root = Path(__file__).resolve().parents[1]
    toy = toy_world(tmp_path / "toy", episodes=2, steps=40)
    run = tmp_path / "run"
    cfg = tmp_path / "adv.yaml"
    cfg.write_text(TINY.replace("dynamics_train: {", "dynamics_train: {adv_weight: 0.1, "))
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(root))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "worldsim.cli",
           "train", "--config", str(cfg), "--data", str(toy), "--out", str(run), "--quiet", "--max-steps", "2",
           "--stage", "frame_codec", "--stage", "audio_codec", "--stage", "latents", "--stage", "dynamics"]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    state = torch.load(run / "dynamics.train.pt", weights_only=True)
    assert state["step"] == 2 and "adversary" in state
