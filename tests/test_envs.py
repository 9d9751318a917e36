"""Gymnasium and PettingZoo envs over a world: check_env, the registered and vector envs, a gym
recording's own actions, parallel_api_test."""

import json

import gymnasium as gym
import numpy as np
import pytest

from tests.helpers import random_world
from worldsim.actions import ActionError
from worldsim.runtime import World


def test_gymnasium_env_passes_check_env(world):
    from gymnasium.utils.env_checker import check_env

    from worldsim.envs import WorldModelEnv
    env = WorldModelEnv(world, max_episode_steps=5)
    check_env(env, skip_render_check=False)
    env_a = WorldModelEnv(world, audio=True, max_episode_steps=3, render_mode="rgb_array")
    check_env(env_a)
    o1, _ = env_a.reset(seed=4)
    a = env_a.action_space.sample()
    r1 = env_a.step(a)[0]
    env_a.reset(seed=4)
    r2 = env_a.step(a)[0]
    assert np.array_equal(r1["frame"], r2["frame"]) and np.array_equal(r1["audio"], r2["audio"])
    assert env_a.metadata["render_fps"] == 17.5


def test_registered_and_vector_env(world, monkeypatch):
    import worldsim.envs  # noqa: F401  registers worldsim/Doom-v0
    from worldsim.envs import gym_env
    monkeypatch.setitem(gym_env._WORLDS, ("default", None, None), world)
    env = gym.make("worldsim/Doom-v0", max_episode_steps=4)
    obs, _ = env.reset(seed=0)
    assert obs.shape == (64, 64, 3)
    venv = gym.make_vec("worldsim/Doom-v0", num_envs=3, vectorization_mode="vector_entry_point", max_episode_steps=2)
    obs, _ = venv.reset(seed=1)
    assert obs.shape == (3, 64, 64, 3)
    for _ in range(3):
        obs, rew, term, trunc, _ = venv.step(venv.action_space.sample())
    assert obs.shape == (3, 64, 64, 3) and rew.shape == (3,)
    venv.close()


def test_a_world_of_a_gym_recording_takes_the_envs_own_actions(tmp_path):
    """A world trained on `worldsim record gym` data keeps the env's action space: a CartPole
    policy (an int) steps the learned CartPole, alone or batched."""
    from gymnasium.utils.env_checker import check_env

    from worldsim.actions import ActionSchema
    from worldsim.envs import WorldModelEnv, WorldModelVectorEnv

    cart = ActionSchema(buttons=("action_0", "action_1"), groups=(("action_0", "action_1"),))
    root = random_world(tmp_path / "cart", schema=cart)
    wj = json.loads((root / "world.json").read_text())
    # a world of another game (no DOOM wad): its scene memory, which places views by DOOM's
    # player physics, is off unless world.json or the caller turns it on
    game = {k: v for k, v in wj.items() if k != "wad"}
    (root / "world.json").write_text(json.dumps({**game, "env_action_space": {"type": "Discrete", "n": 2, "start": 0}}))
    assert World.load(str(root)).open(seed=0).state.memories == [None]
    assert World.load(str(root), memory=True).open(seed=0).state.memories[0] is not None
    (root / "world.json").write_text(json.dumps({**wj, "env_action_space": {"type": "Discrete", "n": 2, "start": 0}}))
    w = World.load(str(root))
    env = WorldModelEnv(w, max_episode_steps=4)
    assert env.action_space == gym.spaces.Discrete(2)
    check_env(env, skip_render_check=True)
    env.reset(seed=1)
    one = env.step(1)[0]
    env.reset(seed=1)
    assert np.array_equal(env.step(np.int64(1))[0], one) and not np.array_equal(env.step(0)[0], one)
    assert isinstance(WorldModelEnv(w, action_space="schema").action_space, gym.spaces.Dict)
    venv = WorldModelVectorEnv(3, world=w, max_episode_steps=2)
    assert venv.action_space == gym.spaces.MultiDiscrete([2, 2, 2])
    venv.reset(seed=0)
    assert venv.step(np.array([0, 1, 1]))[0].shape == (3, 64, 64, 3)
    with pytest.raises(ValueError, match="action_space must be one of"):
        WorldModelEnv(w, action_space="native")
    from pettingzoo.test import parallel_api_test

    from worldsim.envs.npc import WorldModelParallelEnv
    npcs = WorldModelParallelEnv(num_agents=2, world=w, max_cycles=3)
    assert npcs.action_space("npc_0") == gym.spaces.Discrete(2)
    parallel_api_test(npcs, num_cycles=4)
    # a world.json whose recorded space does not fit its schema is refused, not guessed at
    (root / "world.json").write_text(json.dumps({**wj, "env_action_space": {"type": "Discrete", "n": 3}}))
    with pytest.raises(ValueError, match="does not match its action schema"):
        WorldModelEnv(World.load(str(root)))
    (root / "world.json").write_text(json.dumps({**wj, "env_action_space": {"type": "Discrete"}}))
    with pytest.raises(ActionError, match="env_action_space: bad Discrete"):
        WorldModelEnv(World.load(str(root)))


def test_pettingzoo_parallel_api(world):
    from pettingzoo.test import parallel_api_test

    from worldsim.envs.npc import WorldModelParallelEnv
    env = WorldModelParallelEnv(num_agents=3, world=world, max_cycles=6)
    parallel_api_test(env, num_cycles=8)
