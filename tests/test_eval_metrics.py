"""Unit tests of the evaluation harness's pieces: metrics, audio, baselines, probe labels, specs."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from worldsim.actions import VIZDOOM_SCHEMA, ActionSchema
from worldsim.eval import audio as A
from worldsim.eval.baselines import (
    CopyLastModel, ShiftCalibration, ShiftModel, estimate_shifts, keyboard_turn_deg, shift_frame,
)
from worldsim.eval.interface import ModelContractError, build_context, check_model, sanitize_frame
from worldsim.eval.metrics import PSNR_CAP_DB, colour_hist, gradient_energy, hist_distance, psnr, ssim, to_eval_res
from worldsim.eval.probe import ACTION_CLASSES, ProbeConfig, ProbeUnavailable, balanced_accuracy, label_actions
from worldsim.eval.registry import ModelUnavailable, load_model

rng = np.random.default_rng(0)


def frames(n=4, h=64, w=64):
    return rng.integers(0, 256, size=(n, h, w, 3), dtype=np.uint8)


def test_psnr_cap_and_value():
    a = frames()
    assert np.all(psnr(a, a) == PSNR_CAP_DB)
    b = a.astype(np.int16)
    b[..., 0] = np.clip(b[..., 0] + 10, 0, 255)
    p = psnr(a, b.astype(np.uint8))
    assert np.all((p > 20) & (p < 40))


def test_ssim_and_sharpness():
    a = frames(2)
    assert ssim(a, a) == pytest.approx([1.0, 1.0])
    assert np.all(ssim(a, 255 - a) < 0.1)
    blurred = ((a.astype(np.float32) + np.roll(a, 1, 1) + np.roll(a, 1, 2) + np.roll(a, (1, 1), (1, 2))) / 4).astype(np.uint8)
    assert np.all(gradient_energy(blurred) < gradient_energy(a))
    assert hist_distance(colour_hist(a), colour_hist(a)) == 0.0
    assert hist_distance(colour_hist(np.zeros_like(a)), colour_hist(np.full_like(a, 255))) == 1.0


def test_to_eval_res():
    big = frames(2, 128, 128)
    small = to_eval_res(big)
    assert small.shape == (2, 64, 64, 3) and small.dtype == np.uint8
    assert to_eval_res(frames(1)).shape == (1, 64, 64, 3)


def test_shift_frame_direction_and_padding():
    f = np.arange(8, dtype=np.uint8)[None, :, None].repeat(2, 0).repeat(3, 2)  # column x holds value x
    right = shift_frame(f, 3)  # turn right: content moves left, right edge repeats the border column
    assert right[0, :, 0].tolist() == [3, 4, 5, 6, 7, 7, 7, 7]
    assert shift_frame(f, -2)[0, :, 0].tolist() == [0, 0, 0, 1, 2, 3, 4, 5]


def test_estimate_shifts_recovers_known_shift():
    pano = rng.integers(0, 256, size=(64, 200, 3)).astype(np.uint8)
    pano = np.repeat(pano[:, ::4], 4, axis=1)
    prev = np.stack([pano[:, 40:104]] * 3)
    nxt = np.stack([pano[:, 43:107], pano[:, 35:99], pano[:, 40:104]])
    assert estimate_shifts(prev, nxt) == pytest.approx([3, -5, 0], abs=0.3)


def test_keyboard_turn_ramp():
    # ViZDoom: 3 slow tics (1.758°) then 3.516°/tic, 7.031° with run; frame_skip 2
    assert keyboard_turn_deg(1, 0, False, 2) == pytest.approx(3.5156, abs=1e-3)
    assert keyboard_turn_deg(1, 2, False, 2) == pytest.approx(5.2734, abs=1e-3)
    assert keyboard_turn_deg(-1, 4, True, 2) == pytest.approx(-14.0625, abs=1e-3)


def test_baseline_sessions_follow_the_alignment():
    ep_frames, btn, ax = frames(5), np.zeros((5, 9), np.uint8), np.zeros((5, 2), np.float32)
    ax[3, 0] = 10.0  # the action after frame 3: turn right 10°
    spec = {"sample_rate": 8000, "channels": 2, "samples_per_step": 100}
    ctx = build_context(ep_frames, btn, ax, None, end=3, steps=ShiftModel.context_steps)
    assert len(ctx["frames"]) == 4 and len(ctx["buttons"]) == 3
    shift = ShiftModel(VIZDOOM_SCHEMA, (64, 64), spec, ShiftCalibration(px_per_deg=0.5))
    frame, audio = shift.open(ctx).step(btn[3], ax[3])
    assert np.array_equal(frame, shift_frame(ep_frames[3], 5)) and audio.shape == (100, 2) and not audio.any()
    copy = CopyLastModel(VIZDOOM_SCHEMA, (64, 64), None)
    check_model(copy)
    frame, audio = copy.open(build_context(ep_frames, btn, ax, None, 3, 1)).step(btn[3], ax[3])
    assert np.array_equal(frame, ep_frames[3]) and audio is None
    with pytest.raises(ValueError):
        build_context(ep_frames, btn, ax, None, end=1, steps=4)


def test_sanitize_frame_flags_nan():
    f = np.full((64, 64, 3), np.nan, np.float32)
    out, bad = sanitize_frame(f, (64, 64))
    assert bad and out.dtype == np.uint8
    with pytest.raises(ModelContractError):
        sanitize_frame(np.zeros((32, 32, 3), np.uint8), (64, 64))


def test_mel_filterbank_and_logmel():
    fb = A.mel_filterbank(22050, 512)
    assert fb.shape == (A.N_MELS, 257) and np.allclose(fb.sum(1), 1.0)
    t = np.arange(22050) / 22050
    tone = (np.sin(2 * np.pi * 1000 * t) * 10000).astype(np.int16)[:, None]
    lm = A.log_mel(tone, 22050)
    assert lm.shape[1] == A.N_MELS and lm.max() > A.LOGMEL_FLOOR_DB + 40
    assert A.logmel_distance(tone, tone, 22050) == 0.0 < A.logmel_distance(np.zeros_like(tone), tone, 22050)


def test_onsets():
    steps = np.zeros((6, 100, 1), np.int16)
    steps[2] = 8000
    steps[3] = 8000  # sustained: not a new onset
    steps[5] = 8000
    on = A.onsets(A.step_energy_db(steps), prev_db=-100.0)
    assert on.tolist() == [False, False, True, False, False, True]
    late = np.array([False, False, False, True, False, False])  # one step late: matches the first only
    assert A.onset_matches(on, late) == (2, 1, 1, 1)


def test_onsets_by_cause():
    """A real onset counts as after attack / after use when that button was held in one of the
    5 actions before its step (attack first), else as other; the tally is kept per cause."""
    names = ("forward", "attack", "use")
    b = np.zeros((20, 3), np.uint8)
    b[3, 1] = 1   # attack at action 3: steps 4..8 follow it
    b[10, 2] = 1  # use at action 10: steps 11..15
    c = A.onset_causes(b, names, 0, 20)
    assert [A.CAUSES[i] for i in c[[3, 4, 8, 9, 11, 15, 16]]] == ["other", "attack", "attack", "other", "use", "use", "other"]
    b[12, 1] = 1  # attack and use both held before step 13: attack
    assert A.CAUSES[A.onset_causes(b, names, 0, 20)[13]] == "attack"
    assert A.onset_causes(b, ("forward",), 5, 4).tolist() == [A.CAUSES.index("other")] * 4  # no such buttons

    real = np.zeros((6, 100, 1), np.int16)
    real[2] = real[5] = 8000
    gen = np.zeros_like(real)
    gen[3] = 8000  # matches the onset at 2 (one late), misses the one at 5
    sc = A.AudioScorer(22050)
    sc.add(np.zeros((100, 1), np.int16), real, gen, causes=np.array([2, 2, 0, 2, 2, 2]))
    r = sc.result()["by_cause"]
    none = dict.fromkeys(A.MISSES, 0)
    assert r["attack"] == {"real_onsets": 1, "within_1": 1.0, "misses": none}
    assert r["other"] == {"real_onsets": 1, "within_1": 0.0, "misses": {**none, "shifted": 1}}  # gen's onset 2 early
    assert r["use"] == {"real_onsets": 0, "within_1": None, "misses": none}


def test_missed_onsets_are_told_apart():
    """A missed real onset: the generated sound has an onset 2–4 steps away (shifted), stays quiet
    (silent), or is loud there without the 6 dB rise (no_rise)."""
    real = np.zeros((16, 100, 1), np.int16)
    real[2] = real[6] = real[14] = 8000
    gen = np.zeros_like(real)
    gen[8:15] = 8000              # its one onset, at 8, is 2 after the real one at 6: shifted; loud through
    #                               14 without a rise there: no_rise; quiet around 2: silent
    sc = A.AudioScorer(22050)
    sc.add(np.zeros((100, 1), np.int16), real, gen)
    r = sc.result()
    assert r["real_onsets"] == 3 and r["onset_within_1"] == 0.0
    assert r["misses"] == {"shifted": 1, "silent": 1, "no_rise": 1}


def test_action_labels_priority():
    cfg = ProbeConfig()
    b = np.zeros((6, 9), np.uint8)
    a = np.zeros((6, 2), np.float32)
    b[1, 0] = 1                       # forward
    b[2, [0, 4]] = 1                  # forward + turn_left → turn_left
    a[3, 0] = 2.0                     # mouse right
    b[4, 3] = 1; a[4, 0] = 0.3        # strafe_right, mouse below threshold
    b[5, 6] = 1                       # attack only → none
    cls, sign = label_actions(VIZDOOM_SCHEMA, b, a, cfg)
    assert [ACTION_CLASSES[c] for c in cls] == ["none", "forward", "turn_left", "turn_right", "strafe_right", "none"]
    assert sign.tolist() == [1, 1, 1, 2, 1, 1]
    # another game's buttons are their own classes ("none" + each button, the first held wins) and its
    # first axis feeds the sign head (a tenth of its half-range either side of 0 is "none")
    jump = ActionSchema(buttons=("jump", "duck"), axes=("steer",), axis_low=(-2.0,), axis_high=(2.0,))
    cls, sign = label_actions(jump, np.array([[0, 0], [1, 1], [0, 1]]), np.array([[0.1], [-0.5], [0.3]]), cfg)
    assert cls.tolist() == [0, 1, 2] and sign.tolist() == [1, 0, 2]
    with pytest.raises(ProbeUnavailable, match="no buttons and no axes"):
        label_actions(ActionSchema(buttons=()), np.zeros((3, 0)), np.zeros((3, 0)), cfg)


def test_balanced_accuracy_constant_prediction_is_chance():
    true = np.array([0] * 50 + [1] * 30 + [2] * 20 + [3] * 2)
    r = balanced_accuracy(np.zeros_like(true), true)
    assert r["classes_present"] == 3 and r["balanced_acc"] == pytest.approx(1 / 3)


def test_model_specs():
    with pytest.raises(ModelUnavailable, match="no such checkpoint"):
        load_model("/nonexistent/world")
    with pytest.raises(ModelUnavailable, match="unknown model spec"):
        load_model("nonsense")
    with pytest.raises(ModelUnavailable, match="data"):
        load_model("baseline:shift")


def test_importing_the_harness_is_light():
    code = "import sys, worldsim.eval, worldsim.eval.harness; print('torch' in sys.modules, 'matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stdout.split() == ["False", "False"]


def test_a_probe_that_cannot_learn_is_reported_unavailable_not_read_at_chance():
    """Frames of pure noise say nothing about the actions: the probe stays at chance on its
    held-out blocks from every seed it tries, and the harness is told why instead of scoring."""
    from types import SimpleNamespace

    from worldsim.eval import probe as P

    r = np.random.default_rng(3)
    n = 400
    buttons = np.zeros((n, len(VIZDOOM_SCHEMA.buttons)), np.uint8)
    for i, k in enumerate(r.integers(0, 3, n)):  # forward / turn_left / none, varied
        if k < 2:
            buttons[i, VIZDOOM_SCHEMA.buttons.index(("forward", "turn_left")[k])] = 1

    class Ep(SimpleNamespace):
        def __len__(self):
            return n

    ep = Ep(schema=VIZDOOM_SCHEMA, buttons=buttons, axes=np.zeros((n, len(VIZDOOM_SCHEMA.axes)), np.float32),
            frames=r.integers(0, 256, (n, 64, 64, 3), dtype=np.uint8))
    with pytest.raises(ProbeUnavailable, match=f"after {P.PROBE_ATTEMPTS} seeds"):
        P.train_probe([ep], ProbeConfig(max_pairs=300, epochs=1, width=4))


def test_a_probe_cut_short_by_its_time_limit_is_not_reused_from_the_cache(tmp_path, monkeypatch):
    """A probe stopped by ``max_train_seconds`` is another instrument: it is cached with its flag
    but trained again (in full, given time) by the next eval rather than read back."""
    from types import SimpleNamespace

    from worldsim.eval import probe as P

    n = 60
    ep = SimpleNamespace(schema=VIZDOOM_SCHEMA, buttons=np.zeros((n, len(VIZDOOM_SCHEMA.buttons)), np.uint8),
                         axes=np.zeros((n, len(VIZDOOM_SCHEMA.axes)), np.float32), steps=n, path=tmp_path,
                         meta={"checksums": {"frames": "f", "buttons": "b", "axes": "a"}})
    cfg = ProbeConfig(width=4)
    trained = []

    def fake_train(episodes, c, progress=False):
        trained.append(c)
        return P.ActionProbe(P._make_net(c.width), c, {"stopped_early": len(trained) == 1})

    monkeypatch.setattr(P, "train_probe", fake_train)
    first = P.load_or_train_probe([ep], cfg, tmp_path / "cache")
    assert first.info["stopped_early"] and not first.info["cached"] and len(trained) == 1
    second = P.load_or_train_probe([ep], cfg, tmp_path / "cache")  # the cut-short one is not read back
    assert len(trained) == 2 and not second.info["cached"] and not second.info["stopped_early"]
    third = P.load_or_train_probe([ep], cfg, tmp_path / "cache")  # a full one is
    assert len(trained) == 2 and third.info["cached"]


def _ps(values, starts=None):
    """A per_start block with only free-running PSNR at 1 tick."""
    n = len(values)
    return {"tf_points": [[0, i] for i in range(n)], "free_starts": starts or [[0, i] for i in range(n)],
            "psnr_tf": [0.0] * n, "psnr_free": {"1": list(values)}}


def test_paired_interval_tells_a_shift_from_noise():
    from worldsim.eval.paired import paired_interval

    g = np.random.default_rng(5)
    base = g.normal(20, 3, 200)  # per-start PSNR varies far more than the change between models
    a = _ps(base)
    d, lo, hi = paired_interval(a, _ps(base + 0.5 + g.normal(0, 0.3, 200)), "psnr_free@1")
    assert 0 < lo < d < hi and d == pytest.approx(0.5, abs=0.1)  # a small but consistent gain: excludes 0
    d, lo, hi = paired_interval(a, _ps(base + g.normal(0, 2.0, 200)), "psnr_free@1")
    assert lo < 0 < hi  # noise only: includes 0
    assert paired_interval(a, _ps(base, [[1, i] for i in range(200)]), "psnr_free@1") is None  # other starts
    assert paired_interval(a, _ps(base), "sharpness@1") is None  # a metric the reports lack
    assert paired_interval(a, _ps(base), "psnr_free@1", seed=3) == paired_interval(a, _ps(base), "psnr_free@1", seed=3)
    with pytest.raises(ValueError, match="unknown metric"):
        paired_interval(a, a, "fps")
    broken = _ps(base)
    broken["psnr_free"]["1"] = broken["psnr_free"]["1"][:50] + ["x"]  # a hand-edited report: no interval, no crash
    assert paired_interval(a, broken, "psnr_free@1") is None
    assert paired_interval(a, [1, 2], "psnr_free@1") is None and paired_interval(None, a, "psnr_free@1") is None
