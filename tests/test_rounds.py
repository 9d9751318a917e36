"""`dynamics_rounds`: the whole dynamics recipe (base → fine-tune → distillation from a kept
earlier stage) from one `worldsim train`, resumable stage by stage; clear errors."""

import json
from pathlib import Path

import pytest

from tests.helpers import toy_world
from worldsim.cli import main
from worldsim.train import dynamics_trainer
from worldsim.train.pipeline import TrainConfigError, load_run_config

ROOT = Path(__file__).resolve().parents[1]
TINY = (ROOT / "configs" / "tiny.yaml").read_text()
BASE = "dynamics_train: {steps: 30, batch: 4"
ROUNDS = """
dynamics_rounds:
  - {name: finetune, steps: 9, schedule_start: 6, batch: 2, lr: 0.001, warmup: 1}
  - {name: distill, steps: 11, schedule_start: 9, batch: 2, warmup: 1, distill_steps: 2, distill_teacher: "round:base",
     distill_reuse: 2}
"""
MORE = ROUNDS + """  - {name: more, steps: 15, schedule_start: 11, batch: 2, warmup: 1}
  - {name: last, steps: 16, schedule_start: 15, batch: 2, warmup: 1}
"""
GONE = MORE + """  - {name: again, steps: 18, schedule_start: 16, distill_steps: 2, distill_teacher: 'round:finetune'}
"""


def _config(tmp_path: Path, rounds: str, name: str = "rounds.yaml") -> Path:
    p = tmp_path / name
    p.write_text(TINY.replace(BASE, "dynamics_train: {steps: 6, batch: 4") + rounds)
    return p


def _steps(run: Path) -> int:
    return json.loads((run / "dynamics.json").read_text())["meta"]["train_steps"]


def test_rounds_run_the_chain_keep_teachers_and_resume(tmp_path, monkeypatch, capsys):
    toy = toy_world(tmp_path / "toy", episodes=2, steps=60)
    cfg = _config(tmp_path, ROUNDS)
    teachers = []
    real = dynamics_trainer.load_teacher
    monkeypatch.setattr(dynamics_trainer, "load_teacher", lambda path, *a: teachers.append(str(path)) or real(path, *a))
    run = tmp_path / "run"
    stale = run / "rounds" / "base"  # left by an earlier life of the run: a run started over must not use it
    stale.mkdir(parents=True)
    (stale / "dynamics.json").write_text("{}")
    assert main(["train", "--config", str(cfg), "--data", str(toy), "--out", str(run), "--quiet"]) == 0
    assert _steps(run) == 11
    printed = capsys.readouterr().out
    assert "dynamics 6 steps" in printed and "dynamics:finetune 9 steps" in printed and "dynamics:distill 11 steps" in printed
    # the distillation round's teacher is the base stage as it ended (step 6), not the trained network
    kept = run / "rounds" / "base"
    assert teachers == [str(kept)] and json.loads((kept / "dynamics.json").read_text())["meta"]["train_steps"] == 6
    assert not (run / "rounds" / "finetune").exists()  # no round distils from it: not kept
    steps = [json.loads(line)["step"] for line in (run / "dynamics.log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 11

    # asked again with --resume: every stage is complete, nothing trains
    assert main(["train", "--config", str(cfg), "--data", str(toy), "--out", str(run), "--quiet", "--resume",
                 "--stage", "dynamics"]) == 0
    assert _steps(run) == 11 and len(teachers) == 1

    # a longer recipe: --max-steps cuts the new round and ends the invocation; the next one finishes it
    more = _config(tmp_path, MORE, "more.yaml")
    assert main(["train", "--config", str(more), "--data", str(toy), "--out", str(run), "--quiet", "--resume",
                 "--stage", "dynamics", "--max-steps", "2"]) == 0
    assert _steps(run) == 13  # "last" did not start from an unfinished "more"
    assert main(["train", "--config", str(more), "--data", str(toy), "--out", str(run), "--quiet", "--resume",
                 "--stage", "dynamics"]) == 0
    assert _steps(run) == 16

    # a round whose teacher's weights were not kept is refused with the path it needs
    gone = _config(tmp_path, GONE, "gone.yaml")
    assert main(["train", "--config", str(gone), "--data", str(toy), "--out", str(run), "--quiet", "--resume",
                 "--stage", "dynamics"]) == 2
    err = capsys.readouterr().err
    assert "were not kept" in err and "rounds/finetune" in err and "Traceback" not in err


@pytest.mark.parametrize("rounds, message", [
    ("dynamics_rounds: {name: x}\n", "must be a list"),
    ("dynamics_rounds: [{steps: 9}]\n", "needs a name"),
    ("dynamics_rounds: [{name: base, steps: 9}]\n", "taken"),
    ("dynamics_rounds: [{name: a, steps: 9}, {name: a, steps: 12}]\n", "taken"),
    ("dynamics_rounds: [{name: a}]\n", "needs steps"),
    ("dynamics_rounds: [{name: a, steps: 6}]\n", "must exceed"),
    ("dynamics_rounds: [{name: a, steps: 9, lr_: 1}]\n", "lr_"),
    ("dynamics_rounds: [{name: a, steps: 9, distill_steps: 2, distill_teacher: 'round:b'}, {name: b, steps: 12}]\n",
     "names no earlier stage"),
    ("dynamics_rounds: [{name: a, steps: 9, distill_frac: 2}]\n", "distill_frac"),
])
def test_bad_rounds_are_clear_errors(tmp_path, rounds, message):
    with pytest.raises(TrainConfigError, match=message):
        load_run_config(_config(tmp_path, "\n" + rounds))


def test_a_round_inherits_dynamics_train_and_changes_only_what_it_names(tmp_path):
    cfg = load_run_config(_config(tmp_path, ROUNDS))
    fine, dist = cfg.dynamics_rounds
    assert (fine.name, fine.train.steps, fine.train.batch, fine.train.lr) == ("finetune", 9, 2, 0.001)
    assert fine.train.log_every == cfg.dynamics_train.log_every and fine.train.distill_steps == 0
    assert dist.train.lr == cfg.dynamics_train.lr and dist.train.distill_teacher == "round:base"
