import numpy as np
import pytest
from gymnasium import spaces

from worldsim.actions import ActionError
from worldsim.spaces import (from_env_action, schema_from_space, space_from_dict, space_from_schema, space_to_dict,
                             to_env_action)


@pytest.mark.parametrize("space", [
    spaces.Discrete(3),
    spaces.Discrete(4, start=-1),
    spaces.MultiBinary(5),
    spaces.MultiDiscrete([3, 2, 4]),
    spaces.Box(-2.0, 2.0, shape=(2, 2), dtype=np.float32),
])
def test_space_roundtrip(space):
    space.seed(0)
    schema = schema_from_space(space)
    for _ in range(20):
        v = space.sample()
        a = from_env_action(v, space, schema)
        back = to_env_action(a, space, schema)
        np.testing.assert_array_equal(np.asarray(back), np.asarray(v))
        assert space.contains(back)
        # every action is also expressible as a script entry
        assert schema.parse(schema.to_entry(a)) == a


def test_box_values_no_input_sends_are_refused():
    box = spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float32)
    schema = schema_from_space(box)
    for v, msg in (([np.nan, 0.0], "finite"), ([0.0, -1e30], "within")):
        with pytest.raises(ActionError, match=msg):
            from_env_action(np.array(v, np.float32), box, schema)


@pytest.mark.parametrize("space", [
    spaces.Discrete(4, start=-1),
    spaces.MultiBinary(5),
    spaces.MultiDiscrete([3, 2, 4]),
    spaces.Box(np.array([-1, 0, 0], np.float32), np.array([1, 1, 1], np.float32), dtype=np.float32),  # CarRacing's
    spaces.Box(-np.inf, np.inf, shape=(2,), dtype=np.float64),
])
def test_a_recorded_space_comes_back_from_json(space):
    import json

    d = json.loads(json.dumps(space_to_dict(space), allow_nan=False))  # strict JSON: inf bounds are null
    assert space_from_dict(d) == space


@pytest.mark.parametrize("d, msg", [
    (None, "expected an object"), ({"type": "Tuple"}, "expected an object"), ({"type": "Discrete"}, "bad Discrete"),
    ({"type": "Discrete", "n": 0}, "bad Discrete"), ({"type": "Box", "shape": [2], "low": [0], "high": [1, 1]}, "bad Box"),
    ({"type": "MultiDiscrete", "nvec": "ab"}, "bad MultiDiscrete"),
])
def test_a_malformed_space_description_is_a_clear_error(d, msg):
    with pytest.raises(ActionError, match=msg):
        space_from_dict(d)


def test_discrete_names_and_exclusivity():
    schema = schema_from_space(spaces.Discrete(2))
    assert schema.buttons == ("action_0", "action_1")
    with pytest.raises(ActionError, match="exclusive"):
        schema.parse({"keys": ["action_0", "action_1"]})
    # no key held means the first action
    assert to_env_action(schema.parse({}), spaces.Discrete(2), schema) == 0


def test_unsupported_space():
    with pytest.raises(ActionError, match="unsupported"):
        schema_from_space(spaces.Text(5))


def test_space_from_schema():
    from worldsim.actions import VIZDOOM_SCHEMA

    sp = space_from_schema(VIZDOOM_SCHEMA)
    assert sp["buttons"].n == 9 and sp["axes"].shape == (2,)
