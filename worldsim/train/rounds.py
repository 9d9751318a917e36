"""Dynamics rounds: the stages a world's dynamics go through after their first training.

The shipped world was not made by one schedule: a base run, a fine-tune with another batch and
learning rate, then distillation rounds whose teachers were the weights *as they stood at the end
of an earlier round* (frozen copies, not the network being trained). A config lists them under
``dynamics_rounds``, so one ``worldsim train --config configs/default.yaml`` runs the whole recipe:

    dynamics_train: {steps: 2900, batch: 256, lr: 0.001}          # the base stage ("base")
    dynamics_rounds:
      - {name: finetune, steps: 10000, schedule_start: 2900, batch: 16, lr: 0.0003}
      - {name: distill, steps: 11426, schedule_start: 10000, distill_steps: 8, distill_teacher: "round:finetune"}

Each round is ``dynamics_train`` with its own values changed (YAML only picks values of
:class:`DynamicsTrainConfig`), trained from where the previous stage ended up to its own ``steps``
(a cumulative step count; ``schedule_start`` gives it its own cosine). ``distill_teacher:
"round:NAME"`` names the weights at the end of the stage ``NAME`` (``base`` or an earlier round):
the run keeps a copy of those in ``<run>/rounds/NAME/`` when that stage completes.

Resuming walks the chain: stages already complete are skipped, the first unfinished one
continues. A stage cut short (``--max-steps``) ends the invocation, and so does the stage that
``--max-minutes`` lands in (its cosine anneals by that deadline; the next stage starts in the
next invocation on its own schedule).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from worldsim.model.checkpoint import CheckpointError, config_from_dict, config_to_dict
from worldsim.train.dynamics_trainer import DynamicsTrainConfig, train_dynamics

ROUND_TEACHER = "round:"
ROUNDS_DIR = "rounds"
_NAME = re.compile(r"^[A-Za-z0-9_-]{1,64}$")


@dataclass
class DynamicsRound:
    """One stage after the base one: its name and its (complete) training settings."""
    name: str
    train: DynamicsTrainConfig


def parse_rounds(raw: Any, base: DynamicsTrainConfig, where: str) -> list[DynamicsRound]:
    """``dynamics_rounds`` from a config file → rounds; every mistake is a ValueError naming it."""
    if raw is None:
        return []
    if not isinstance(raw, list):
        raise ValueError(f"{where}: dynamics_rounds must be a list of mappings, got {type(raw).__name__}")
    rounds: list[DynamicsRound] = []
    seen = {"base": base.steps}
    for i, entry in enumerate(raw):
        at = f"{where}: dynamics_rounds[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{at}: expected a mapping, got {type(entry).__name__}")
        name = entry.get("name")
        if not isinstance(name, str) or not _NAME.match(name):
            raise ValueError(f"{at}: needs a name (letters, digits, _ or -), got {name!r}")
        if name in seen:
            raise ValueError(f"{at}: the name {name!r} is taken ('base' is the dynamics_train stage)")
        values = {k: v for k, v in entry.items() if k != "name"}
        if "steps" not in values:
            raise ValueError(f"{at} ({name}): needs steps (the cumulative step count it trains up to)")
        try:  # typed and validated as it is built
            tcfg = config_from_dict(DynamicsTrainConfig, {**config_to_dict(base), **values}, where=f"{at} ({name})")
        except CheckpointError as e:
            raise ValueError(str(e)) from None
        before = rounds[-1].train.steps if rounds else base.steps
        if tcfg.steps <= before:
            raise ValueError(f"{at} ({name}): steps {tcfg.steps} must exceed the stage before it ({before})")
        ref = teacher_round(tcfg)
        if ref is not None and ref not in seen:
            raise ValueError(f"{at} ({name}): distill_teacher {tcfg.distill_teacher!r} names no earlier stage "
                             f"(known: {', '.join(seen)})")
        rounds.append(DynamicsRound(name, tcfg))
        seen[name] = tcfg.steps
    return rounds


def teacher_round(tcfg: DynamicsTrainConfig) -> str | None:
    """The stage a ``round:NAME`` teacher names, or None for a world/run directory teacher."""
    t = tcfg.distill_teacher
    return t[len(ROUND_TEACHER):] if tcfg.distill_steps > 0 and t.startswith(ROUND_TEACHER) else None


def trained_steps(out: Path) -> int:
    """The step the run's dynamics weights are at (0 = none yet)."""
    f = out / "dynamics.json"
    if not f.exists():
        return 0
    try:
        return int(json.loads(f.read_text())["meta"]["train_steps"])
    except (KeyError, ValueError, TypeError, json.JSONDecodeError):
        return 0


