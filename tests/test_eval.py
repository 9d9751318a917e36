"""End-to-end tests of the evaluation harness on tiny synthetic ViZDoom-schema episodes.

The synthetic world is a random texture panorama that scrolls horizontally by the commanded
``mouse_dx`` (PX_PER_DEG px per degree, turn right → content moves left), with a sound burst
in the step after every ``attack``. The pose walks a circle so loop trajectories exist.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys

import numpy as np
import pytest

from worldsim.actions import VIZDOOM_SCHEMA
from worldsim.data import write_episode
from worldsim.eval.harness import add_eval_args, load_model, main_eval, run_eval
from worldsim.eval.interface import StreamingModel, build_context
from worldsim.eval.probe import ProbeConfig

PX_PER_DEG = 0.5
H = W = 64
PANO_W = 320
STEPS = 300
AUDIO = {"sample_rate": 8000, "channels": 1, "samples_per_step": 400}
BURST = (np.sin(np.arange(400) * 0.3) * np.linspace(12000, 2000, 400)).astype(np.int16)[:, None]
I_ATTACK = VIZDOOM_SCHEMA.buttons.index("attack")
TINY_PROBE = ProbeConfig(max_pairs=700, epochs=4, width=8, block_len=50, lr=4e-3)
FAST = dict(horizons=(1, 4, 16), tf_points=64, free_starts=8, drift_steps=200, progress=False, probe_config=TINY_PROBE)


def make_panorama(seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, size=(8, PANO_W // 8, 3)).astype(np.float32)
    pano = np.repeat(np.repeat(coarse, 8, axis=0), 8, axis=1)  # blocky: crisp edges to follow
    pano += rng.normal(0, 20, size=pano.shape)
    return np.clip(pano, 0, 255).astype(np.uint8)


def view(pano: np.ndarray, offset: int) -> np.ndarray:
    return pano[:, (offset + np.arange(W)) % PANO_W]


def burst_for(attack: bool) -> np.ndarray:
    return BURST.copy() if attack else np.zeros((400, 1), np.int16)


def make_episode(path, pano, seed: int, static: bool = False):
    rng = np.random.default_rng(seed)
    buttons = np.zeros((STEPS, VIZDOOM_SCHEMA.num_buttons), np.uint8)
    axes = np.zeros((STEPS, VIZDOOM_SCHEMA.num_axes), np.float32)
    t = 0
    while t < STEPS and not static:  # segments of turning left / right / standing still
        n = int(rng.integers(3, 10))
        axes[t:t + n, 0] = rng.choice([-8.0, -4.0, 0.0, 4.0, 8.0])
        t += n
    buttons[:, I_ATTACK] = rng.random(STEPS) < 0.08
    frames = np.zeros((STEPS, H, W, 3), np.uint8)
    audio = np.zeros((STEPS, 400, 1), np.int16)
    off = int(rng.integers(PANO_W))
    for t in range(STEPS):
        frames[t] = view(pano, off)
        if t > 0:
            audio[t] = burst_for(bool(buttons[t - 1, I_ATTACK]))
        off += int(round(axes[t, 0] * PX_PER_DEG))
    ang = 2 * np.pi * np.arange(STEPS) / 100
    pose = np.stack([300 * np.cos(ang), 300 * np.sin(ang), np.zeros(STEPS), np.degrees(ang) % 360, np.zeros(STEPS)], 1)
    arrays = dict(frames=frames, buttons=buttons, axes=axes, audio=audio, pose=pose.astype(np.float32))
    write_episode(path, VIZDOOM_SCHEMA, arrays, {"tick_rate": 20.0, "frame_skip": 2, "map": "SYNTH", "source": "synthetic"},
                  audio_spec=AUDIO)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    pano = make_panorama()
    for i in range(3):
        make_episode(root / "scroll" / f"ep_{i:06d}", pano, seed=i)
    for i in range(2):
        make_episode(root / "static" / f"ep_{i:06d}", pano, seed=10 + i, static=True)
    return {"root": root, "pano": pano, "scroll": root / "scroll", "static": root / "static", "cache": root / "cache"}


class PanoramaModel:
    """The synthetic game itself: finds its place on the panorama and scrolls by the action.

    ``follow_actions=False`` turns it into a model that ignores the controls (always turns
    right by 4°). ``set_memory`` exists so the loop-closure hook runs.
    """

    context_steps = 3
    audio_spec = AUDIO

    def __init__(self, pano, follow_actions: bool = True):
        self.pano, self.follow = pano, follow_actions
        self.schema, self.resolution, self.name = VIZDOOM_SCHEMA, (H, W), "panorama"
        self.memory = True

    def set_memory(self, enabled: bool) -> None:
        self.memory = enabled

    def open(self, context, seed: int = 0):
        assert len(context["buttons"]) == len(context["frames"]) - 1  # the documented alignment
        last = context["frames"][-1]
        off = next(o for o in range(PANO_W) if np.array_equal(view(self.pano, o), last))
        model = self

        class Session:
            def step(self, buttons, axes):
                nonlocal off
                dx = float(axes[0]) if model.follow else 4.0
                off += int(round(dx * PX_PER_DEG))
                return view(model.pano, off), burst_for(bool(buttons[I_ATTACK]))

        return Session()


def test_protocol_and_alignment(world):
    from worldsim.data import Episode

    m = PanoramaModel(world["pano"])
    assert isinstance(m, StreamingModel)
    e = Episode(world["scroll"] / "ep_000000")
    ctx = build_context(e.frames, e.buttons, e.axes, e.audio, end=10, steps=3)
    assert ctx["frames"].shape[0] == 3 and ctx["buttons"].shape[0] == 2 and ctx["audio"].shape[0] == 3
    frame, audio = m.open(ctx).step(e.buttons[10], e.axes[10])  # action of the last context step → next frame
    assert np.array_equal(frame, e.frames[11]) and np.array_equal(audio, e.audio[11])


def test_drift_buttons_only_follows_the_recorded_buttons_with_every_axis_at_zero(world):
    from worldsim.data.episode import open_episodes
    from worldsim.eval.drift import _action_stream
    eps = open_episodes(world["scroll"])
    rec = list(_action_stream(eps, 0, 0, 40))
    keys = list(_action_stream(eps, 0, 0, 40, buttons_only=True))
    assert len(rec) == len(keys) == 40
    assert all(np.array_equal(a[0], b[0]) for a, b in zip(rec, keys))
    assert any(a[1].any() for a in rec) and not any(b[1].any() for b in keys)


def test_perfect_model_and_keys(world, tmp_path):
    r = run_eval(PanoramaModel(world["pano"]), world["scroll"], cache_dir=world["cache"], json_out=tmp_path / "r.json",
                 plots_dir=tmp_path / "plots", **FAST)
    keys = {"psnr_tf", "ssim_tf", "psnr_free", "ssim_free", "sharpness_ratio", "baseline_copy_last", "baseline_shift",
            "drift", "action_acc_real", "action_acc_generated", "audio_onset_within_1", "audio_logmel_dist",
            "audio_logmel_dist_silence", "loop_closure_psnr_memory_on", "loop_closure_psnr_memory_off",
            "loop_closure_reason", "ms_per_step", "meta"}
    on_disk = json.loads((tmp_path / "r.json").read_text())
    assert keys <= set(on_disk) and keys <= set(r)
    for b in ("baseline_copy_last", "baseline_shift"):
        assert {"psnr_tf", "ssim_tf", "psnr_free", "ssim_free", "sharpness_ratio", "action_acc_generated"} <= set(on_disk[b])
    assert set(on_disk["psnr_free"]) == {"1", "4", "16"}
    assert {"data_dir", "episodes", "horizons", "seed", "model"} <= set(on_disk["meta"])
    d = on_disk["drift"]
    assert {"brightness", "edge_energy", "hist_dist", "psnr", "real_range", "frac_windows_in_range", "collapsed"} <= set(d)
    assert d["collapsed"] is False and d["frac_windows_in_range"] == 1.0
    k = on_disk["drift_buttons_only"]  # the scrolling data turns by mouse: the same rollout without it
    assert k["buttons_only"] is True and d["buttons_only"] is False and k["steps"] == d["steps"]
    assert {"brightness", "edge_energy", "hist_dist", "frac_windows_in_range", "collapsed"} <= set(k)
    # the game itself: capped PSNR, SSIM 1, sharpness 1, action accuracy at the probe's ceiling, every onset
    assert r["psnr_tf"] == 100.0 and all(v == 100.0 for v in r["psnr_free"].values())
    assert r["ssim_tf"] == pytest.approx(1.0) and all(v == pytest.approx(1.0) for v in r["sharpness_ratio"].values())
    assert r["action_acc_generated"] == r["action_acc_real"]
    assert r["action_acc_real"] > r["details"]["action_chance"] + 0.3
    assert r["audio_onset_within_1"] == 1.0 and r["audio_logmel_dist"] == 0.0 < r["audio_logmel_dist_silence"]
    assert r["loop_closure_psnr_memory_on"] == 100.0 and r["loop_closure_reason"] is None
    # the baselines on scrolling data: copy-last decays with the horizon, shift follows the turns
    cl, sh = r["baseline_copy_last"], r["baseline_shift"]
    assert cl["psnr_free"]["16"] < cl["psnr_free"]["1"] < 100.0
    assert sh["psnr_free"]["16"] > cl["psnr_free"]["16"]
    assert r["details"]["shift_calibration"]["px_per_deg"] == pytest.approx(PX_PER_DEG, abs=0.05)
    assert cl["audio_onset_within_1"] == 0.0 and cl["audio_logmel_dist"] == r["audio_logmel_dist_silence"]
    for name in ("psnr_vs_horizon.png", "strip.png", "drift.png", "summary.md"):
        assert (tmp_path / "plots" / name).stat().st_size > 0
    au = r["details"]["audio"]  # every real onset has one cause, and the oracle reproduces each
    assert sum(c["real_onsets"] for c in au["by_cause"].values()) == au["real_onsets"] > 0
    assert all(c["within_1"] in (None, 1.0) for c in au["by_cause"].values())
    assert "of those after attack" in (tmp_path / "plots" / "summary.md").read_text()


def test_a_model_with_an_audio_codec_gets_its_round_trip_scored(world):
    """``audio_roundtrip`` (a model's codec applied to the real sound) is scored like generated
    sound: the ceiling beside the model's own onsets. A lossless codec reproduces every onset,
    one that returns silence none; a model without the method has no such entry."""
    class Coded(PanoramaModel):
        def __init__(self, pano, gain):
            super().__init__(pano)
            self.gain = gain

        def audio_roundtrip(self, audio):
            return (np.asarray(audio, np.float32) * self.gain).astype(np.int16)

    opts = dict(FAST, drift_steps=0)
    exact = run_eval(Coded(world["pano"], 1.0), world["scroll"], cache_dir=world["cache"], baselines=False, **opts)
    rt = exact["details"]["audio"]["codec_roundtrip"]
    assert rt["onset_within_1"] == 1.0 and rt["real_onsets"] == exact["details"]["audio"]["real_onsets"] > 0
    assert set(rt["by_cause"]) == {"attack", "use", "other"}
    quiet = run_eval(Coded(world["pano"], 0.0), world["scroll"], cache_dir=world["cache"], baselines=False, **opts)
    assert quiet["details"]["audio"]["codec_roundtrip"]["onset_within_1"] == 0.0  # silence: no onset survives
    plain = run_eval(PanoramaModel(world["pano"]), world["scroll"], cache_dir=world["cache"], baselines=False, **opts)
    assert "codec_roundtrip" not in plain["details"]["audio"]


def test_action_ignoring_model_is_at_chance(world):
    r = run_eval(PanoramaModel(world["pano"], follow_actions=False), world["scroll"], cache_dir=world["cache"],
                 baselines=False, **dict(FAST, drift_steps=0))
    chance = r["details"]["action_chance"]
    assert abs(r["action_acc_generated"] - chance) < 0.15 < r["action_acc_real"] - chance


def test_per_start_scores_add_up_to_the_report(world):
    """Each point's scores (kept for paired intervals) give back the report's figures exactly."""
    from worldsim.eval.paired import paired_interval, statistic

    r = run_eval(PanoramaModel(world["pano"], follow_actions=False), world["scroll"], cache_dir=world["cache"],
                 **dict(FAST, drift_steps=0))
    ps = r["details"]["per_start"]
    assert len(ps["free_starts"]) == r["meta"]["free_starts"] and len(ps["tf_points"]) == r["meta"]["tf_points"]
    every = {w: np.arange(len(ps["tf_points" if w == "tf" else "free_starts"])) for w in ("tf", "free")}

    def full(metric):
        stat, which = statistic(metric)
        return stat(ps, every[which])

    assert full("psnr_tf") == pytest.approx(r["psnr_tf"], abs=1e-3)
    for h in ("1", "4", "16"):
        assert full(f"psnr_free@{h}") == pytest.approx(r["psnr_free"][h], abs=1e-3)
        assert full(f"sharpness@{h}") == pytest.approx(r["sharpness_ratio"][h], abs=1e-3)
    assert full("action") == pytest.approx(r["action_acc_generated"], abs=1e-9)
    assert full("onsets") == pytest.approx(r["audio_onset_within_1"], abs=1e-9)
    assert full("logmel") == pytest.approx(r["audio_logmel_dist"], abs=1e-3)
    # the baselines keep theirs on the same points: a paired difference against the model exists
    shift = r["details"]["baseline_shift"]["per_start"]
    d, lo, hi = paired_interval(shift, ps, "psnr_free@4")
    assert d == pytest.approx(r["psnr_free"]["4"] - r["baseline_shift"]["psnr_free"]["4"], abs=1e-3) and lo <= d <= hi
    assert paired_interval(ps, ps, "psnr_tf") == (0.0, 0.0, 0.0)
    from worldsim.eval.report import console_summary

    line = next(x for x in console_summary(r).splitlines() if x.startswith("model − shift"))
    assert f"@4:{d:+.2f} [{lo:+.2f}, {hi:+.2f}]" in line


def test_copy_last_on_static_frames_is_perfect(world):
    model = load_model("baseline:copy-last", world["static"])
    r = run_eval(model, world["static"], cache_dir=world["cache"], **FAST)
    assert r["psnr_tf"] == 100.0 and all(v == 100.0 for v in r["psnr_free"].values())
    assert r["action_acc_real"] is None and "fewer than two classes" in r["action_acc_reason"]
    assert r["loop_closure_psnr_memory_on"] is None and "set_memory" in r["loop_closure_reason"]
    assert r["baseline_copy_last"]["psnr_tf"] == 100.0  # the model is the baseline: scored once, reported twice


def test_other_schemas_fall_back(tmp_path):
    from worldsim.actions import ActionSchema

    schema = ActionSchema(buttons=("left", "right", "jump"), groups=(("left", "right", "jump"),))
    rng = np.random.default_rng(0)
    for i in range(2):
        write_episode(tmp_path / "d" / f"ep_{i}", schema, dict(
            frames=rng.integers(0, 256, (120, 32, 32, 3), dtype=np.uint8),
            buttons=np.eye(3, dtype=np.uint8)[rng.integers(0, 3, 120)], axes=np.zeros((120, 0), np.float32)),
            {"tick_rate": 10.0, "map": "g"})
    model = load_model("baseline:shift", tmp_path / "d")  # no turn inputs: behaves as copy-last
    r = run_eval(model, tmp_path / "d", cache_dir=tmp_path / "c", **dict(FAST, horizons=(1, 4), drift_steps=50))
    # 120-step episodes hold no held-out probe block: the probe is reported unchecked, not read
    assert r["action_acc_real"] is None and "no held-out pairs" in r["action_acc_reason"]
    assert r["audio_onset_within_1"] is None and r["audio_reason"] == "the data has no audio"
    assert r["psnr_free"]["4"] == r["baseline_copy_last"]["psnr_free"]["4"] < 100


def test_the_probe_reads_any_games_buttons(world, tmp_path):
    """A game with its own buttons (here a Discrete env: push left / push right / wait, the view
    sliding with them): the probe's classes are its buttons and copy-last is at chance."""
    from worldsim.actions import ActionSchema
    from worldsim.eval.probe import label_actions, probe_classes

    schema = ActionSchema(buttons=("action_0", "action_1", "action_2"), groups=(("action_0", "action_1", "action_2"),))
    assert probe_classes(schema).names == ("none", "action_0", "action_1", "action_2")
    pano = world["pano"]
    for i in range(3):
        rng = np.random.default_rng(20 + i)
        a = rng.integers(0, 3, STEPS)
        off = np.concatenate([[0], np.cumsum(np.array([-8, 8, 0])[a])[:-1]]) + int(rng.integers(PANO_W))
        frames = np.stack([view(pano, int(o)) for o in off])
        write_episode(tmp_path / "g" / f"ep_{i:06d}", schema, dict(
            frames=frames, buttons=np.eye(3, dtype=np.uint8)[a], axes=np.zeros((STEPS, 0), np.float32)),
            {"tick_rate": 20.0, "map": "slide"})
    cls, sign = label_actions(schema, np.eye(3, dtype=np.uint8)[[2, 0, 1]], np.zeros((3, 0)), TINY_PROBE)
    assert cls.tolist() == [3, 1, 2] and sign is None
    model = load_model("baseline:copy-last", tmp_path / "g")
    r = run_eval(model, tmp_path / "g", cache_dir=tmp_path / "c", **dict(FAST, horizons=(1, 4), drift_steps=0))
    assert r["action_acc_real"] > 0.8 and r["action_acc_generated"] < 0.5  # copy-last never moves
    assert r["details"]["probe"]["train_class_counts"]["none"] == 0


def test_deterministic_for_a_seed(world):
    model = load_model("baseline:shift", world["scroll"])
    a = run_eval(model, world["scroll"], cache_dir=world["cache"], baselines=False, **dict(FAST, drift_steps=0))
    b = run_eval(model, world["scroll"], cache_dir=world["cache"], baselines=False, **dict(FAST, drift_steps=0))
    for k in ("psnr_tf", "psnr_free", "ssim_free", "action_acc_generated", "audio_onset_within_1"):
        assert a[k] == b[k]


def _cli(argv):
    p = argparse.ArgumentParser(prog="worldsim eval")
    add_eval_args(p)
    return main_eval(p.parse_args(argv))


@pytest.mark.parametrize("argv, message", [
    (["--horizons", "1,x"], "--horizons"),
    (["--horizons", "0,4"], "--horizons"),
    (["--episodes", "0"], "--episodes"),
    (["--seed", "abc"], "--seed"),
    (["--data", "/nonexistent/worldsim-data"], "no such directory"),
    (["--checkpoint", "/nonexistent/world"], "no such checkpoint"),
    (["--checkpoint", "baseline:nope"], "unknown baseline"),
    (["--horizons", "1,400"], "long enough"),
    (["--loop-data", "/nonexistent/loops"], "worldsim record vizdoom --loops"),
    (["--sampling-steps", "0"], "--sampling-steps"),
    (["--temperature", "0"], "--temperature must be > 0"),
    (["--temperature", "warm"], "--temperature must be a number"),
])
def test_bad_cli_args(world, capsys, argv, message):
    opts = {"--data": str(world["scroll"]), "--checkpoint": "baseline:copy-last", "--cache-dir": str(world["cache"])}
    opts.update(zip(argv[::2], argv[1::2]))
    assert _cli([x for kv in opts.items() for x in kv] + ["--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("worldsim eval: error:") and message in err and "\n" not in err and "Traceback" not in err


def test_an_unwritable_output_fails_before_the_run(world, capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    for opt in ("--json", "--plots"):
        argv = ["--data", str(world["scroll"]), "--checkpoint", "baseline:copy-last", "--no-progress",
                opt, str(blocker / "out")]
        assert _cli(argv) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"worldsim eval: error: {opt} ") and "cannot write" in err and "Traceback" not in err
    assert not (tmp_path / "a_file").read_text()  # nothing written where it could not go


def test_sampling_steps_override_a_worlds_sampler_only(world):
    from worldsim.model.world_model import WorldModel

    shipped = WorldModel.load("default").sampler.cfg
    m = load_model("default", world["scroll"], sampling_steps=shipped.steps + 2)
    assert m.sampler.cfg.steps == shipped.steps + 2 and m.sampler.cfg.shift == shipped.shift
    assert load_model("default", world["scroll"]).sampler.cfg.steps == shipped.steps
    assert load_model("baseline:copy-last", world["scroll"], sampling_steps=3) is not None  # baselines ignore it
    m = load_model("default", world["scroll"], temperature=0.9)  # `--temperature`: only the start noise changes
    assert m.sampler.cfg.temperature == 0.9 and m.sampler.cfg.steps == shipped.steps and shipped.temperature == 1.0


def test_cli_end_to_end_writes_json(world, tmp_path):
    out = tmp_path / "r.json"
    code = (f"import sys, argparse; from worldsim.eval.harness import add_eval_args, main_eval; "
            f"p = argparse.ArgumentParser(); add_eval_args(p); sys.exit(main_eval(p.parse_args(sys.argv[1:])))")
    argv = ["--checkpoint", "baseline:shift", "--data", str(world["scroll"]), "--json", str(out), "--horizons", "1,4",
            "--tf-points", "16", "--free-starts", "4", "--drift-steps", "100", "--probe-pairs", "200", "--no-progress",
            "--cache-dir", str(world["cache"])]
    res = subprocess.run([sys.executable, "-c", code] + argv, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    r = json.loads(out.read_text())
    assert r["meta"]["model"] == "baseline:shift" and set(r["psnr_free"]) == {"1", "4"}
    bad = subprocess.run([sys.executable, "-c", code, "--horizons", "a", "--data", str(world["scroll"])],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and bad.stderr.count("\n") == 1


def test_compare_prints_saved_reports_side_by_side(world, tmp_path, capsys):
    paths = []
    for model, seed in ((PanoramaModel(world["pano"]), 0), (load_model("baseline:copy-last", world["scroll"]), 0),
                        (load_model("baseline:copy-last", world["scroll"]), 1)):
        paths.append(tmp_path / f"r{len(paths)}.json")
        run_eval(model, world["scroll"], cache_dir=world["cache"], json_out=paths[-1], seed=seed, **FAST)
    a, b = (json.loads(p.read_text()) for p in paths[:2])
    assert _cli(["--compare", str(paths[0]), str(paths[1])]) == 0
    table = capsys.readouterr().out
    assert table.startswith("Same held-out data, seed and points in every report.")
    main, _, against = table.partition("minus its baselines")

    def table_rows(text):
        cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in text.splitlines() if line.startswith("| ")]
        return {c[0]: c[1:] for c in cells}

    rows, rows2 = table_rows(main), table_rows(against)
    # first report as it is, the second with its difference, then copy-last and shift of the first, then the target
    tf = rows["PSNR teacher-forced (dB)"]
    # the difference with its paired interval, bold: copy-last is far under the oracle on every resample
    d = b["psnr_tf"] - a["psnr_tf"]
    m = re.fullmatch(rf"{b['psnr_tf']:.2f} \(\*\*{d:+.2f}\*\* \[([-+][\d.]+), ([-+][\d.]+)\]\)", tf[1])
    assert m and float(m[1]) <= round(d, 2) <= float(m[2]) < 0, tf[1]
    assert tf[0] == f"{a['psnr_tf']:.2f}"
    assert tf[2] == f"{a['baseline_copy_last']['psnr_tf']:.2f}" and tf[3] == f"{a['baseline_shift']['psnr_tf']:.2f}"
    assert tf[4].startswith("≥ 26")
    c16 = a["baseline_copy_last"]["psnr_free"]["16"]
    assert rows["PSNR free @ 16"][4].startswith(f"≥ {c16 + 3:.2f}") and rows["sharpness @ 16"][4] == "≥ 0.8"
    assert rows["sound onsets within ±1 tick"][0] == "1.00"  # the oracle reproduces every onset
    assert "95 % paired bootstrap interval" in table
    # the second table: the first report minus its baselines (2 columns), the oracle above both at 1 tick
    assert re.match(r"\*\*\+[\d.]+\*\* \[\+", rows2["PSNR free @ 1"][0]) and len(rows2["PSNR free @ 1"]) == 2
    # reports of other start points are flagged, not silently compared
    assert _cli(["--compare", str(paths[0]), str(paths[2])]) == 0
    assert "not comparable" in capsys.readouterr().out


@pytest.mark.parametrize("content, message", [(None, "no such file"), ("{not json", "not valid JSON"),
                                              ('{"psnr_tf": 1}', "not a `worldsim eval --json` report"),
                                              ("<dir>", "is a directory")])
def test_compare_rejects_what_is_not_a_report(tmp_path, capsys, content, message):
    p = tmp_path / "r.json"
    if content == "<dir>":
        p.mkdir()
    elif content is not None:
        p.write_text(content)
    assert _cli(["--compare", str(p)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("worldsim eval: error: --compare") and message in err and "Traceback" not in err


def test_a_closed_pipe_ends_the_command_quietly(tmp_path):
    """`worldsim eval --compare … | head`: the reader leaves before the table is written."""
    p = tmp_path / "r.json"
    p.write_text(json.dumps({"psnr_tf": 20.0, "psnr_free": {"1": 19.0}, "meta": {"model": "m"}}))
    proc = subprocess.Popen([sys.executable, "-m", "worldsim.cli", "eval", "--compare", str(p)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # before the child has imported anything: its first write meets a closed pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "Broken pipe" not in err, err


def test_prior_view_shows_the_worlds_turn_prior_over_its_own_steps(tmp_path):
    """``prior:WORLD`` (a diagnostic): each tick's picture is the world's turn prior decoded, while the
    world steps on underneath with the same draws — so its sound is the world's, and without a turn
    the prior is the previous tick's latent: the picture the world showed one tick before."""
    from tests.helpers import random_world

    path = str(random_world(tmp_path / "w"))
    world, view = load_model(path), load_model(f"prior:{path}")
    assert view.name.startswith("prior:") and view.context_steps == world.context_steps
    g = np.random.default_rng(0)
    c, (h, w), spec = world.context_steps, world.resolution, world.audio_spec
    ctx = {"frames": g.integers(0, 256, (c, h, w, 3), dtype=np.uint8),
           "buttons": np.zeros((c - 1, world.schema.num_buttons), np.uint8),
           "axes": np.zeros((c - 1, world.schema.num_axes), np.float32),
           "audio": g.integers(-3000, 3000, (c, spec["samples_per_step"], spec["channels"])).astype(np.int16)}
    a, b = world.open(ctx, seed=3), view.open(ctx, seed=3)
    still = (np.zeros(world.schema.num_buttons, np.uint8), np.zeros(world.schema.num_axes, np.float32))
    shown, prior = [], []
    for _ in range(3):
        (f, s), (p, t) = a.step(*still), b.step(*still)
        assert np.array_equal(s, t)  # the world underneath, the same random draws
        shown.append(f)
        prior.append(p)
    assert np.array_equal(prior[1], shown[0]) and np.array_equal(prior[2], shown[1])
    assert not np.array_equal(prior[2], shown[2])  # the dynamics' sample is not its prior
