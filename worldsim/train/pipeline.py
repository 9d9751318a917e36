"""``worldsim train``: the whole recipe from recorded episodes to a world checkpoint.

Stages, each resumable and skipped when already complete: ``frame_codec`` → ``audio_codec``
→ ``frame_decoder`` / ``audio_decoder`` (only when ``frame_codec.decoder_channels`` /
``audio_codec.decoder_widths`` ask for a decoder other than the trained one: a new decoder
against the frozen encoder) → ``latents`` (encode the data once) → ``dynamics`` (its base
schedule, then the config's ``dynamics_rounds``: :mod:`worldsim.train.rounds`) → ``frame_decoder_adv`` (only when
``frame_decoder_adv_train.steps`` > 0: the frame decoder sharpened for the latents this dynamics
generates, :mod:`worldsim.train.decoder_adv`) → ``reaim`` (only when ``reaim_train.steps`` > 0: the
pixel turn prior learned in latent space, :mod:`worldsim.train.reaim_trainer`). The run directory is itself a world
checkpoint (``world.json`` + one safetensors/JSON pair per component), loadable with
``WorldModel.load(run_dir)`` and evaluable with ``worldsim eval --checkpoint run_dir``;
``worldsim export`` writes a bf16 copy (the shipped default world is one).

YAML configs only pick values of the dataclasses next to the code they configure:
``frame_codec`` (:class:`FrameCodecConfig`), ``audio_codec`` (:class:`AudioCodecConfig`),
``dynamics`` (:class:`DynamicsConfig`), ``sampler`` (:class:`FlowSamplerConfig`),
``frame_codec_train``/``audio_codec_train``/``frame_decoder_train``/``audio_decoder_train``
(:class:`CodecTrainConfig`),
``dynamics_train`` (:class:`DynamicsTrainConfig`), ``frame_decoder_adv_train`` (:class:`DecoderAdvConfig`),
``reaim_train`` (:class:`ReaimTrainConfig`),
``dynamics_rounds`` (a list of named
:class:`DynamicsTrainConfig` changes, :mod:`worldsim.train.rounds`), plus ``name``, ``data``, ``heldout``,
``seed``, ``audio`` (bool).
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import torch

from worldsim.errors import WorldsimError, yaml_problem
from worldsim.model.audio_codec import AudioCodecConfig
from worldsim.model.checkpoint import CheckpointError, coerce_value, config_from_dict, config_to_dict, save_component
from worldsim.model.dynamics import DynamicsConfig
from worldsim.model.frame_codec import FrameCodecConfig
from worldsim.model.sampler import FlowSamplerConfig
from worldsim.train.codec_trainer import DECODER_FIELDS, CodecTrainConfig, load_codec, train_codec, train_decoder
from worldsim.train.decoder_adv import DecoderAdvConfig
from worldsim.train.dynamics_trainer import DynamicsTrainConfig
from worldsim.train.turns import camera_turns, fit_turn_weights
from worldsim.train.reaim_trainer import ReaimTrainConfig
from worldsim.train.rounds import DynamicsRound, parse_rounds, train_chain

STAGES = ("frame_codec", "audio_codec", "frame_decoder", "audio_decoder", "latents", "dynamics", "frame_decoder_adv", "reaim")


class TrainConfigError(WorldsimError, ValueError):
    pass


@dataclass
class RunConfig:
    name: str = "world"
    data: str = "data/map01"
    heldout: str | None = None
    seed: int = 0
    audio: bool = True
    frame_codec: FrameCodecConfig = field(default_factory=FrameCodecConfig)
    audio_codec: AudioCodecConfig = field(default_factory=AudioCodecConfig)
    dynamics: DynamicsConfig = field(default_factory=DynamicsConfig)
    sampler: FlowSamplerConfig = field(default_factory=FlowSamplerConfig)
    frame_codec_train: CodecTrainConfig = field(default_factory=CodecTrainConfig)
    audio_codec_train: CodecTrainConfig = field(default_factory=CodecTrainConfig)
    frame_decoder_train: CodecTrainConfig = field(default_factory=CodecTrainConfig)
    audio_decoder_train: CodecTrainConfig = field(default_factory=CodecTrainConfig)
    dynamics_train: DynamicsTrainConfig = field(default_factory=DynamicsTrainConfig)
    dynamics_rounds: list[DynamicsRound] = field(default_factory=list)
    frame_decoder_adv_train: DecoderAdvConfig = field(default_factory=DecoderAdvConfig)  # steps 0: off
    reaim_train: ReaimTrainConfig = field(default_factory=ReaimTrainConfig)  # steps 0: off


def load_run_config(path: str | os.PathLike) -> RunConfig:
    import yaml

    p = Path(path)
    if not p.exists():
        # a bare name picks a shipped config: --config tiny → configs/tiny.yaml
        cand = Path(__file__).resolve().parents[2] / "configs" / f"{p.name}.yaml"
        if p.suffix == "" and cand.exists():
            p = cand
        else:
            raise TrainConfigError(f"{path}: no such config file")
    try:
        raw = yaml.safe_load(p.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise TrainConfigError(f"{p}: not valid YAML ({yaml_problem(e)})") from None
    if not isinstance(raw, dict):
        raise TrainConfigError(f"{p}: the top level must be a mapping")
    fields = {f.name: f for f in dataclasses.fields(RunConfig)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise TrainConfigError(f"{p}: unknown key(s) {', '.join(unknown)}; known: {', '.join(fields)}")
    base = RunConfig()
    hints = typing.get_type_hints(RunConfig)
    kw: dict[str, Any] = {}
    for k, v in raw.items():
        if k == "dynamics_rounds":
            continue  # parsed below, over the finished dynamics_train
        cur = getattr(base, k)
        if dataclasses.is_dataclass(cur):
            try:
                kw[k] = config_from_dict(type(cur), {**config_to_dict(cur), **(v or {})}, where=f"{p}: {k}")
            except CheckpointError as e:
                raise TrainConfigError(str(e)) from None
        else:
            try:
                kw[k] = coerce_value(v, hints[k], f"{p}: {k}")
            except CheckpointError as e:
                raise TrainConfigError(str(e)) from None
    cfg = RunConfig(**kw)  # each section was validated as it was read
    try:
        cfg.dynamics_rounds = parse_rounds(raw.get("dynamics_rounds"), cfg.dynamics_train, str(p))
    except ValueError as e:
        raise TrainConfigError(str(e)) from None
    return cfg


def memory_section(episodes: Sequence[Any], kept: dict | None = None) -> dict[str, Any]:
    """world.json's ``memory``: what the run had (``kept``), with the screen-fixed pixels (the
    weapon) that re-aimed memories keep in place, estimated from recordings with poses."""
    from worldsim.model.view_warp import estimate_overlay, mask_to_runs
    mem = dict(kept or {})
    mask = estimate_overlay(episodes, float(mem.get("fov", 90.0)))
    if mask is not None:
        mem["overlay"] = mask_to_runs(mask)
    return mem


def write_world_json(out: Path, cfg: RunConfig, store_info: dict, extra: dict | None = None) -> None:
    """Write the run's world.json; a ``memory`` section already there is kept unless ``extra`` has one."""
    extra = dict(extra or {})
    if "memory" not in extra and (out / "world.json").exists():
        try:
            old = json.loads((out / "world.json").read_text()).get("memory")
        except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
            old = None
        if old:
            extra["memory"] = old
    world = {"format": "worldsim-world", "version": 1, "name": cfg.name, "wad": store_info.get("wad"),
             "maps": store_info.get("maps"), "tick_rate": store_info.get("tick_rate"),
             "resolution": store_info.get("resolution"), "audio": store_info.get("audio") if cfg.audio else None,
             "schema": store_info.get("schema"), "sampler": config_to_dict(cfg.sampler), **(extra or {})}
    if store_info.get("env_action_space"):  # a Gymnasium recording's own space (worldsim.spaces)
        world["env_action_space"] = store_info["env_action_space"]
    tmp = out / "world.json.partial"
    tmp.write_text(json.dumps(world, indent=1))
    os.replace(tmp, out / "world.json")


