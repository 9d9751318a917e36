import json

import numpy as np
import pytest

from worldsim.actions import VIZDOOM_SCHEMA
from worldsim.cli import main
from worldsim.data import Episode, EpisodeFormatError, open_episodes, write_episode
from worldsim.data.info import data_info

from helpers import counting_episode


def test_roundtrip(tmp_path):
    p = counting_episode(tmp_path / "ep_000000", steps=30)
    e = Episode(p)
    assert len(e) == 30 and e.map_id == "MAP01" and e.schema == VIZDOOM_SCHEMA
    assert e.frames.shape == (30, 16, 16, 3) and e.frames.dtype == np.uint8
    assert isinstance(e.frames, np.memmap)  # random access without loading the file
    assert e.audio.shape == (30, 1260, 2) and e.audio.dtype == np.int16
    assert e.frames[7, 0, 0, 0] == 7 and e.axes[7, 0] == 7 and e.audio[7, 0, 0] == 700
    assert e.depth is None and e.reward is None
    e.verify()


def test_writer_rejects_bad_shapes(tmp_path):
    with pytest.raises(EpisodeFormatError, match="buttons"):
        write_episode(tmp_path / "e", VIZDOOM_SCHEMA, {"frames": np.zeros((4, 8, 8, 3), np.uint8),
                                                        "buttons": np.zeros((4, 3)), "axes": np.zeros((4, 2))},
                      {"tick_rate": 1})


def _corrupt(tmp_path, how):
    p = counting_episode(tmp_path / "ep_000000", steps=30)
    if how == "no_meta":
        (p / "meta.json").unlink()
    elif how == "bad_json":
        (p / "meta.json").write_text("{not json")
    elif how == "version":
        m = json.loads((p / "meta.json").read_text())
        m["format_version"] = 99
        (p / "meta.json").write_text(json.dumps(m))
    elif how == "truncated":
        f = p / "frames.npy"
        f.write_bytes(f.read_bytes()[:-100])
    elif how == "missing_field":
        (p / "buttons.npy").unlink()
    elif how == "wrong_dtype":
        np.save(p / "axes.npy", np.zeros((30, 2), np.float64))
    elif how == "wrong_steps":
        np.save(p / "pose.npy", np.zeros((29, 5), np.float32))
    elif how == "garbage":
        (p / "audio.npy").write_bytes(b"this is not numpy")
    return p


@pytest.mark.parametrize("how, file, match", [
    ("no_meta", "meta.json", "missing"),
    ("bad_json", "meta.json", "not valid JSON"),
    ("version", "meta.json", "format version 99 was written by a newer worldsim"),
    ("truncated", "frames.npy", "truncated"),
    ("missing_field", "buttons.npy", "missing required field"),
    ("wrong_dtype", "axes.npy", "dtype float64, expected float32"),
    ("wrong_steps", "pose.npy", r"shape \(29, 5\), expected \(30, 5\)"),
    ("garbage", "audio.npy", "not a readable .npy"),
])
def test_corrupt_files_give_clear_errors(tmp_path, how, file, match):
    p = _corrupt(tmp_path, how)
    with pytest.raises(EpisodeFormatError, match=match) as ei:
        Episode(p)
    assert ei.value.path.endswith(file)


def test_checksum_detects_flipped_bytes(tmp_path):
    p = counting_episode(tmp_path / "ep_000000", steps=30)
    f = p / "frames.npy"
    raw = bytearray(f.read_bytes())
    raw[-5] ^= 0xFF  # same size, different content
    f.write_bytes(bytes(raw))
    Episode(p)  # opening is cheap and does not read everything...
    with pytest.raises(EpisodeFormatError, match="checksum mismatch"):
        Episode(p).verify()  # ...verify does
    assert main(["data", "info", str(tmp_path), "--verify"]) == 2


def test_hand_written_episode_as_in_format_md(tmp_path, capsys):
    """The FORMAT.md recipe, without worldsim's writer, is accepted by `worldsim data info`."""
    ep = tmp_path / "mydata" / "ep_000000"
    ep.mkdir(parents=True)
    T = 100
    np.save(ep / "frames.npy", np.zeros((T, 64, 64, 3), np.uint8))
    np.save(ep / "buttons.npy", np.zeros((T, 1), np.uint8))
    np.save(ep / "axes.npy", np.zeros((T, 0), np.float32))
    (ep / "meta.json").write_text(json.dumps({
        "format": "worldsim-episode", "format_version": 1, "steps": T,
        "resolution": [64, 64], "tick_rate": 10,
        "action_schema": {"buttons": ["jump"], "axes": []}, "map": "level1"}))
    out = tmp_path / "info.json"
    assert main(["data", "info", str(tmp_path / "mydata"), "--json", str(out)]) == 0
    info = json.loads(out.read_text())
    assert info["steps"] == 100 and info["episodes"] == 1 and info["maps"] == {"level1": 100}
    assert info["audio_nonsilent_fraction"] is None


def test_data_info_keys(tmp_path):
    for i in range(3):
        counting_episode(tmp_path / f"ep_{i:06d}", steps=50, map_id=f"MAP0{i % 2 + 1}")
    info = data_info(tmp_path)
    for key in ("steps", "episodes", "maps", "audio_nonsilent_fraction", "coverage_cells_per_1k",
                "revisit_fraction", "record_steps_per_s"):
        assert key in info
    assert info["steps"] == 150 and info["episodes"] == 3 and set(info["maps"]) == {"MAP01", "MAP02"}
    assert 0 < info["audio_nonsilent_fraction"] < 1  # counting audio: silent for the first steps only
    assert len(open_episodes(tmp_path)) == 3
    # the printed summary says how often each button is held and whether the schemas agree
    from worldsim.data.info import format_info
    text = format_info(info)
    assert "actions         9 buttons (forward 50%, back 0%," in text and "2 axes (mouse_dx, mouse_dy)" in text
    assert info["schemas_agree"] and "WARNING" not in text
    from tests.helpers import plain_episodes
    from worldsim.actions import ActionSchema
    plain_episodes(tmp_path / "other", ActionSchema(buttons=("jump",)), steps=8)
    import shutil
    shutil.move(str(tmp_path / "other" / "ep_000000"), str(tmp_path / "ep_000009"))
    mixed = data_info(tmp_path)
    assert not mixed["schemas_agree"] and "different action schemas" in format_info(mixed)


def test_missing_and_empty_dirs(tmp_path):
    assert main(["data", "info", str(tmp_path / "nope")]) == 2
    assert main(["data", "info", str(tmp_path)]) == 2
