"""Episodes on disk (see FORMAT.md), training segments and data set summaries."""

from worldsim.data.episode import (
    Episode, EpisodeFormatError, EpisodeWriter, FORMAT_VERSION, list_episodes, open_episodes, write_episode,
)
from worldsim.data.dataset import Segment, SegmentDataset, collate_segments, split_episodes

__all__ = [
    "Episode", "EpisodeFormatError", "EpisodeWriter", "FORMAT_VERSION", "list_episodes", "open_episodes",
    "write_episode", "Segment", "SegmentDataset", "collate_segments", "split_episodes",
]