def run_training(cfg: RunConfig, out: str | os.PathLike, data: str | None = None, resume: bool = False,
                 max_steps: int | None = None, stages: tuple[str, ...] = STAGES, device: str = "cpu",
                 progress: bool = True, latents: str | os.PathLike | None = None,
                 max_seconds: float | None = None, encode_workers: int = 1) -> dict[str, Any]:
    import torch.distributed as dist

    from worldsim.data.episode import open_episodes
    from worldsim.train.latents import build_latents

    out = Path(out)
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    if latents is not None:
        return _train_on_latents(cfg, out, Path(latents), resume, max_steps, stages, device, progress, max_seconds)
    data_dir = Path(data or cfg.data)
    if not data_dir.is_dir():
        raise TrainConfigError(f"{data_dir}: no such data directory (record one with `worldsim record vizdoom`)")
    episodes = open_episodes(data_dir)
    if not episodes:
        raise TrainConfigError(f"{data_dir}: holds no episodes")
    e0 = episodes[0]
    for e in episodes[1:]:  # one data set, one kind of episode: say which one differs before any training
        for what, a, b in (("action schema", e.schema.to_dict(), e0.schema.to_dict()),
                           ("resolution", e.resolution, e0.resolution), ("audio", e.meta.get("audio"), e0.meta.get("audio"))):
            if a != b:
                raise TrainConfigError(f"{e.path}: its {what} {a} differs from {e0.path.name}'s {b}; "
                                       "train on episodes recorded alike (one directory per kind)")
    res = episodes[0].resolution
    if res[0] != cfg.frame_codec.resolution or res[1] != cfg.frame_codec.resolution:
        raise TrainConfigError(f"data is {res[0]}×{res[1]} but frame_codec.resolution is {cfg.frame_codec.resolution}")
    use_audio = cfg.audio and episodes[0].audio is not None
    if use_audio:
        spec = episodes[0].meta["audio"]
        if spec["samples_per_step"] != cfg.audio_codec.samples or spec["channels"] != cfg.audio_codec.channels:
            raise TrainConfigError(f"data audio is {spec['samples_per_step']}×{spec['channels']} per step, "
                                   f"audio_codec expects {cfg.audio_codec.samples}×{cfg.audio_codec.channels}: set "
                                   f"audio_codec {{samples: {spec['samples_per_step']}, channels: {spec['channels']}}} "
                                   "in the config, with strides whose product divides samples")
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.time()
    report: dict[str, Any] = {}
    # codecs train on rank 0 only (small, fast); other ranks wait at the barrier
    for kind, mcfg, tcfg in (("frame_codec", cfg.frame_codec, cfg.frame_codec_train),
                             ("audio_codec", cfg.audio_codec, cfg.audio_codec_train)):
        if kind not in stages or (kind == "audio_codec" and not use_audio):
            continue
        if rank == 0 and _done(out, kind, tcfg.steps):
            report[kind] = {"steps": tcfg.steps, "skipped": "already trained"}
        elif rank == 0:
            report[kind] = train_codec(kind, episodes, out, tcfg, mcfg, seed=cfg.seed, resume=resume,
                                       max_steps=max_steps, progress=progress, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    for stage, kind, mcfg, tcfg in (("frame_decoder", "frame_codec", cfg.frame_codec, cfg.frame_decoder_train),
                                    ("audio_decoder", "audio_codec", cfg.audio_codec, cfg.audio_decoder_train)):
        if stage not in stages or (kind == "audio_codec" and not use_audio):
            continue
        if rank == 0 and _wants_new_decoder(out, kind, mcfg):
            report[stage] = train_decoder(kind, episodes, out, tcfg, mcfg, seed=cfg.seed, resume=resume,
                                          max_steps=max_steps, progress=progress, device=device)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    if "latents" in stages or "dynamics" in stages:
        if not (out / "frame_codec.json").exists():
            raise TrainConfigError(f"{out}: no trained frame codec yet (run the frame_codec stage first)")
        fc = load_codec(out, "frame_codec").to(device)
        ac = load_codec(out, "audio_codec").to(device) if use_audio and (out / "audio_codec.json").exists() else None
        if rank == 0:
            store = build_latents(episodes, fc, ac, out, out / "latents", device=device, progress=progress,
                                  workers=encode_workers)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
        if rank != 0:
            from worldsim.train.latents import load_latents
            store = load_latents(out / "latents")
        if "dynamics" in stages:
            dcfg = cfg.dynamics
            if not use_audio:
                dcfg = dataclasses.replace(dcfg, audio_channels=0)
            else:
                dcfg = dataclasses.replace(dcfg, audio_channels=ac.cfg.latent_channels, audio_positions=ac.cfg.positions)
            dcfg = dataclasses.replace(dcfg, latent_channels=fc.cfg.latent_channels, latent_size=fc.cfg.latent_size,
                                       frame_size=fc.cfg.resolution, n_buttons=len(store.info["schema"]["buttons"]),
                                       n_axes=len(store.info["schema"]["axes"]))
            if not dcfg.turn_weights and (out / "dynamics.json").exists():
                from worldsim.model.checkpoint import read_component_json
                dcfg = dataclasses.replace(dcfg, turn_weights=tuple(read_component_json(out, "dynamics")["config"]["turn_weights"]))
            elif not dcfg.turn_weights:
                weights = fit_turn_weights(episodes)
                if weights and not camera_turns(episodes, weights, dcfg.px_per_degree):
                    print(f"{out}: the picture does not slide when the player turns: no turn prior")
                    weights = ()
                dcfg = dataclasses.replace(dcfg, turn_weights=weights)
            if "pixel" in [dcfg.prior_space, cfg.dynamics_train.prior_space] + [r.train.prior_space for r in cfg.dynamics_rounds]:
                # the pixel prior's re-aim keeps world.json's screen-fixed pixels, as the runtime's does
                if rank == 0:
                    write_world_json(out, cfg, store.info, {"memory": memory_section(episodes)})
                if dist.is_available() and dist.is_initialized():
                    dist.barrier()
            on_eval = None
            if cfg.heldout and Path(cfg.heldout).is_dir() and cfg.dynamics_train.eval_every:
                on_eval = lambda step: quick_eval(out, cfg, store.info, step)  # noqa: E731
            report.update(train_chain(store, out, dcfg, cfg.dynamics_train, cfg.dynamics_rounds, cfg.seed, resume,
                                      max_steps, progress, device, on_eval, max_seconds, TrainConfigError))
            if rank == 0:
                write_world_json(out, cfg, store.info, {"training": {"wall_s_this_run": round(time.time() - t0, 1)},
                                                        "memory": memory_section(episodes)})
                from worldsim.runtime.starts import write_starts
                write_starts(episodes, out, dcfg.context - 1)
    if "frame_decoder_adv" in stages and cfg.frame_decoder_adv_train.steps > 0:
        if rank == 0:  # last: it sharpens the decoder for the latents this run's dynamics generates
            from worldsim.train.decoder_adv import run_stage
            try:
                report["frame_decoder_adv"] = run_stage(out, episodes, cfg.frame_decoder_adv_train, cfg.seed, resume,
                                                        max_steps, progress, device)
            except ValueError as e:
                raise TrainConfigError(str(e)) from None
        if dist.is_available() and dist.is_initialized():
            dist.barrier()
    if "reaim" in stages and cfg.reaim_train.steps > 0 and rank == 0:
        from worldsim.train.latents import load_latents
        if not (out / "latents" / "index.json").exists():
            raise TrainConfigError(f"{out}: the reaim stage reads the run's latent store (run the latents stage first)")
        from worldsim.model.checkpoint import read_component_json
        if (out / "dynamics.json").exists() and not read_component_json(out, "dynamics")["config"].get("turn_weights"):
            # a game whose picture does not turn (no turn prior to learn): nothing to do, as for the slide
            report["reaim"] = {"skipped": "no turn prior: the recordings show no turning"}
        else:
            report["reaim"] = _reaim_stage(cfg, out, load_latents(out / "latents"), resume, max_steps, progress, device)
    if "reaim" in stages and cfg.reaim_train.steps > 0 and dist.is_available() and dist.is_initialized():
        dist.barrier()
    return report


def _reaim_stage(cfg: RunConfig, out: Path, store: Any, resume: bool, max_steps: int | None, progress: bool,
                 device: str) -> dict[str, Any]:
    from worldsim.train.reaim_trainer import train_reaim
    if not (out / "dynamics.json").exists():
        raise TrainConfigError(f"{out}: the reaim stage needs a trained world (run the dynamics stage first)")
    try:
        return train_reaim(out, store, cfg.reaim_train, cfg.seed, resume, max_steps, progress, device)
    except ValueError as e:
        raise TrainConfigError(str(e)) from None


def _train_on_latents(cfg: RunConfig, out: Path, latents: Path, resume: bool, max_steps: int | None,
                      stages: tuple[str, ...], device: str, progress: bool, max_seconds: float | None) -> dict[str, Any]:
    """The dynamics stage (and/or the reaim stage) alone, on a prebuilt latent store (a machine that
    has the store but not the recordings, e.g. a lent GPU). The run directory must already hold the
    codecs the store was encoded with, and the dynamics' turn weights (its dynamics.json)."""
    import torch.distributed as dist

    from worldsim.model.checkpoint import read_component_json
    from worldsim.train.latents import load_latents

    if not stages or not set(stages) <= {"dynamics", "reaim"}:
        raise TrainConfigError("--latents trains the dynamics and reaim stages only: add --stage dynamics "
                               "and/or --stage reaim")
    if not (latents / "index.json").exists():
        raise TrainConfigError(f"{latents}: not a latent store (no index.json)")
    for name in ("frame_codec", "dynamics"):
        if not (out / f"{name}.json").exists():
            raise TrainConfigError(f"{out}: --latents needs the run's {name}.json (resume a run that has one)")
    store = load_latents(latents)
    fc = config_from_dict(FrameCodecConfig, read_component_json(out, "frame_codec")["config"], f"{out}/frame_codec.json")
    if tuple(store.frames.shape[1:]) != (fc.latent_channels, fc.latent_size, fc.latent_size):
        raise TrainConfigError(f"{latents}: latents {tuple(store.frames.shape[1:])} do not fit {out}'s frame codec")
    rank0 = not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0
    report: dict[str, Any] = {}
    if "dynamics" in stages:
        # the architecture is the run's; the config may only switch the memory input on (and its
        # dynamics_train or a round the turn prior: prior_space)
        prev = read_component_json(out, "dynamics")["config"]
        prev["memory_input"] = bool(prev.get("memory_input")) or cfg.dynamics.memory_input
        dcfg = config_from_dict(DynamicsConfig, prev, where=f"{out}/dynamics.json")
        report = train_chain(store, out, dcfg, cfg.dynamics_train, cfg.dynamics_rounds, cfg.seed, resume, max_steps,
                             progress, device, None, max_seconds, TrainConfigError)
        if rank0:
            kept = json.loads((out / "world.json").read_text()) if (out / "world.json").exists() else {}
            write_world_json(out, cfg, store.info, {k: v for k, v in kept.items() if k in ("memory", "training")})
    if "reaim" in stages and cfg.reaim_train.steps > 0 and rank0:
        report["reaim"] = _reaim_stage(cfg, out, store, resume, max_steps, progress, device)
    return report


def quick_eval(out: Path, cfg: RunConfig, store_info: dict, step: int) -> dict[str, Any]:
    """A small `worldsim eval` on held-out episodes during training (sharpness and probe included),
    appended to ``<out>/evals.jsonl``; the full eval stays a separate command."""
    from worldsim.eval.harness import run_eval
    from worldsim.model.world_model import WorldModel

    write_world_json(out, cfg, store_info)
    model = WorldModel.load(out)
    r = run_eval(model, cfg.heldout, horizons=(1, 16, 64), episodes=2, tf_points=96, free_starts=8, drift_steps=0,
                 progress=False, baselines=False, threads=None)
    rec = {"step": step, "psnr_tf": r["psnr_tf"], "psnr_free": r["psnr_free"], "sharpness": r["sharpness_ratio"],
           "action_acc": r["action_acc_generated"], "action_acc_real": r["action_acc_real"],
           "audio_onset_within_1": r["audio_onset_within_1"], "ms_per_step": r["ms_per_step"]}
    with open(out / "evals.jsonl", "a") as f:
        f.write(json.dumps(rec) + "\n")
    return rec


def _wants_new_decoder(out: Path, kind: str, mcfg: FrameCodecConfig | AudioCodecConfig) -> bool:
    """The config names a decoder other than the trained codec's (or one is half trained)."""
    names = DECODER_FIELDS[kind]
    if not getattr(mcfg, names[0]):
        return False
    if not (out / f"{kind}.json").exists():
        raise TrainConfigError(f"{out}: no trained {kind.replace('_', ' ')} yet (run the {kind} stage first)")
    from worldsim.model.checkpoint import read_component_json
    trained = read_component_json(out, kind)["config"]
    default = type(mcfg)()  # a checkpoint written before a field existed has its default
    return any(_plain(trained.get(n, getattr(default, n))) != _plain(getattr(mcfg, n)) for n in names)


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, (list, tuple)) else v


