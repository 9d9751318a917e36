"""Evaluation harness: metrics for action-conditioned world models (``worldsim eval``).

Files: ``interface.py`` (the StreamingModel protocol and its alignment convention),
``baselines.py`` (copy-last, shift), ``registry.py`` (model specs → models), ``metrics.py``
(PSNR/SSIM/sharpness), ``audio.py`` (log-mel, onsets), ``probe.py`` (action-following probe),
``rollout.py`` (start points, rollouts, per-model scores), ``drift.py`` (long rollouts),
``memory.py`` (loop closure), ``report.py`` (JSON, plots, summary), ``compare.py`` (saved
reports side by side), ``harness.py``
(``run_eval``, the CLI). Importing the package is cheap: torch and matplotlib load on use.
"""

from worldsim.eval.interface import ModelContractError, Session, StreamingModel


def __getattr__(name: str):
    if name in ("run_eval", "load_model", "add_eval_args", "main_eval"):
        from worldsim.eval import harness

        return getattr(harness, name)
    raise AttributeError(name)


__all__ = ["StreamingModel", "Session", "ModelContractError", "run_eval", "load_model", "add_eval_args", "main_eval"]
