"""Which torch device a model runs on: CUDA when the machine has it, else the CPU, or the one
``--device`` (or ``device=``) names.

Every command that loads a model (train, eval, bench, play, serve, cutscene) takes the same
``--device`` flag through :func:`device_arg`, so a name torch does not know (``tpu``), a GPU
the machine lacks (``cuda`` without CUDA, ``cuda:3`` on a one-GPU machine) or an empty string
stops the command at once with one line, before any weights load — not with torch's
traceback deep inside the first forward.
"""

from __future__ import annotations

from worldsim.errors import WorldsimError

KINDS = ("cpu", "cuda")  # the device types worldsim's code paths are written and tested for


class DeviceError(WorldsimError, ValueError):
    """A device name this machine cannot run on; the message says why."""


def check_device(name: str) -> str:
    """``name`` as torch spells it (``"cuda:0"``, ``"cpu"``) when this machine can run on it,
    else :class:`DeviceError`."""
    import torch

    text = str(name).strip()
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        dev = None
    if dev is None or dev.type not in KINDS:
        raise DeviceError(f"device {name!r}: expected cpu, cuda or cuda:N")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {name!r} asked for but CUDA is not available on this machine")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(f"device {name!r}: this machine has {torch.cuda.device_count()} CUDA device(s), "
                              f"numbered from 0")
    return "cpu" if dev.type == "cpu" else str(dev)  # "cpu:0" is the CPU: callers compare with "cpu"


def pick_device(device: str | None = None) -> str:
    """The device to run on: ``device`` checked (:func:`check_device`), or CUDA when present, else CPU."""
    if device is not None:
        return check_device(device)
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def device_arg(text: str) -> str:
    """argparse ``type=`` for ``--device``: a bad name is a usage error naming the flag."""
    import argparse

    try:
        return check_device(text)
    except DeviceError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


DEVICE_HELP = "cpu, cuda, cuda:N (default: cuda when the machine has it, else cpu)"
