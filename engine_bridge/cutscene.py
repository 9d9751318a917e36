"""NPC cutscenes: a timeline of per-NPC actions played through the bridge, one MP4 + WAV per NPC.

Timeline file (YAML or JSON)::

    ticks: 120                 # length of the cutscene
    npcs:
      guard:
        seed: 1                # optional, default: the NPC's index
        start: door.png        # optional start image (relative to the timeline file)
        actions:               # segments [from, to) in ticks; later segments win on overlap
          - {from: 0,  to: 40, keys: [forward]}
          - {from: 40, to: 80, keys: [turn_left, run], mouse: [0, 0]}
      imp:
        actions: [{from: 0, to: 120, keys: [attack]}]

All NPC sessions are opened in lockstep mode on one connection and every tick's STEPs are
sent together, so the server runs them as one batched forward (``BridgeClient.step_many``).
Video is encoded with PyAV (H.264 with the sound muxed as AAC); the sound is also written as
16-bit PCM WAV for engines that import audio separately.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from worldsim.errors import WorldsimError, yaml_problem
from worldsim.play.media import write_mp4, write_wav

MAX_TICKS = 100_000


class TimelineError(WorldsimError, ValueError):
    pass


@dataclass
class Segment:
    start: int
    stop: int
    action: dict[str, Any]


@dataclass
class NPC:
    name: str
    seed: int
    start: np.ndarray | None = None
    segments: list[Segment] = field(default_factory=list)

    def action_at(self, tick: int) -> dict[str, Any]:
        act: dict[str, Any] = {}
        for s in self.segments:  # later segments win
            if s.start <= tick < s.stop:
                act = s.action
        return act


@dataclass
class Timeline:
    ticks: int
    npcs: list[NPC]


def load_timeline(path: str | Path, buttons: list[str] | None = None) -> Timeline:
    """Parse and validate a timeline; every mistake names the file and the entry."""
    import yaml

    p = Path(path)
    if not p.is_file():
        raise TimelineError(f"{p}: no such timeline file")
    try:
        raw = json.loads(p.read_text()) if p.suffix == ".json" else yaml.safe_load(p.read_text())
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as e:
        why = e if isinstance(e, json.JSONDecodeError) else yaml_problem(e)
        raise TimelineError(f"{p}: not valid {'JSON' if p.suffix == '.json' else 'YAML'} ({why})") from None
    if not isinstance(raw, dict):
        raise TimelineError(f"{p}: the top level must be a mapping with 'ticks' and 'npcs'")
    ticks = raw.get("ticks")
    if not isinstance(ticks, int) or isinstance(ticks, bool) or not 1 <= ticks <= MAX_TICKS:
        raise TimelineError(f"{p}: 'ticks' must be an integer in 1..{MAX_TICKS}, got {ticks!r}")
    npcs_raw = raw.get("npcs")
    if not isinstance(npcs_raw, dict) or not npcs_raw:
        raise TimelineError(f"{p}: 'npcs' must be a non-empty mapping of name -> {{actions, seed, start}}")
    npcs = []
    for i, (name, spec) in enumerate(npcs_raw.items()):
        where = f"{p}: npcs.{name}"
        if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
            raise TimelineError(f"{where}: NPC names may hold letters, digits, '_' and '-' only (they name files)")
        spec = spec or {}
        if not isinstance(spec, dict):
            raise TimelineError(f"{where}: must be a mapping")
        unknown = set(spec) - {"seed", "start", "actions"}
        if unknown:
            raise TimelineError(f"{where}: unknown key(s) {sorted(unknown)}; known: seed, start, actions")
        seed = spec.get("seed", i)
        if not isinstance(seed, int) or isinstance(seed, bool):
            raise TimelineError(f"{where}.seed: must be an integer")
        npc = NPC(name, seed, _start_image(p, spec.get("start"), where))
        acts = spec.get("actions", [])
        if not isinstance(acts, list):
            raise TimelineError(f"{where}.actions: must be a list of {{from, to, keys, mouse}}")
        for j, a in enumerate(acts):
            npc.segments.append(_segment(a, f"{where}.actions[{j}]", ticks, buttons))
        npcs.append(npc)
    return Timeline(ticks, npcs)


def _segment(a: Any, where: str, ticks: int, buttons: list[str] | None) -> Segment:
    if not isinstance(a, dict):
        raise TimelineError(f"{where}: must be a mapping {{from, to, keys, mouse}}")
    unknown = set(a) - {"from", "to", "keys", "mouse"}
    if unknown:
        raise TimelineError(f"{where}: unknown key(s) {sorted(unknown)}")
    lo, hi = a.get("from", 0), a.get("to", ticks)
    if not all(isinstance(x, int) and not isinstance(x, bool) for x in (lo, hi)) or not 0 <= lo < hi:
        raise TimelineError(f"{where}: need integers 0 <= from < to, got from={lo!r} to={hi!r}")
    keys = a.get("keys", [])
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise TimelineError(f"{where}.keys: must be a list of button names")
    if buttons is not None:
        bad = [k for k in keys if k not in buttons]
        if bad:
            raise TimelineError(f"{where}.keys: unknown button(s) {bad}; this world has {buttons}")
    act: dict[str, Any] = {"keys": keys}
    if "mouse" in a:
        m = a["mouse"]
        if not (isinstance(m, list) and len(m) == 2 and all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in m)):
            raise TimelineError(f"{where}.mouse: must be [dx, dy] in degrees per tick")
        act["mouse"] = [float(m[0]), float(m[1])]
    return Segment(lo, hi, act)


def _start_image(timeline: Path, start: Any, where: str) -> np.ndarray | None:
    if start is None:
        return None
    if not isinstance(start, str):
        raise TimelineError(f"{where}.start: must be an image file path")
    from worldsim.play.sources import read_image

    f = (timeline.parent / start) if not Path(start).is_absolute() else Path(start)
    try:
        return read_image(f)
    except WorldsimError:
        raise TimelineError(f"{where}.start: {f} is not a readable image") from None


def play_timeline(tl: Timeline, client, progress: bool = False) -> dict[str, dict[str, Any]]:
    """Open one lockstep session per NPC, step them together for ``tl.ticks`` ticks; returns
    ``{name: {"frames": (T, H, W, 3) uint8, "audio": (S, C) int16 | None}}``."""
    res = client.world["resolution"]
    sids = {}
    for npc in tl.npcs:
        start = None
        if npc.start is not None:
            import cv2
            start = cv2.resize(npc.start, (res[1], res[0]), interpolation=cv2.INTER_AREA)
        sids[npc.name] = client.open(mode="lockstep", seed=npc.seed, start=start)
    frames: dict[str, list] = {n.name: [] for n in tl.npcs}
    audio: dict[str, list] = {n.name: [] for n in tl.npcs}
    rng = range(tl.ticks)
    if progress:
        from tqdm import tqdm
        rng = tqdm(rng, desc="cutscene", unit="tick")
    try:
        for t in rng:
            obs = client.step_many({sids[n.name]: n.action_at(t) for n in tl.npcs})
            for n in tl.npcs:
                o = obs[sids[n.name]]
                frames[n.name].append(o.frame)
                if o.audio is not None:
                    audio[n.name].append(o.audio)
    finally:
        for sid in sids.values():
            try:
                client.close_session(sid)
            except Exception:  # the server frees silent sessions anyway
                pass
    return {n: {"frames": np.stack(frames[n]), "audio": np.concatenate(audio[n]) if audio[n] else None} for n in frames}


def render_cutscene(timeline: str | Path, out: str | Path, client, scale: int = 4,
                    progress: bool = False) -> dict[str, list[str]]:
    """Play ``timeline`` through ``client`` and write ``<out>/<npc>.mp4`` (+ ``.wav``)."""
    world = client.world  # first: a recording-only server has no world (and no schema)
    tl = load_timeline(timeline, list(client.welcome["schema"]["buttons"]))
    result = play_timeline(tl, client, progress=progress)
    return {name: write_npc_media(out, name, r["frames"], r["audio"], world, scale=scale)
            for name, r in result.items()}


def write_npc_media(out: str | Path, name: str, frames: np.ndarray, audio: np.ndarray | None,
                    world: dict[str, Any], scale: int = 4) -> list[str]:
    """``<out>/<name>.mp4`` (+ ``.wav`` when there is sound), timed by the WELCOME's world spec."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    files = [out / f"{name}.mp4"]
    spec = world.get("audio") or None
    write_mp4(files[0], frames, float(world["tick_rate"]), scale=scale, audio=audio, audio_spec=spec)
    rate = (spec or {}).get("sample_rate")
    if audio is not None and rate:
        files.append(out / f"{name}.wav")
        write_wav(files[1], audio, rate)
    return [str(f) for f in files]
