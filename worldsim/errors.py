"""The base of worldsim's user-facing errors: the CLI prints these in one line, without a traceback."""


class WorldsimError(Exception):
    """A problem with the user's input or machine set-up, not a bug in worldsim."""


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