def _done(out: Path, kind: str, steps: int) -> bool:
    """A finished stage is skipped (resumed at its final step) rather than retrained."""
    f = out / f"{kind}.json"
    if not f.exists():
        return False
    try:
        return int(json.loads(f.read_text())["meta"]["train_steps"]) >= steps
    except (KeyError, ValueError, json.JSONDecodeError):
        return False


def export_world(run_dir: str | os.PathLike, out: str | os.PathLike, dtype: torch.dtype = torch.bfloat16,
                 starts_data: str | os.PathLike | None = None, n_starts: int = 8, prior_space: str | None = None) -> Path:
    """Copy a run's world checkpoint (weights cast to ``dtype``; no optimizer state or latents),
    with start contexts taken from ``starts_data`` (else copied from the run when it has them).
    ``prior_space`` switches the dynamics' turn prior (same weights); for ``pixel`` the prior
    decodes with the run's ``frame_codec_prior``, else the codec its decoder stage started from
    (``decoder_adv/``), else the frame codec."""
    from worldsim.model.world_model import PRIOR_CODEC, REAIM, WorldModel
    from worldsim.train.decoder_adv import STAGE_DIR, base_codec

    run_dir, out = Path(run_dir), Path(out)
    model = WorldModel.load(run_dir)  # validates everything first
    if prior_space is not None:
        model.dynamics.cfg = dataclasses.replace(model.dynamics.cfg, prior_space=prior_space)
        if prior_space == "latent":
            model.prior_codec = model.reaim_net = None
        elif model.prior_codec is None:
            model.prior_codec = base_codec(run_dir)
    tmp = out.with_name(out.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for name, mod in (("frame_codec", model.frame_codec), ("audio_codec", model.audio_codec), ("dynamics", model.dynamics),
                      (PRIOR_CODEC, model.prior_codec), (REAIM, model.reaim_net)):
        if mod is None:
            continue
        src = run_dir / f"{name}.json"
        if name == PRIOR_CODEC and not src.exists():  # the codec the decoder stage started from
            src = run_dir / STAGE_DIR / "frame_codec.json"
        meta = json.loads(src.read_text()).get("meta", {})
        save_component(tmp, name, mod, mod.cfg, meta=meta, dtype=dtype)
    shutil.copy(run_dir / "world.json", tmp / "world.json")
    from worldsim.runtime.starts import STARTS_FILE, encode_starts, write_starts
    if starts_data is not None:
        from worldsim.data.episode import open_episodes
        eps = open_episodes(starts_data)
        write_starts(eps, tmp, model.context_steps, n=n_starts)
        world = json.loads((tmp / "world.json").read_text())
        world["memory"] = memory_section(eps, world.get("memory"))
        (tmp / "world.json").write_text(json.dumps(world, indent=1))
    elif (run_dir / STARTS_FILE).exists():
        shutil.copy(run_dir / STARTS_FILE, tmp / STARTS_FILE)
    if (tmp / STARTS_FILE).exists():  # with their latents, by the exported (cast) codecs: no encoding at open
        encode_starts(tmp)
    if out.exists():
        shutil.rmtree(out)
    os.replace(tmp, out)
    return out
