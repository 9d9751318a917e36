"""The server's save directory (capability ``save``, PROTOCOL.md): sessions kept on the
server's disk under names a client picks, so a game's save menu can SAVE, list (SAVES), LOAD
and DELETE_SAVE them.

Clients name saves, never paths: a name is a bare file name checked against :data:`SAVE_NAME`,
and every error a client reads names the save, not where the server keeps it (:meth:`SaveDir.named`).
The files are ordinary ``.wsnap`` files (worldsim/runtime/snapshot_file.py): ``worldsim info DIR``
reads the same directory.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from engine_bridge import protocol as P
from worldsim.errors import WorldsimError
from worldsim.runtime.session import Session, World
from worldsim.runtime.snapshot_file import SUFFIX, read_header, why_not_resumable

SAVE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a file name in the save dir, never a path


class SaveDir:
    """``root`` holds at most ``max_saves`` saves (overwriting a name is always allowed). Every
    method raises :class:`~engine_bridge.protocol.ProtocolError` with the code a client reads."""

    def __init__(self, root: str | Path, max_saves: int = 256):
        self.root, self.max_saves = Path(root), max_saves

    def path(self, name: Any) -> Path:
        if not isinstance(name, str) or not SAVE_NAME.fullmatch(name):
            raise P.ProtocolError("BAD_REQUEST", "'name' must be 1-64 letters, digits, '_', '-' or '.', starting "
                                                 f"with a letter or digit, got {name!r}")
        return self.root / f"{name}{SUFFIX}"

    @staticmethod
    def named(e: Exception, path: Path) -> str:
        """An error about a save's file as a client may read it: the save's name, not the server's path."""
        return str(e).replace(str(path), path.name[:-len(SUFFIX)])

    def save(self, session: Session, name: Any) -> dict[str, Any]:
        """Write ``session`` as ``name``; the OK body ``{name, tick, bytes}``."""
        path = self.path(name)
        if not path.exists() and len(list(self.root.glob(f"*{SUFFIX}"))) >= self.max_saves:
            raise P.ProtocolError("CAPACITY", f"the server keeps at most {self.max_saves} saves; reuse a name")
        try:
            session.save(path)
        except WorldsimError as e:  # e.g. a full disk: the client hears why, the server goes on
            raise P.ProtocolError("INTERNAL", self.named(e, path)) from None
        return {"name": name, "tick": session.tick, "bytes": path.stat().st_size}

    def check_loadable(self, name: Any) -> Path:
        """The file of save ``name``, before any session is made from it (UNKNOWN_SNAPSHOT if none)."""
        path = self.path(name)
        if not path.is_file():
            raise P.ProtocolError("UNKNOWN_SNAPSHOT", f"no save {name!r} on this server")
        return path

    def load(self, world: World, path: Path, seed: int | None) -> Session:
        try:
            return world.restore(path, seed=seed)
        except WorldsimError as e:  # a file of another world or of older weights
            raise P.ProtocolError("BAD_REQUEST", self.named(e, path)) from None

    def listing(self, world: World) -> list[dict[str, Any]]:
        """``[{name, tick, seed, views, bytes, saved}, ...]`` by name; a file ``world`` cannot
        resume (another world's, other weights', unreadable) is listed with ``error`` instead."""
        out: list[dict[str, Any]] = []
        for path in sorted(self.root.glob(f"*{SUFFIX}")):
            name = path.name[:-len(SUFFIX)]
            if not SAVE_NAME.fullmatch(name):
                continue  # not a name LOAD could ask for
            try:
                h = read_header(path)
            except WorldsimError as e:
                out.append({"name": name, "error": self.named(e, path)})
                continue
            entry = {"name": name, **{k: h[k] for k in ("tick", "seed", "views", "bytes", "saved")}}
            why = why_not_resumable(h, world.name, world.stream_digest)
            if why:
                entry["error"] = why
            out.append(entry)
        return out

    def delete(self, name: Any) -> None:
        path = self.path(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise P.ProtocolError("UNKNOWN_SNAPSHOT", f"no save {name!r} on this server") from None
        except OSError as e:
            raise P.ProtocolError("INTERNAL", f"cannot delete save {name!r}: {e.strerror or e}") from None
