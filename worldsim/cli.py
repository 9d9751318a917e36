"""The `worldsim` command: record, data, train, export, eval, bench, play, serve, keys, cutscene, info.

Each subcommand parses its own flags here and calls into the module that owns the work.
Expected failures (bad flags, files, configs, actions) print one clear line and exit 2;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Callable, Sequence

from worldsim import __version__
from worldsim.actions import VIZDOOM_SCHEMA, ActionError, load_script
from worldsim.device import DEVICE_HELP, device_arg
from worldsim.errors import WorldsimError

EXIT_USAGE = 2


class CLIError(WorldsimError):
    """A user error the CLI reports in one line."""


def _positive_int(s: str) -> int:
    try:
        v = int(s)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {s!r}") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {v}")
    return v


# ----- record -------------------------------------------------------------------------
def _add_record(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("record", help="record real gameplay into the episode format")
    rs = p.add_subparsers(dest="source", metavar="SOURCE")
    p.set_defaults(group=p)  # a bare `worldsim record` prints its sources (_run_record)
    v = rs.add_parser("vizdoom", help="DOOM (Freedoom) in ViZDoom: frames, audio, pose, depth, keyboard+mouse")
    v.add_argument("--wad", default="freedoom2", choices=["freedoom2", "freedoom1"])
    v.add_argument("--map", dest="maps", action="append", metavar="MAP",
                   help="map to record (repeat for several; episodes rotate through them). Default MAP01 "
                        "(freedoom1 maps are named E1M1 …)")
    v.add_argument("--steps", type=_positive_int, default=3000, help="total steps to record")
    v.add_argument("--episode-steps", type=_positive_int, default=2000, help="steps per episode (death ends one early)")
    v.add_argument("--seed", type=int, default=0)
    v.add_argument("--out", required=True, type=Path, help="data set directory (appends if it has episodes)")
    v.add_argument("--resolution", type=_positive_int, default=64, help="stored square frame size")
    v.add_argument("--frame-skip", type=_positive_int, default=2, help="game tics per step (35 tics = 1 s)")
    v.add_argument("--skill", type=int, default=1, choices=range(1, 6))
    v.add_argument("--sample-rate", type=int, default=22050, choices=[11025, 22050, 44100])
    v.add_argument("--mono", action="store_true", help="store one audio channel instead of two")
    v.add_argument("--no-audio", action="store_true", help="record without sound (no libopenal1 needed)")
    v.add_argument("--no-depth", action="store_true", help="do not store the depth buffer")
    v.add_argument("--script", type=Path, help="replay this JSON action script instead of the explorer")
    v.add_argument("--loops", action="store_true",
                   help="loop-closure data: each episode explores, then leaves a place and returns to it "
                        "(360° spin, out and back, square); see worldsim/record/loops.py")
    v.add_argument("--quiet", action="store_true", help="no progress bar")
    g = rs.add_parser("gym", help="any Gymnasium env with render_mode='rgb_array'")
    g.add_argument("--env", required=True, help="env id, e.g. CartPole-v1")
    g.add_argument("--steps", type=_positive_int, default=1000)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--out", required=True, type=Path)
    g.add_argument("--resolution", type=_positive_int, default=64)
    g.add_argument("--policy", default="random", help="'random' or 'module:function(obs, action_space)'")
    g.add_argument("--max-episode-steps", type=_positive_int)
    g.add_argument("--script", type=Path, help="replay this JSON action script (in the env's derived schema)")
    g.add_argument("--quiet", action="store_true")
    b = rs.add_parser("bridge", help="your engine's gameplay, sent through the bridge (REC_OPEN/REC_STEP/REC_CLOSE, "
                                     "engine_bridge/PROTOCOL.md)")
    b.add_argument("--out", required=True, type=Path, help="data set directory (appends if it has episodes)")
    b.add_argument("--bind", default="tcp://127.0.0.1:5560", help="ZeroMQ endpoint (loopback unless told otherwise)")
    b.add_argument("--resolution", type=_positive_int, default=64, help="stored square frame size (frames are resized)")
    b.add_argument("--episode-steps", type=_positive_int, default=2000,
                   help="a longer recording continues in the next episode")
    b.add_argument("--max-open", type=_positive_int, default=16, help="recordings open at once")
    b.add_argument("--max-message-mb", type=_positive_int, default=4,
                   help="largest message taken, MiB (a 1280×720 RGB frame is 2.6 MiB; frames are resized anyway)")
    b.add_argument("--curve-keys", type=Path, help="directory from `worldsim keys`: CURVE encryption + client allow-list")
    b.add_argument("--heartbeat-timeout-ms", type=_positive_int, default=5000)
    b.add_argument("--resume-ttl-ms", type=_positive_int, default=30000)


def _group_help(args: argparse.Namespace) -> int:
    """A command group named without its subcommand: its help (the subcommands), as a usage error."""
    args.group.print_help(sys.stderr)
    return EXIT_USAGE


def _run_record(args: argparse.Namespace) -> int:
    if args.source is None:
        return _group_help(args)
    if args.source == "bridge":
        return _run_record_bridge(args)
    if args.source == "vizdoom":
        from worldsim.record.doom import DoomConfig
        from worldsim.record.vizdoom_recorder import RecordConfig, record_vizdoom

        maps = args.maps or (["MAP01"] if args.wad == "freedoom2" else ["E1M1"])
        doom = DoomConfig(wad=args.wad, frame_skip=args.frame_skip, resolution=args.resolution,
                          audio=not args.no_audio, sample_rate=args.sample_rate, stereo=not args.mono,
                          depth=not args.no_depth, skill=args.skill)
        script = load_script(args.script, VIZDOOM_SCHEMA) if args.script else None
        if script is not None and not script:
            raise CLIError(f"{args.script}: the action script is empty")
        if script is not None and args.loops:
            raise CLIError("--loops and --script are exclusive (the loop patterns are the script)")
        s = record_vizdoom(RecordConfig(out=args.out, maps=maps, steps=args.steps, episode_steps=args.episode_steps,
                                        seed=args.seed, doom=doom, script=script, loops=args.loops,
                                        progress=not args.quiet))
        print(f"recorded {s['steps']:,} steps in {s['episodes']} episodes to {args.out} "
              f"at {s['record_steps_per_s']:.0f} steps/s; coverage {s['coverage_cells_per_1k']:.1f} cells/1k steps, "
              f"revisits {s['revisit_fraction']:.1%}")
        return 0
    from worldsim.record.gym_recorder import GymRecordConfig, record_gym
    from worldsim.spaces import schema_from_space

    # envs that draw with pygame (classic control, Box2D) start SDL's display and sound, which on a
    # machine without a desktop session print "XDG_RUNTIME_DIR is invalid"; rgb_array needs neither
    os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
    os.environ.setdefault("SDL_AUDIODRIVER", "dummy")
    script = None
    if args.script:
        import gymnasium as gym

        env = gym.make(args.env)
        script = load_script(args.script, schema_from_space(env.action_space))
        env.close()
    s = record_gym(GymRecordConfig(env_id=args.env, out=args.out, steps=args.steps, seed=args.seed,
                                   resolution=args.resolution, policy=args.policy,
                                   max_episode_steps=args.max_episode_steps, script=script, progress=not args.quiet))
    print(f"recorded {s['steps']:,} steps in {s['episodes']} episodes of {args.env} to {args.out} "
          f"at {s['record_steps_per_s']:.0f} steps/s")
    return 0


# ----- data ---------------------------------------------------------------------------
def _add_data(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="inspect data sets")
    ds = p.add_subparsers(dest="data_cmd", metavar="CMD")
    p.set_defaults(group=p)
    i = ds.add_parser("info", help="check a data set and print steps, maps, audio, coverage")
    i.add_argument("dir", help="data set directory (or one episode)")
    i.add_argument("--json", dest="json_out", help="also write the summary as JSON here")
    i.add_argument("--verify", action="store_true", help="also check every array's checksum (reads all data)")


def _run_data(args: argparse.Namespace) -> int:
    if args.data_cmd is None:
        return _group_help(args)
    from worldsim.data.info import main_info

    return main_info(args.dir, args.json_out, args.verify)


# ----- eval ---------------------------------------------------------------------------
def _add_eval(sub: argparse._SubParsersAction) -> None:
    from worldsim.eval.harness import add_eval_args

    add_eval_args(sub.add_parser("eval", help="score a world model against the real game"))


def _run_eval(args: argparse.Namespace) -> int:
    from worldsim.eval.harness import main_eval

    return main_eval(args)


# ----- train / export -------------------------------------------------------------------
def _add_train(sub: argparse._SubParsersAction) -> None:
    from worldsim.train.main import add_train_args

    add_train_args(sub.add_parser("train", help="train codecs + dynamics from recorded episodes (torchrun for DDP)"))


def _run_train(args: argparse.Namespace) -> int:
    from worldsim.train.main import main_train

    return main_train(args)


def _add_export(sub: argparse._SubParsersAction) -> None:
    from worldsim.train.main import add_export_args

    add_export_args(sub.add_parser("export", help="write a run's world checkpoint in bf16 (how the default world ships)"))


def _run_export(args: argparse.Namespace) -> int:
    from worldsim.train.main import main_export

    return main_export(args)


# ----- bench ----------------------------------------------------------------------------
def _add_bench(sub: argparse._SubParsersAction) -> None:
    from worldsim.bench.runtime_bench import add_bench_args

    add_bench_args(sub.add_parser("bench", help="runtime speed/memory side by side with a DIAMOND-class baseline"))


def _run_bench(args: argparse.Namespace) -> int:
    from worldsim.bench.runtime_bench import main_bench

    if args.ticks < 1 or args.rss_ticks < 0:
        raise CLIError("--ticks must be ≥ 1 and --rss-ticks ≥ 0")
    return main_bench(args)


# ----- play -----------------------------------------------------------------------------
def _add_play(sub: argparse._SubParsersAction) -> None:
    from worldsim.play.player import add_play_args

    add_play_args(sub.add_parser("play", help="play a world with keyboard, mouse and sound (pygame)"))


def _run_play(args: argparse.Namespace) -> int:
    from worldsim.play.player import main_play

    return main_play(args)


# ----- serve / keys ---------------------------------------------------------------------
def _add_serve(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a world to engines over ZeroMQ + msgpack (engine_bridge/PROTOCOL.md)")
    p.add_argument("--world", default="default", help="world checkpoint (default: the shipped default world)")
    p.add_argument("--bind", default="tcp://127.0.0.1:5555", help="ZeroMQ endpoint (loopback unless told otherwise)")
    p.add_argument("--max-sessions", type=_positive_int, default=64)
    p.add_argument("--curve-keys", type=Path, help="directory from `worldsim keys`: CURVE encryption + client allow-list")
    p.add_argument("--heartbeat-timeout-ms", type=_positive_int, default=5000)
    p.add_argument("--resume-ttl-ms", type=_positive_int, default=30000)
    p.add_argument("--device", type=device_arg, help=DEVICE_HELP)
    p.add_argument("--memory", choices=["on", "off"], default="on", help="long-term scene memory of sessions")
    p.add_argument("--save-dir", type=Path, help="let clients SAVE sessions here and LOAD them later (capability 'save')")
    p.add_argument("--max-saves", type=_positive_int, default=256, help="saves kept in --save-dir at most")


def _run_serve(args: argparse.Namespace) -> int:
    import logging

    import torch

    from engine_bridge.server import BridgeServer, ServerConfig
    from worldsim.runtime import World

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    torch.set_num_threads(1)
    if args.curve_keys is not None and not args.curve_keys.is_dir():
        raise CLIError(f"--curve-keys {args.curve_keys}: no such directory (make one with `worldsim keys DIR`)")
    if args.save_dir is not None:
        try:
            args.save_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CLIError(f"--save-dir {args.save_dir}: cannot make it ({e.strerror or e})") from None
    world = World.load(args.world, device=args.device, memory=args.memory == "on")
    cfg = ServerConfig(bind=args.bind, max_sessions=args.max_sessions,
                       curve_keys=str(args.curve_keys) if args.curve_keys else None,
                       heartbeat_timeout_ms=args.heartbeat_timeout_ms, resume_ttl_ms=args.resume_ttl_ms,
                       save_dir=None if args.save_dir is None else str(args.save_dir), max_saves=args.max_saves)
    return _bridge_server(BridgeServer(world, cfg), args.bind, f"serving {world.name} in {world.model.precision}")


def _bridge_server(srv, bind: str, what: str) -> int:
    """Start a bridge server, say where, run it until Ctrl-C or SIGTERM."""
    import signal

    import zmq

    try:
        srv.start()
    except zmq.ZMQError as e:
        raise CLIError(f"cannot bind {bind}: {e} (is another server using the port? try --bind tcp://127.0.0.1:0)") from None
    print(f"{what} on {srv.endpoint} (Ctrl-C stops)", file=sys.stderr)

    def _terminate(*_):  # SIGTERM stops like Ctrl-C: open recordings are written, not dropped
        signal.signal(signal.SIGTERM, _again)  # one is enough: a second (timeout, a service manager) must
        raise KeyboardInterrupt                # not cut the stop short and lose what it writes

    def _again(*_):
        print("already stopping", file=sys.stderr)

    signal.signal(signal.SIGTERM, _terminate)
    try:
        while not srv.wait(0.5):
            pass
    except KeyboardInterrupt:  # the usual way to stop a server: not an error
        print("stopping", file=sys.stderr)
    finally:
        srv.stop()
    return 0


def _run_record_bridge(args: argparse.Namespace) -> int:
    import logging

    from engine_bridge.recording import Recorder, RecordConfig
    from engine_bridge.server import BridgeServer, ServerConfig

    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    if args.curve_keys is not None and not args.curve_keys.is_dir():
        raise CLIError(f"--curve-keys {args.curve_keys}: no such directory (make one with `worldsim keys DIR`)")
    if args.out.exists() and not args.out.is_dir():
        raise CLIError(f"--out {args.out}: exists and is not a directory")
    rec = Recorder(RecordConfig(out=str(args.out), resolution=args.resolution, episode_steps=args.episode_steps,
                                max_open=args.max_open))
    if args.max_message_mb > 64:
        raise CLIError(f"--max-message-mb {args.max_message_mb}: at most 64")
    cfg = ServerConfig(bind=args.bind, curve_keys=str(args.curve_keys) if args.curve_keys else None,
                       heartbeat_timeout_ms=args.heartbeat_timeout_ms, resume_ttl_ms=args.resume_ttl_ms,
                       max_message_bytes=args.max_message_mb << 20)
    rc = _bridge_server(BridgeServer(None, cfg, rec), args.bind, f"recording engines into {args.out}")
    print(f"wrote {len(rec.written)} episode(s) to {args.out}", file=sys.stderr)
    return rc


def _add_keys(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("keys", help="generate CURVE key pairs for `worldsim serve --curve-keys`")
    p.add_argument("dir", type=Path)
    p.add_argument("--clients", type=_positive_int, default=1, help="client key pairs to create and allow")


def _run_keys(args: argparse.Namespace) -> int:
    from engine_bridge.security import generate_keys

    for k, v in generate_keys(args.dir, args.clients).items():
        print(f"{k:16s}{v}")
    return 0


# ----- cutscene -----------------------------------------------------------------------
def _add_cutscene(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("cutscene", help="play an NPC timeline through the bridge; writes MP4 + WAV per NPC")
    p.add_argument("timeline", type=Path, help="timeline YAML/JSON (format: engine_bridge/cutscene.py)")
    p.add_argument("--out", required=True, type=Path, help="output directory")
    p.add_argument("--connect", help="a running `worldsim serve` endpoint (default: start one in this process)")
    p.add_argument("--world", default="default", help="world for the in-process server")
    p.add_argument("--scale", type=_positive_int, default=4, help="video upscale factor (nearest)")
    p.add_argument("--device", type=device_arg, help=DEVICE_HELP)
    p.add_argument("--quiet", action="store_true")


def _run_cutscene(args: argparse.Namespace) -> int:
    import torch

    from engine_bridge.client import BridgeClient, BridgeError
    from engine_bridge.cutscene import load_timeline, render_cutscene

    load_timeline(args.timeline)  # fail on a bad file before loading a model
    srv = None
    if args.connect is None:
        from engine_bridge.server import BridgeServer, ServerConfig
        from worldsim.runtime import World

        torch.set_num_threads(1)
        srv = BridgeServer(World.load(args.world, device=args.device), ServerConfig(bind="tcp://127.0.0.1:*")).start()
    try:
        try:
            client = BridgeClient(args.connect or srv.endpoint, timeout_ms=10000)
        except BridgeError as e:
            raise CLIError(f"cannot reach {args.connect}: {e}") from None
        with client:
            written = render_cutscene(args.timeline, args.out, client, scale=args.scale, progress=not args.quiet)
    except BridgeError as e:
        raise CLIError(f"bridge: {e}") from None
    finally:
        if srv is not None:
            srv.stop()
    for name, files in written.items():
        print(f"{name}: {', '.join(files)}")
    return 0


# ----- info ---------------------------------------------------------------------------
def _add_info(sub: argparse._SubParsersAction) -> None:
    from worldsim.info import add_info_args

    add_info_args(sub.add_parser("info", help="versions, devices and the default world; or what saved sessions hold"))


def _run_info(args: argparse.Namespace) -> int:
    from worldsim.info import main_info

    return main_info(args)


COMMANDS: dict[str, tuple[Callable, Callable]] = {
    "record": (_add_record, _run_record),
    "data": (_add_data, _run_data),
    "train": (_add_train, _run_train),
    "export": (_add_export, _run_export),
    "eval": (_add_eval, _run_eval),
    "bench": (_add_bench, _run_bench),
    "play": (_add_play, _run_play),
    "serve": (_add_serve, _run_serve),
    "keys": (_add_keys, _run_keys),
    "cutscene": (_add_cutscene, _run_cutscene),
    "info": (_add_info, _run_info),
}


# commands that run a model: they take --precision (worldsim.precision)
MODEL_COMMANDS = ("train", "eval", "bench", "play", "serve", "cutscene")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="worldsim", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"worldsim {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (add, _) in COMMANDS.items():
        add(sub)
        if name in MODEL_COMMANDS:
            sub.choices[name].add_argument(
                "--precision", choices=("auto", "bf16", "fp32", "int8"), default=None,
                help="compute precision (default: $WORLDSIM_PRECISION, else auto = bf16 where the CPU/GPU runs it "
                     "natively, else fp32 (emulated bf16 is ~9x slower than fp32), with a world's dynamics' linear "
                     "layers in int8 on an x86 CPU without AMX; int8 = those linears in int8, the rest in that float)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from worldsim.data.episode import EpisodeFormatError

    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv:  # a bare `worldsim`: what it can do, not only that a command is missing
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args = parser.parse_args(argv)
    try:
        if getattr(args, "precision", None):  # before any model loads; inherited by torchrun workers
            from worldsim.precision import set_precision

            set_precision(args.precision)
        return COMMANDS[args.command][1](args) or 0
    except (WorldsimError, ActionError, EpisodeFormatError, FileNotFoundError, ValueError) as e:
        print(f"worldsim {args.command}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:
        # the reader went away (`worldsim … | head`): stop quietly, as a shell tool does; stdout points at
        # /dev/null so the interpreter's last flush does not raise again
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # 128 + SIGPIPE
    except OSError as e:
        if e.filename is None:  # not a path's problem (a socket, the machine): keep the traceback
            raise
        # a path the user named (or one under it) that cannot be made, read or written:
        # one line, as for any other bad argument
        print(f"worldsim {args.command}: error: {e.filename}: {e.strerror or e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"worldsim {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
