"""The base of worldsim's user-facing errors: the CLI prints these in one line, without a traceback."""


class WorldsimError(Exception):
    """A problem with the user's input or machine set-up, not a bug in worldsim."""