def keep_stage(out: Path, name: str) -> Path:
    """Copy the run's current dynamics (weights + JSON) to ``<out>/rounds/<name>/`` atomically."""
    dst = out / ROUNDS_DIR / name
    tmp = dst.with_name(name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in ("dynamics.json", "dynamics.safetensors"):
        shutil.copy2(out / f, tmp / f)
    shutil.rmtree(dst, ignore_errors=True)
    os.replace(tmp, dst)
    return dst


def train_chain(store, out: Path, dcfg, base: DynamicsTrainConfig, rounds: list[DynamicsRound], seed: int,
                resume: bool, max_steps: int | None, progress: bool, device: str,
                on_eval: Callable[[int], Any] | None, max_seconds: float | None, error: type[Exception]) -> dict[str, Any]:
    """Train the base dynamics stage, then each round, as the module docstring describes.
    Returns ``{"dynamics": …, "dynamics:NAME": …}`` (each ``{"steps": …}``)."""
    import torch.distributed as dist

    ddp = dist.is_available() and dist.is_initialized()
    rank = dist.get_rank() if ddp else 0
    chain = [("base", base)] + [(r.name, r.train) for r in rounds]
    needed = {teacher_round(t) for _, t in chain} - {None}
    report: dict[str, Any] = {}
    if rounds and rank == 0 and progress:
        at = trained_steps(out) if resume else 0
        print("dynamics stages: " + " → ".join(f"{n} (to {t.steps}{', done' if at >= t.steps else ''})" for n, t in chain))
    if not resume and rank == 0:  # a run started over: weights kept from its last life would be stale teachers
        shutil.rmtree(out / ROUNDS_DIR, ignore_errors=True)
    for i, (name, tcfg) in enumerate(chain):
        key = "dynamics" if i == 0 else f"dynamics:{name}"
        if tcfg.prior_space:  # a stage that switches the turn prior: later stages keep the switch
            dcfg = dataclasses.replace(dcfg, prior_space=tcfg.prior_space)
        at = trained_steps(out) if (resume or i > 0) else 0
        if at >= tcfg.steps:
            report[key] = {"steps": at, "skipped": "already trained"}
            _keep(out, name, tcfg, needed, rank, ddp, replace=False)
            continue
        if i > 0 and at == 0:
            raise error(f"{out}: round {name!r} continues trained dynamics, and the run has none")
        ref = teacher_round(tcfg)
        if ref is not None:
            kept = out / ROUNDS_DIR / ref
            if not (kept / "dynamics.json").exists():
                raise error(f"{out}: round {name!r} distils from stage {ref!r}, whose weights were not kept "
                            f"({kept} is missing)")
            tcfg = dataclasses.replace(tcfg, distill_teacher=str(kept))
        report[key] = train_dynamics(store, out, dcfg, tcfg, seed=seed, resume=resume or i > 0, max_steps=max_steps,
                                     progress=progress, device=device, on_eval=on_eval, max_seconds=max_seconds)
        _keep(out, name, tcfg, needed, rank, ddp, replace=True)
        if max_seconds is not None or report[key]["steps"] < tcfg.steps:
            break  # the stage --max-minutes landed in, or one cut short: later stages start another time
    return report


def _keep(out: Path, name: str, tcfg: DynamicsTrainConfig, needed: set, rank: int, ddp: bool, replace: bool) -> None:
    """Keep a finished stage's weights when a later round distils from them: always when it has
    just finished training (``replace``), else only when no copy is kept yet."""
    if (rank == 0 and name in needed and trained_steps(out) == tcfg.steps
            and (replace or not (out / ROUNDS_DIR / name / "dynamics.json").exists())):
        keep_stage(out, name)
    if ddp:
        import torch.distributed as dist
        dist.barrier()
