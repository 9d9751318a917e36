"""Streaming runtime: worlds hand out sessions that step, batch, snapshot, fork and keep time."""

from worldsim.runtime.session import Chunk, Session, Snapshot, World

__all__ = ["World", "Session", "Chunk", "Snapshot"]
