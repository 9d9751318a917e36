"""The frame_decoder_adv stage: the decoder sharpened for generated latents, the encoder untouched."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.helpers import toy_world
from worldsim.cli import main
from worldsim.train.decoder_adv import PixelCritic, edge_energy

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
