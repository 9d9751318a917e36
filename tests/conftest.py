import os

import numpy as np
import pytest

from tests.helpers import random_world

os.environ.setdefault("SDL_VIDEODRIVER", "dummy")
os.environ.setdefault("SDL_AUDIODRIVER", "dummy")


@pytest.fixture(autouse=True)
def _one_thread():
    import torch

    torch.set_num_threads(1)
    yield


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A world over random weights (tests/helpers.random_world), one per test module; a module that
    needs another world (the shipped one, a trained toy) defines its own ``world``."""
    from worldsim.runtime import World

    return World.load(str(random_world(tmp_path_factory.mktemp("w") / "world")))
