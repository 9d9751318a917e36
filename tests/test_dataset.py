import numpy as np
import pytest
import torch

from worldsim.data import SegmentDataset, collate_segments, open_episodes, split_episodes

from helpers import counting_episode


def test_segments_align_frame_action_audio(tmp_path):
    counting_episode(tmp_path / "ep_000000", steps=40)
    counting_episode(tmp_path / "ep_000001", steps=25)
    ds = SegmentDataset(tmp_path, context=4, horizon=2, stride=3)
    assert len(ds) == len(range(0, 40 - 6 + 1, 3)) + len(range(0, 25 - 6 + 1, 3))
    for i in range(len(ds)):
        seg = ds[i]
        t = torch.arange(seg.start, seg.start + 6)
        assert torch.equal(seg.frames[:, 0, 0, 0].long(), t % 256)
        assert torch.equal(seg.axes[:, 0].long(), t)
        assert torch.equal(seg.audio[:, 0, 0].long(), t * 100)
        assert torch.equal(seg.buttons[:, 0].long(), t % 2)
        assert torch.equal(seg.pose[:, 0], t.float() * 10)
    batch = collate_segments([ds[0], ds[1]])
    assert batch["frames"].shape == (2, 6, 16, 16, 3) and batch["audio"].shape == (2, 6, 1260, 2)
    loader = torch.utils.data.DataLoader(ds, batch_size=4, shuffle=True, collate_fn=collate_segments)
    b = next(iter(loader))
    assert b["buttons"].shape == (4, 6, 9) and b["axes"].dtype == torch.float32


def test_split_by_map_and_within_map(tmp_path):
    for i in range(6):
        counting_episode(tmp_path / f"ep_{i:06d}", steps=10, map_id="MAP01" if i < 4 else "MAP02")
    eps = open_episodes(tmp_path)
    train, held = split_episodes(eps, held_out_maps=["MAP02"])
    assert {e.map_id for e in held} == {"MAP02"} and len(train) == 4
    train, held = split_episodes(eps, held_out_fraction=0.25)
    assert [e.path.name for e in held] == ["ep_000003", "ep_000005"]  # the last of each map
    assert not set(e.path for e in train) & set(e.path for e in held)
    with pytest.raises(ValueError, match="not in the data set"):
        split_episodes(eps, held_out_maps=["MAP09"])


def test_too_short_episodes(tmp_path):
    counting_episode(tmp_path / "ep_000000", steps=5)
    with pytest.raises(ValueError, match="long enough"):
        SegmentDataset(tmp_path, context=8)
