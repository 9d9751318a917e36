"""The base of worldsim's user-facing errors: the CLI prints these in one line, without a traceback."""


class WorldsimError(Exception):
    """A problem with the user's input or machine set-up, not a bug in worldsim."""


def check_limits(cfg, prefix: str, at_least: "dict[str, float]", within: "tuple[str, ...]" = ()) -> None:
    """ValueError naming the first field of the config ``cfg`` below its bound in ``at_least``
    ({field: lowest allowed; a tuple field checks every element}) or outside [0, 1] (``within``):
    values no run could use fail when the config is read, not in the middle of a run."""
    for name, low in at_least.items():
        value = getattr(cfg, name)
        for v in (value if isinstance(value, tuple) else (value,)):
            if v < low:  # a tiny positive bound stands for "> 0"
                bound = "> 0" if 0 < low < 1e-3 else f">= {low:g}"
                raise ValueError(f"{prefix}{'.' if prefix else ''}{name} must be {bound}, got {value}")
    for name in within:
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ValueError(f"{prefix}{'.' if prefix else ''}{name} must be in [0, 1], got {getattr(cfg, name)}")


def check_output_file(path, option: str = "--json"):
    """Fail before a long run, not after it, when ``path`` cannot be written: creates its folder
    and leaves no file behind. Returns the path."""
    from pathlib import Path

    p = Path(path)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        existed = p.exists()
        with open(p, "a"):
            pass
        if not existed:
            p.unlink()
    except (FileExistsError, NotADirectoryError):  # a file where one of its folders should be
        blocker = next((a for a in reversed(p.parents) if a.exists() and not a.is_dir()), p.parent)
        raise WorldsimError(f"{option} {path}: cannot write there ({blocker} is not a folder)") from None
    except OSError as e:
        raise WorldsimError(f"{option} {path}: cannot write there ({e.strerror or e})") from None
    return p


def read_json(path, fail, missing: str):
    """The JSON in the file ``path``; every way it can be unreadable raised as ``fail(message)``
    (the caller's error class, naming the file its way): ``missing`` when there is no such file,
    else "is a directory" or "not valid JSON (...)"."""
    import json
    from pathlib import Path

    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise fail(missing) from None
    except IsADirectoryError:
        raise fail("is a directory, not a JSON file") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise fail(f"not valid JSON ({e})") from None


def yaml_problem(e: Exception) -> str:
    """A YAML parse error in one line ("expected <block end>, but found '-' at line 3, column 1"):
    PyYAML's own message spans several lines and quotes the source."""
    problem = getattr(e, "problem", None)
    mark = getattr(e, "problem_mark", None)
    if problem and mark is not None:
        return f"{problem} at line {mark.line + 1}, column {mark.column + 1}"
    return (str(e).strip().splitlines() or [type(e).__name__])[0]
