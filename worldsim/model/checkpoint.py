"""Checkpoints: weights as safetensors, configs and provenance as JSON beside them.

A checkpoint directory holds, per component (``frame_codec``, ``audio_codec``,
``dynamics``), ``<name>.safetensors`` (bf16 or fp32 weights) and ``<name>.json``
(``{"format": "worldsim-checkpoint", "version": 1, "kind": ..., "config": {...},
"meta": {...}}``), plus ``world.json`` naming the world (WAD, maps, tick rate, resolution,
training record). Optimizer state for ``--resume`` goes in ``<name>.train.pt`` (torch
format: it is only ever read back by the process tree that wrote it). Nothing is pickled
into the shipped files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors.torch import load_file, save_file

from worldsim.errors import WorldsimError, read_json

FORMAT = "worldsim-checkpoint"
VERSION = 1
C = TypeVar("C")


class CheckpointError(WorldsimError, ValueError):
    """A checkpoint that is missing, corrupt, or does not fit the code/config asked for."""


def config_to_dict(cfg: Any) -> dict[str, Any]:
    return {k: (list(v) if isinstance(v, tuple) else v) for k, v in dataclasses.asdict(cfg).items()}


def _type_name(tp: Any) -> str:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in args)
    if origin in (tuple, list):
        return f"a list of {_type_name(args[0])}s" if args else "a list"
    return {bool: "true/false", int: "an integer", float: "a number", str: "a string",
            type(None): "null"}.get(tp, getattr(tp, "__name__", str(tp)))


def coerce_value(value: Any, tp: Any, where: str) -> Any:
    """``value`` as the annotated type ``tp`` (int → float, list → tuple, 3.0 → 3), or a
    :class:`CheckpointError` naming ``where`` — so that ``steps: "1e5"`` in a YAML file (PyYAML
    reads it as a string) stops the run at once instead of after its first stage."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        for a in args:
            try:
                return coerce_value(value, a, where)
            except CheckpointError:
                pass
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    elif origin in (tuple, list):
        if isinstance(value, (list, tuple)):
            item = args[0] if args else Any
            items = [coerce_value(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple else items
    else:
        return value  # nested dataclasses and Any: checked where they are built
    hint = ""
    if isinstance(value, str) and tp in (int, float):
        with contextlib.suppress(ValueError):
            float(value)
            hint = " (YAML reads 1e5 as text: write 100000 or 1.0e+5)"
    raise CheckpointError(f"{where} must be {_type_name(tp)}, got {value!r}{hint}")


def config_from_dict(cls: type[C], d: dict[str, Any], where: str = "config") -> C:
    if not isinstance(d, dict):
        raise CheckpointError(f"{where}: expected a mapping, got {type(d).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - set(fields))
    if unknown:
        raise CheckpointError(f"{where}: unknown key(s) {', '.join(unknown)} for {cls.__name__}; "
                              f"known: {', '.join(fields)}")
    hints = typing.get_type_hints(cls)
    kw = {k: coerce_value(v, hints.get(k, Any), f"{where}: {k}") for k, v in d.items()}
    try:
        cfg = cls(**kw)
        if hasattr(cfg, "validate"):
            cfg.validate()
    except (TypeError, ValueError) as e:
        section = where.rsplit(": ", 1)
        if len(section) == 2 and str(e).startswith(section[1] + "."):  # "f.yaml: sampler: sampler.steps …"
            where = section[0]
        raise CheckpointError(f"{where}: {e}") from None
    return cfg


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text)
    os.replace(tmp, path)


def save_component(root: str | os.PathLike, name: str, module: torch.nn.Module, cfg: Any,
                   meta: dict[str, Any] | None = None, dtype: torch.dtype | None = None) -> Path:
    """Write ``<root>/<name>.safetensors`` + ``<name>.json`` atomically."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    state = {k: (v.detach().to(dtype) if dtype is not None and v.is_floating_point() else v.detach()).contiguous().cpu()
             for k, v in module.state_dict().items()}
    tmp = root / f"{name}.safetensors.partial"
    save_file(state, str(tmp), metadata={"format": FORMAT, "kind": name})
    os.replace(tmp, root / f"{name}.safetensors")
    _atomic_write_text(root / f"{name}.json", json.dumps(
        {"format": FORMAT, "version": VERSION, "kind": name, "config": config_to_dict(cfg), "meta": meta or {}}, indent=1))
    return root / f"{name}.safetensors"


def read_component_json(root: str | os.PathLike, name: str) -> dict[str, Any]:
    f = Path(root) / f"{name}.json"
    d = read_json(f, lambda m: CheckpointError(f"{f}: {m}"), f"missing (is {Path(root)} a worldsim checkpoint directory?)")
    if not isinstance(d, dict) or d.get("format") != FORMAT:
        raise CheckpointError(f"{f}: not a {FORMAT} file")
    if d.get("version") != VERSION:
        raise CheckpointError(f"{f}: checkpoint version {d.get('version')!r}, this worldsim reads version {VERSION}")
    if d.get("kind") != name:
        raise CheckpointError(f"{f}: holds a {d.get('kind')!r}, expected {name!r}")
    return d


@contextlib.contextmanager
def _no_init():
    """Layers built without their random initialisation (``torch.empty`` contents): every weight
    is loaded next, and the optional ones a file lacks are zeroed. (Building on the ``meta``
    device instead would import torch._dynamo: 2 s of a cold start.)"""
    init = torch.nn.init
    names = ("kaiming_uniform_", "kaiming_normal_", "uniform_", "normal_", "trunc_normal_", "xavier_uniform_",
             "xavier_normal_", "zeros_", "ones_", "constant_", "orthogonal_")
    saved = {n: getattr(init, n) for n in names if hasattr(init, n)}
    try:
        for n in saved:
            setattr(init, n, lambda t, *a, **k: t)
        yield
    finally:
        for n, f in saved.items():
            setattr(init, n, f)


def load_component(root: str | os.PathLike, name: str, cls: type[torch.nn.Module], cfg_cls: type[C]) -> tuple[Any, dict]:
    """Build ``cls(config)`` from ``<name>.json`` and load its weights; clear errors on mismatch."""
    d = read_component_json(root, name)
    cfg = config_from_dict(cfg_cls, d.get("config", {}), where=f"{Path(root) / name}.json")
    with _no_init():  # random initialisation of weights about to be overwritten was ~half of the load
        module = cls(cfg)
    f = Path(root) / f"{name}.safetensors"
    if not f.exists():
        raise CheckpointError(f"{f}: missing")
    try:
        state = load_file(str(f))
    except Exception as e:  # safetensors raises its own error types for truncated/corrupt headers
        raise CheckpointError(f"{f}: unreadable safetensors file ({e})") from None
    own = module.state_dict()
    # layers a class adds at zero to a trained model (e.g. the dynamics' memory input) may be absent
    missing = sorted(set(own) - set(state) - set(getattr(cls, "OPTIONAL_WEIGHTS", ())))
    extra = sorted(set(state) - set(own))
    bad = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or extra or bad:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensor(s) e.g. {missing[0]}")
        if extra:
            parts.append(f"{len(extra)} unexpected tensor(s) e.g. {extra[0]}")
        if bad:
            parts.append(f"shape mismatch for {bad[0]}: file {tuple(state[bad[0]].shape)} vs config {tuple(own[bad[0]].shape)}")
        raise CheckpointError(f"{f}: weights do not match {name}.json's config: " + "; ".join(parts))
    module.load_state_dict(state, strict=False)  # copy_ converts the file's dtype in place
    with torch.no_grad():  # optional layers absent from the file start at zero (see OPTIONAL_WEIGHTS)
        for k, t in module.state_dict(keep_vars=True).items():
            if k not in state:
                t.zero_()
    return module, d.get("meta", {})
