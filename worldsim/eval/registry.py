"""Turning a model spec string into a :class:`~worldsim.eval.interface.StreamingModel`.

Specs:

* ``baseline:copy-last``, ``baseline:shift``: the built-in baselines. They take the action
  schema, resolution and audio spec from the data, and the shift baseline calibrates its
  pixels-per-degree on the data's frames (see baselines.py), so they need ``data_dir``.
* ``default`` or a checkpoint path: handled by a loader registered under ``"checkpoint"``
  (``worldsim.model.world_model`` registers it on first use); without one these
  raise :class:`ModelUnavailable`. The model package adds one with::

      from worldsim.eval.registry import register_model_loader
      register_model_loader("checkpoint", lambda spec, **kw: MyModel.from_checkpoint(spec))

  ``prior:WORLD`` (same loader module): that world's turn prior, decoded, shown in place of its
  pictures while the world steps underneath (worldsim.model.prior_view: a diagnostic).
  A loader is called as ``loader(spec, data_dir=..., episodes=..., seed=...)`` and returns a
  StreamingModel. ``register_model_loader("myprefix", fn)`` also makes ``myprefix:...``
  specs resolve to ``fn``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from worldsim.errors import WorldsimError
from worldsim.eval.interface import StreamingModel, check_model

ModelLoader = Callable[..., StreamingModel]
BASELINES = ("copy-last", "shift")
_LOADERS: dict[str, ModelLoader] = {}


class ModelUnavailable(WorldsimError, NotImplementedError):
    """The spec names a model that cannot be loaded (yet); the message says why."""


def register_model_loader(kind: str, loader: ModelLoader) -> None:
    """Register ``loader`` for specs ``kind:...`` (or, for kind ``"checkpoint"``, ``default``/paths)."""
    _LOADERS[kind] = loader


def registered_kinds() -> list[str]:
    return sorted(set(_LOADERS) | {"baseline"})


def _eval_episodes(data_dir: str | os.PathLike | None, episodes: int | None) -> list[Any]:
    from worldsim.data import open_episodes

    if data_dir is None:
        raise ModelUnavailable("the baselines take their action schema and resolution from the data: give a data directory")
    eps = open_episodes(data_dir)
    return eps[:episodes] if episodes else eps


def _load_baseline(name: str, data_dir: str | os.PathLike | None = None, episodes: int | None = None,
                   seed: int = 0, eps: list[Any] | None = None, **_: Any) -> StreamingModel:
    from worldsim.eval.baselines import CopyLastModel, ShiftModel, calibrate_shift

    if name not in BASELINES:
        raise ModelUnavailable(f"unknown baseline {name!r}; known: {', '.join('baseline:' + b for b in BASELINES)}")
    eps = eps if eps is not None else _eval_episodes(data_dir, episodes)
    e0 = eps[0]
    if name == "copy-last":
        return CopyLastModel(e0.schema, e0.resolution, e0.meta.get("audio"))
    return ShiftModel(e0.schema, e0.resolution, e0.meta.get("audio"), calibrate_shift(eps, seed=seed))


def load_model(spec: str, data_dir: str | os.PathLike | None = None, *, episodes: int | None = None,
               seed: int = 0, **kwargs: Any) -> StreamingModel:
    """The model a spec names (see the module docstring). Raises :class:`ModelUnavailable`."""
    spec = str(spec).strip()
    if not spec:
        raise ModelUnavailable("empty model spec; use baseline:copy-last, baseline:shift, default or a checkpoint path")
    kind, _, rest = spec.partition(":")
    if "checkpoint" not in _LOADERS:
        import worldsim.model.world_model  # noqa: F401  (registers the "checkpoint" loader)
    if kind == "baseline" and rest:
        model = _load_baseline(rest, data_dir=data_dir, episodes=episodes, seed=seed, **kwargs)
    elif rest and kind in _LOADERS and not Path(spec).exists():
        model = _LOADERS[kind](rest, data_dir=data_dir, episodes=episodes, seed=seed, **kwargs)
    elif spec == "default" or Path(spec).exists() or spec.endswith((".pt", ".safetensors", ".ckpt")) or os.sep in spec:
        if "checkpoint" not in _LOADERS:
            where = "" if spec == "default" else f" ({spec})"
            raise ModelUnavailable(f"cannot load model checkpoint{where}: model checkpoints arrive with the model issue; "
                                   f"for now use baseline:copy-last or baseline:shift")
        if spec != "default" and not Path(spec).exists():
            raise ModelUnavailable(f"no such checkpoint: {spec}")
        model = _LOADERS["checkpoint"](spec, data_dir=data_dir, episodes=episodes, seed=seed, **kwargs)
    else:
        raise ModelUnavailable(f"unknown model spec {spec!r}; use baseline:copy-last, baseline:shift, default or a checkpoint path")
    check_model(model)
    if not hasattr(model, "spec"):
        try:
            model.spec = spec
        except AttributeError:
            pass
    return model
