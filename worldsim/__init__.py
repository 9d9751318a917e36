"""worldsim: an interactive, action-conditioned world model with sound, real-time on a CPU."""

__version__ = "0.1.0"
