"""Gymnasium and PettingZoo environments backed by a world model.

Importing this module registers ``worldsim/Doom-v0`` (the default world), so
``gymnasium.make("worldsim/Doom-v0")`` works after ``import worldsim.envs`` — or directly as
``gymnasium.make("worldsim.envs:worldsim/Doom-v0")``; ``gymnasium.make_vec(..., vectorization_mode="vector_entry_point")``
gives the natively batched :class:`WorldModelVectorEnv`.
"""

import gymnasium

from worldsim.envs.gym_env import WorldModelEnv, WorldModelVectorEnv

ENV_ID = "worldsim/Doom-v0"

if ENV_ID not in gymnasium.registry:
    gymnasium.register(id=ENV_ID, entry_point="worldsim.envs.gym_env:WorldModelEnv",
                       vector_entry_point="worldsim.envs.gym_env:WorldModelVectorEnv",
                       kwargs={"world": "default"}, max_episode_steps=None)

__all__ = ["WorldModelEnv", "WorldModelVectorEnv", "ENV_ID"]
