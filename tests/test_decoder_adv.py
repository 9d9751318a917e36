"""The frame_decoder_adv stage: the decoder sharpened for generated latents, the encoder untouched."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import toy_world
from worldsim.cli import main
from worldsim.train.decoder_adv import PixelCritic, edge_energy, previous_in_bank

ROOT = Path(__file__).resolve().parents[1]
ADV = ("frame_decoder_adv_train: {steps: 6, batch: 4, bank_starts: 4, bank_horizon: 3, bank_batch: 2, "
       "save_every: 2, log_every: 2, adv_weight: 0.5, near_weight: 1.0, chroma_weight: 1.0}\n")


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("adv")
    data = toy_world(root / "data", episodes=2, steps=40)
    run = root / "run"
    assert main(["train", "--config", "tiny", "--data", str(data), "--out", str(run), "--quiet"]) == 0
    cfg = root / "adv.yaml"
    cfg.write_text((ROOT / "configs" / "tiny.yaml").read_text() + ADV)
    return data, run, cfg


def _log(run: Path) -> list[dict]:
    return [json.loads(x) for x in (run / "frame_decoder_adv.log.jsonl").read_text().splitlines()]


def test_stage_sharpens_the_decoder_only_and_resumes(trained):
    data, run, cfg = trained
    assert not (run / "decoder_adv").exists()  # off unless the config asks
    before = load_file(str(run / "frame_codec.safetensors"))
    train = ["train", "--config", str(cfg), "--data", str(data), "--out", str(run), "--quiet", "--stage", "frame_decoder_adv"]
    assert main(train + ["--max-steps", "3"]) == 0
    meta = json.loads((run / "frame_codec.json").read_text())["meta"]["decoder_adv"]
    assert meta["steps"] == 3 and meta["of"] == 6 and meta["bank_latents"] == 4 * 3
    assert main(train + ["--resume"]) == 0  # continues at step 3, reusing the bank
    assert min(r["step"] for r in _log(run)[-2:]) > 3 and _log(run)[-1]["step"] == 6
    assert json.loads((run / "frame_codec.json").read_text())["meta"]["decoder_adv"]["steps"] == 6
    after, base = load_file(str(run / "frame_codec.safetensors")), load_file(str(run / "decoder_adv" / "frame_codec.safetensors"))
    for k, v in before.items():
        assert torch.equal(base[k], v), k  # the codec the stage started from is kept as it was
        if not k.startswith("decoder."):  # the encoder and latent statistics: latents stay valid
            assert torch.equal(after[k], v), k
    assert any(not torch.equal(after[k], v) for k, v in before.items() if k.startswith("decoder."))
    rec = _log(run)[-1]
    assert all(np.isfinite(rec[k]) for k in ("rec", "anchor", "chroma", "near", "adv", "critic", "edge_gen", "edge_frozen"))
    # finished: a rerun is skipped; the world still loads and plays
    assert main(train) == 0
    assert _log(run)[-1]["step"] == 6
    from worldsim.model.world_model import WorldModel
    w = WorldModel.load(run)
    st = w.new_state([0])
    from worldsim.data.episode import open_episodes
    e = open_episodes(data)[0]
    c = w.context_steps
    w.prime(st, np.array(e.frames[:c])[None], np.array(e.audio[:c])[None], np.array(e.buttons[:c - 1])[None],
            np.array(e.axes[:c - 1])[None])
    frames, _ = w.step_batch(st, np.asarray(e.buttons[c - 1:c]), np.asarray(e.axes[c - 1:c]))
    assert frames.shape == (1, 64, 64, 3)


def test_stage_needs_a_trained_world(trained, tmp_path, capsys):
    data, _, cfg = trained
    assert main(["train", "--config", str(cfg), "--data", str(data), "--out", str(tmp_path / "none"), "--quiet",
                 "--stage", "frame_decoder_adv"]) != 0
    assert "needs a trained world" in capsys.readouterr().err


def test_critic_and_edge_energy_shapes():
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    assert PixelCritic()(x).shape == (2, 1, 8, 8)
    flat = torch.zeros(1, 3, 8, 8)
    assert edge_energy(flat).item() == 0 and edge_energy(x).item() > 0


def test_previous_in_bank_follows_each_start():
    # two groups as generated_bank writes them: 2 starts × 3 ticks, then 1 start × 3 ticks
    where = np.array([(0, 10, 1), (1, 20, 1), (0, 11, 2), (1, 21, 2), (0, 12, 3), (1, 22, 3),
                      (2, 5, 1), (2, 6, 2), (2, 7, 3)], np.int32)
    prev = previous_in_bank(where)
    assert prev.tolist() == [-1, -1, 0, 1, 2, 3, -1, 6, 7]
    ok = prev >= 0
    assert (where[prev[ok], 0] == where[ok, 0]).all() and (where[prev[ok], 1] == where[ok, 1] - 1).all()


def test_temporal_critic_stage_runs(trained, tmp_path):
    import shutil
    data, run0, cfg0 = trained
    run = tmp_path / "run"
    shutil.copytree(run0, run, ignore=shutil.ignore_patterns("decoder_adv", "frame_decoder_adv.log.jsonl"))
    if (run0 / "decoder_adv").exists():  # start from the decoder the first test started from
        for ext in (".safetensors", ".json"):
            shutil.copyfile(run0 / "decoder_adv" / f"frame_codec{ext}", run / f"frame_codec{ext}")
    cfg = tmp_path / "t.yaml"
    cfg.write_text(cfg0.read_text().replace("chroma_weight: 1.0}", "chroma_weight: 1.0, temporal: true}"))
    assert main(["train", "--config", str(cfg), "--data", str(data), "--out", str(run), "--quiet",
                 "--stage", "frame_decoder_adv"]) == 0
    meta = json.loads((run / "frame_codec.json").read_text())["meta"]["decoder_adv"]
    assert meta["temporal"] is True and meta["steps"] == 6
    assert np.isfinite(_log(run)[-1]["critic"])
    assert PixelCritic(frames=2)(torch.zeros(1, 6, 64, 64)).shape == (1, 1, 8, 8)


def test_export_switches_the_turn_prior_to_pixels_decoded_by_the_base_decoder(trained, tmp_path):
    data, run, cfg = trained
    assert main(["train", "--config", str(cfg), "--data", str(data), "--out", str(run), "--quiet",
                 "--stage", "frame_decoder_adv"]) == 0  # trained here or by an earlier test (then skipped)
    out = tmp_path / "pix"
    assert main(["export", str(run), "--out", str(out), "--prior-space", "pixel"]) == 0
    assert json.loads((out / "dynamics.json").read_text())["config"]["prior_space"] == "pixel"
    prior, base = load_file(str(out / "frame_codec_prior.safetensors")), load_file(str(run / "decoder_adv" / "frame_codec.safetensors"))
    assert all(torch.equal(prior[k], v.to(prior[k].dtype)) for k, v in base.items())  # bf16 copy of the base
    from worldsim.model.world_model import WorldModel
    w = WorldModel.load(out, learned_reaim=False)  # (tiny's run also learned that prior: test_reaim.py)
    assert w.dynamics.reaim.codec is w.prior_codec
    back = tmp_path / "latent"
    assert main(["export", str(out), "--out", str(back), "--prior-space", "latent"]) == 0
    assert not (back / "frame_codec_prior.json").exists() and WorldModel.load(back).dynamics.reaim is None
