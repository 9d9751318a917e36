"""Few-step distillation (worldsim.train.distill): teacher-coupled targets, and that training on
them pulls the student's few-step samples onto the teacher's many-step ones."""

import copy

import pytest
import torch

from worldsim.model.dynamics import Dynamics, DynamicsConfig
from worldsim.model.sampler import FlowSampler, FlowSamplerConfig
from worldsim.train.distill import couple, load_teacher, student_times, teacher_sample
from worldsim.train.dynamics_trainer import DynamicsTrainConfig, dynamics_loss, pack_inputs

NAMES = (["forward", "back", "strafe_left", "strafe_right", "turn_left", "turn_right", "attack", "use", "run"],
         ["mouse_dx", "mouse_dy"])


def _tiny(seed=0, **kw):
    torch.manual_seed(seed)
    return Dynamics(DynamicsConfig(d_model=32, n_layers=2, n_heads=2, context=4, audio_channels=4, audio_positions=4,
                                   turn_weights=(6.0, 4.5, 1.0), **kw))


def _batch(B=4, T=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    return {"frames": torch.randn(B, T, 16, 8, 8, generator=g), "audio": torch.randn(B, T, 4, 4, generator=g),
            "buttons": torch.randint(0, 2, (B, T, 9), dtype=torch.uint8, generator=g),
            "axes": torch.randn(B, T, 2, generator=g)}


def _gap(student, teacher, batch, tcfg) -> float:
    """The student's 1-step sample vs the teacher's 6-step sample, same noise, fixed seed."""
    p = pack_inputs(student, batch, tcfg, NAMES, torch.Generator().manual_seed(9))
    with torch.no_grad():
        student.eval()
        s, _ = teacher_sample(student, p, 1, "cpu")
        student.train()
        t, _ = teacher_sample(teacher, p, 6, "cpu")
    return float((s - t).pow(2).mean())


def test_couple_puts_picked_targets_on_the_teacher_line_and_leaves_the_rest():
    m = _tiny()
    p = pack_inputs(m, _batch(), DynamicsTrainConfig(), NAMES)
    T = p["T"]
    before = [x.clone() if torch.is_tensor(x) else x for x in p["inputs"]]
    v_before = p["v_frame"].clone()
    x0 = torch.randn_like(p["eps_frame"])
    x0a = torch.randn_like(p["eps_audio"])
    pick = torch.tensor([True, False, True, False])
    t = torch.full(p["t"].shape, 0.25)
    couple(p, x0[pick], x0a[pick], pick, t)
    frame, audio, _, level, *_ = p["inputs"]
    eps = p["eps_frame"]
    assert torch.allclose(frame[pick, T:], 0.75 * x0[pick] + 0.25 * eps[pick])
    assert torch.allclose(p["v_frame"][pick], eps[pick] - x0[pick])
    assert torch.allclose(audio[pick, T:], 0.75 * x0a[pick] + 0.25 * p["eps_audio"][pick])
    assert torch.all(level[pick, T:] == 0.25)
    keep = ~pick
    assert torch.equal(frame[keep], before[0][keep]) and torch.equal(p["v_frame"][keep], v_before[keep])
    assert torch.equal(frame[:, :T], before[0][:, :T])  # the context is never touched


def test_student_times_sit_on_the_sampler_steps():
    t = torch.full((1000,), 0.3)
    ts = student_times(t, 2, 1.0, torch.Generator().manual_seed(0))
    assert set(ts.unique().tolist()) == {1.0, 0.5} == set(FlowSampler(FlowSamplerConfig(steps=2)).timesteps()[:-1])
    ts = student_times(t, 2, 0.0)
    assert torch.equal(ts, t)


def _one_step_packed(teacher, p, amp):
    """x0 = eps - v(eps, t=1) from the teacher's packed (full-window) forward."""
    T = p["T"]
    frame, audio, prior, level, action, times, noisy, memory = p["inputs"]
    lv = torch.cat([level[:, :T], torch.ones_like(level[:, T:])], 1)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
        vf, va = teacher(torch.cat([frame[:, :T], p["eps_frame"]], 1), torch.cat([audio[:, :T], p["eps_audio"]], 1),
                         prior, lv, action, times, noisy, memory)
    return p["eps_frame"] - vf[:, T:].float(), p["eps_audio"] - va[:, T:].float()


def test_teacher_sample_is_the_teachers_euler_integration(monkeypatch):
    # the cached sampler (context committed once, noisy blocks streamed) answers as the packed forward
    teacher = _tiny(3).eval()
    p = pack_inputs(teacher, _batch(), DynamicsTrainConfig(), NAMES)
    x, xa = teacher_sample(teacher, p, 1, "cpu", amp=False)  # one Euler step: x0 = eps - v(eps, t=1)
    rf, ra = _one_step_packed(teacher, p, amp=False)
    assert torch.allclose(x, rf, atol=1e-5) and torch.allclose(xa, ra, atol=1e-5)
    monkeypatch.setenv("WORLDSIM_PRECISION", "bf16")  # training's autocast where bf16 is native
    xb, xab = teacher_sample(teacher, p, 1, "cpu")
    rf, ra = _one_step_packed(teacher, p, amp=True)
    assert torch.allclose(xb, rf, atol=1e-5) and torch.allclose(xab, ra, atol=1e-5)
    rows = torch.tensor([False, True, True, False])
    xr, _ = teacher_sample(teacher, p, 1, "cpu", rows, amp=False)
    assert torch.allclose(xr, x[rows], atol=1e-5)  # same windows, same answer
    x4, _ = teacher_sample(teacher, p, 4, "cpu", amp=False)  # more steps: a different (integrated) answer
    assert (x4 - x).abs().max() > 1e-3


def test_distilling_pulls_one_step_samples_onto_the_teachers_many_step_samples():
    torch.manual_seed(0)
    teacher = _tiny(5)
    teacher.eval()
    student = copy.deepcopy(teacher)
    student.train()
    batch = _batch(B=8, seed=2)
    tcfg = DynamicsTrainConfig(distill_steps=6, distill_teacher="unused", distill_student_steps=1, distill_at_steps=1.0,
                               tau_max=0.0)

    def gap() -> float:
        return _gap(student, teacher, batch, tcfg)

    g0 = gap()
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    for _ in range(150):
        loss, _ = dynamics_loss(student, batch, tcfg, NAMES, "cpu", teacher)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert gap() < 0.2 * g0  # measured: 0.0097 -> 0.0003


def test_pooled_pairs_sample_the_teacher_once_per_reuse_steps_and_still_pull(monkeypatch):
    """``distill_reuse``: each teacher-sampled batch trains several student steps (fresh flow
    times, same noise and teacher sample): the teacher runs once every ``reuse`` steps, the
    pooled pair is never altered by a step, and training on pooled pairs still pulls."""
    from worldsim.train import dynamics_trainer
    from worldsim.train.distill import PairPool
    torch.manual_seed(0)
    teacher = _tiny(5).eval()
    student = copy.deepcopy(teacher).train()
    batch = _batch(B=8, seed=2)
    tcfg = DynamicsTrainConfig(distill_steps=6, distill_teacher="unused", distill_student_steps=1, distill_at_steps=1.0,
                               tau_max=0.0, distill_reuse=3)
    calls = []
    real = dynamics_trainer.teacher_sample
    monkeypatch.setattr(dynamics_trainer, "teacher_sample", lambda *a, **k: calls.append(1) or real(*a, **k))
    pool = PairPool(tcfg.distill_reuse)

    def gap() -> float:
        return _gap(student, teacher, batch, tcfg)

    g0 = gap()
    opt = torch.optim.Adam(student.parameters(), lr=2e-3)
    for i in range(150):
        loss, _ = dynamics_loss(student, batch, tcfg, NAMES, "cpu", teacher, pool)
        if i == 0:
            kept = pool.pairs[0][0]["inputs"][0].clone()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert len(calls) == 50 and len(pool.pairs) == 3
    assert not any(torch.equal(kept, pr[0]["inputs"][0]) for pr in pool.pairs)  # the oldest left the pool
    dynamics_loss(student, batch, tcfg, NAMES, "cpu", teacher, pool)  # step 151: a new pair
    assert len(calls) == 51
    before = [pr[0]["inputs"][0].clone() for pr in pool.pairs]
    dynamics_loss(student, batch, tcfg, NAMES, "cpu", teacher, pool)  # step 152 draws: pairs stay as sampled
    assert len(calls) == 51 and all(torch.equal(b, pr[0]["inputs"][0]) for b, pr in zip(before, pool.pairs))
    assert gap() < 0.2 * g0
    with pytest.raises(ValueError, match="distill_reuse"):
        DynamicsTrainConfig(distill_reuse=0).validate()


def test_distill_config_and_teacher_errors(tmp_path):
    with pytest.raises(ValueError, match="distill_teacher"):
        DynamicsTrainConfig(distill_steps=4).validate()
    with pytest.raises(ValueError, match="distill_frac"):
        DynamicsTrainConfig(distill_frac=1.5).validate()
    with pytest.raises(ValueError, match="no dynamics.json"):
        load_teacher(tmp_path, DynamicsConfig(), "cpu")
    from worldsim.model.checkpoint import save_component
    other = DynamicsConfig(d_model=32, n_layers=1, n_heads=2, context=4, latent_channels=8)
    save_component(tmp_path, "dynamics", Dynamics(other), other)
    with pytest.raises(ValueError, match="latent_channels"):
        load_teacher(tmp_path, DynamicsConfig(d_model=32, n_layers=1, n_heads=2, context=4), "cpu")
    t = load_teacher(tmp_path, DynamicsConfig(d_model=64, n_layers=2, n_heads=2, context=4, latent_channels=8), "cpu")
    assert not any(q.requires_grad for q in t.parameters())  # frozen; the width may differ from the student's


@pytest.mark.skipif(not __import__("worldsim.model.packed_linear", fromlist=["x"]).INT8_AVAILABLE,
                    reason="no fbgemm int8 engine in this PyTorch")
def test_teacher_precision_int8_samples_what_the_float_teacher_samples(tmp_path):
    """``distill_precision``: the teacher's linears in int8 (what `auto` picks on a CPU without AMX,
    as a loaded world does) give samples within int8's error of the float teacher's; bf16/fp32 keep
    float linears; an unknown name is a config error."""
    from worldsim.model import packed_linear
    from worldsim.model.checkpoint import save_component
    cfg = DynamicsConfig(d_model=64, n_layers=2, n_heads=2, context=4, audio_channels=4, audio_positions=4,
                         turn_weights=(6.0, 4.5, 1.0))
    torch.manual_seed(3)
    net = Dynamics(cfg)
    with torch.no_grad():  # no zero-initialised heads or gates: every layer shapes the samples
        for q in net.parameters():
            q.normal_(0, 0.1)
    save_component(tmp_path, "dynamics", net, cfg)
    float_t = load_teacher(tmp_path, cfg, "cpu", "fp32")
    int8_t = load_teacher(tmp_path, cfg, "cpu", "int8")
    marked = lambda m: bool(m.__dict__.get(packed_linear._INT8))  # noqa: E731
    assert not any(marked(m) for m in float_t.modules()) and all(marked(m) for m in int8_t.modules())
    p = pack_inputs(float_t, _batch(B=4, seed=4), DynamicsTrainConfig(tau_max=0.0), NAMES, torch.Generator().manual_seed(2))
    xf, af = teacher_sample(float_t, p, 4, "cpu", amp=False)
    xi, ai = teacher_sample(int8_t, p, 4, "cpu", amp=False)
    assert not torch.equal(xi, xf)  # the int8 path ran
    for a, b in ((xi, xf), (ai, af)):
        assert float((a - b).pow(2).mean().sqrt() / b.pow(2).mean().sqrt()) < 0.05
    with pytest.raises(ValueError, match="distill_precision must be one of"):
        DynamicsTrainConfig(distill_precision="fp16").validate()


def test_distilled_windows_can_keep_the_recorded_sound_as_their_audio_target(monkeypatch):
    """``distill_audio: real``: the frames of a distilled window take the teacher's sample, its
    audio the recorded tick's (flow matching at the same flow times), so the student may sound
    where the teacher stays silent; "teacher" (the default) couples both to the teacher."""
    from worldsim.train import dynamics_trainer
    teacher = _tiny(5).eval()
    student = copy.deepcopy(teacher).train()
    batch = _batch(B=4, seed=3)
    seen = []
    real_couple = dynamics_trainer.couple
    monkeypatch.setattr(dynamics_trainer, "couple", lambda p, xs, xa, pick, t: seen.append((xs, xa, pick)) or
                        real_couple(p, xs, xa, pick, t))
    recorded = batch["audio"][:, 1:].float().flatten(2)  # (B, T-1, Da): the ticks the windows predict
    for mode in ("real", "teacher"):
        tcfg = DynamicsTrainConfig(distill_steps=3, distill_teacher="unused", tau_max=0.0, distill_audio=mode)
        tcfg.validate()
        loss, stats = dynamics_loss(student, batch, tcfg, NAMES, "cpu", teacher)
        assert torch.isfinite(loss) and "audio" in stats
        xs, xa, pick = seen[-1]
        assert pick.all()  # distill_frac 1: every window distilled
        if mode == "real":
            torch.testing.assert_close(xa, recorded)
        else:
            assert not torch.allclose(xa, recorded, atol=1e-3)  # the teacher's own samples
    with pytest.raises(ValueError, match="distill_audio"):
        DynamicsTrainConfig(distill_audio="both").validate()
