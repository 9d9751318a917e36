"""Pieces every training stage shares: autocast (bf16 where native), a batch prefetcher, progress + JSONL
logs, optimizer state for ``--resume``, and stopping on Ctrl-C without losing the steps since the
last save."""

from __future__ import annotations

import contextlib
import json
import queue
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable

import torch

from worldsim.model.checkpoint import CheckpointError, load_component  # noqa: F401  (re-export)
from worldsim.precision import autocast as precision_autocast


class TrainingStopped(Exception):
    """A run stopped on request (Ctrl-C / SIGTERM) after saving its state: ``--resume`` continues."""


_stop = threading.Event()


def stop_requested() -> bool:
    """True once Ctrl-C or SIGTERM arrived under :func:`stop_on_signal`: training loops finish the
    step they are in, save (weights + optimizer state) and raise :class:`TrainingStopped`."""
    return _stop.is_set()


@contextlib.contextmanager
def stop_on_signal():
    """The first Ctrl-C / SIGTERM asks the training loop to stop after its current step and save
    (a long run loses nothing); a second one interrupts at once. Only the main thread can own
    signal handlers: elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if _stop.is_set():
            raise KeyboardInterrupt
        _stop.set()
        print("\nworldsim train: stopping after this step and saving (Ctrl-C again stops at once)",
              file=sys.stderr, flush=True)

    _stop.clear()
    old = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in old:
        signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _stop.clear()


def autocast(device: str):
    """bf16 autocast where this machine runs bf16 natively, else fp32 (:mod:`worldsim.precision`)."""
    return precision_autocast(device)


class Prefetcher:
    """Builds the next batches in a background thread so the training step never waits on I/O.

    numpy memmap reads and stacking release the GIL for most of their time, so one thread
    on the spare core keeps a one-thread training step fed.
    """

    def __init__(self, make: Callable[[], Any], depth: int = 3):
        self.make = make
        self.q: queue.Queue = queue.Queue(maxsize=depth)
        self.stop = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                item = self.make()
                while not self.stop.is_set():
                    try:
                        self.q.put(item, timeout=0.2)
                        break
                    except queue.Full:
                        continue
        except BaseException as e:  # surfaced in next()
            self.error = e

    def next(self) -> Any:
        while True:
            if self.error is not None:
                raise self.error
            try:
                return self.q.get(timeout=0.5)
            except queue.Empty:
                if not self.thread.is_alive() and self.error is None:
                    raise RuntimeError("batch prefetcher stopped")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(timeout=5)


class ProgressLog:
    """tqdm bar (loss, samples/s, ETA) + one JSON line per ``every`` steps."""

    def __init__(self, name: str, start: int, total: int, path: Path | None, enabled: bool = True, every: int = 25):
        self.name, self.total, self.every = name, total, every
        self.t0, self.s0, self.samples = time.time(), start, 0
        self.acc: dict[str, float] = {}
        self.n = 0
        self.bar = None
        if enabled:
            from tqdm import tqdm
            self.bar = tqdm(total=total, initial=start, desc=name, dynamic_ncols=True, mininterval=2.0)
        self.f = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self.f = open(path, "a")

    def update(self, step: int, batch: int, **stats: float) -> None:
        self.samples += batch
        for k, v in stats.items():
            self.acc[k] = self.acc.get(k, 0.0) + float(v)
        self.n += 1
        if self.bar is not None:
            self.bar.update(1)
        if step % self.every == 0 or step == self.total:
            el = time.time() - self.t0
            avg = {k: v / self.n for k, v in self.acc.items()}
            rec = {"step": step, "samples_per_s": self.samples / max(el, 1e-9), "elapsed_s": el, **avg}
            if self.bar is not None:
                self.bar.set_postfix({k: f"{v:.4g}" for k, v in list(avg.items())[:3]} | {"sps": f"{rec['samples_per_s']:.1f}"})
            if self.f is not None:
                self.f.write(json.dumps(rec) + "\n")
                self.f.flush()
            self.acc, self.n = {}, 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.f is not None:
            self.f.close()


def save_train_state(out: Path, name: str, step: int, opt: torch.optim.Optimizer, extra: dict | None = None) -> None:
    tmp = out / f"{name}.train.pt.partial"
    torch.save({"step": step, "optimizer": opt.state_dict(), **(extra or {})}, tmp)
    tmp.replace(out / f"{name}.train.pt")


def resume_state(out: Path, name: str, model: torch.nn.Module, opt: torch.optim.Optimizer | None) -> int:
    """Load weights (+ optimizer state when present) saved under ``out``; returns the step."""
    if not (out / f"{name}.json").exists():
        return 0
    import worldsim.model.checkpoint as ck
    d = ck.read_component_json(out, name)
    from safetensors.torch import load_file
    state = load_file(str(out / f"{name}.safetensors"))
    own = model.state_dict()
    optional = set(getattr(type(model), "OPTIONAL_WEIGHTS", ()))
    added = sorted(optional & (set(own) - set(state)))  # zero-initialised layers new to this run
    try:
        res = model.load_state_dict({k: v.to(own[k].dtype) for k, v in state.items()}, strict=False)
        if res.unexpected_keys or set(res.missing_keys) - optional:
            raise RuntimeError(f"missing {res.missing_keys}, unexpected {res.unexpected_keys}")
    except (RuntimeError, KeyError) as e:
        raise CheckpointError(f"{out / name}: cannot resume, weights do not fit this config ({e})") from None
    step = int(d.get("meta", {}).get("train_steps", 0))
    ts = out / f"{name}.train.pt"
    if opt is not None and ts.exists():
        st = torch.load(ts, map_location="cpu", weights_only=True)
        if added:  # the saved optimizer state has no slots for the new layers: start it afresh
            print(f"{out / name}: new layer(s) {', '.join(added)} start at zero; optimizer state starts afresh")
        else:
            try:
                opt.load_state_dict(st["optimizer"])
            except ValueError as e:  # e.g. another set of trained parameters (train_only)
                print(f"{out / name}: optimizer state does not fit this run ({e}); it starts afresh")
        step = int(st["step"])
    return step
