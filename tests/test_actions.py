import json

import numpy as np
import pytest

from worldsim.actions import VIZDOOM_SCHEMA, ActionError, ActionSchema, load_script, parse_script


def test_parse_keys_axes_and_mouse_shorthand():
    a = VIZDOOM_SCHEMA.parse({"keys": ["forward", "attack"], "mouse": [2.5, -1]})
    assert a.buttons[VIZDOOM_SCHEMA.buttons.index("forward")] == 1
    assert a.buttons[VIZDOOM_SCHEMA.buttons.index("attack")] == 1
    assert a.buttons.sum() == 2
    np.testing.assert_array_equal(a.axes, np.array([2.5, -1], np.float32))
    b = VIZDOOM_SCHEMA.parse({"axes": {"mouse_dy": 3}})
    np.testing.assert_array_equal(b.axes, [0, 3])


def test_empty_entry_is_noop_and_roundtrip():
    assert VIZDOOM_SCHEMA.parse({}) == VIZDOOM_SCHEMA.noop()
    a = VIZDOOM_SCHEMA.parse({"keys": ["use"], "axes": {"mouse_dx": -4.0}})
    assert VIZDOOM_SCHEMA.parse(VIZDOOM_SCHEMA.to_entry(a)) == a


@pytest.mark.parametrize("entry, match", [
    ({"keys": ["jump"]}, "unknown button 'jump'"),
    ({"axes": {"wheel": 1}}, "unknown axis 'wheel'"),
    ({"mouse": [1]}, r"'mouse' must be \[dx, dy\]"),
    ({"keys": "forward"}, "'keys' must be a list"),
    ({"axes": {"mouse_dx": float("nan")}}, "finite number"),
    ({"axes": {"mouse_dx": "fast"}}, "finite number"),
    ({"mouse": [0, -1e30]}, r"axis 'mouse_dy' must be within ±1e\+06"),
    ({"mouse": [1, 2], "axes": {"mouse_dx": 1}}, "given twice"),
    ({"key": ["forward"]}, "unknown field"),
    ([1, 2], "expected an object"),
])
def test_bad_entries_are_clear_errors(entry, match):
    with pytest.raises(ActionError, match=match):
        VIZDOOM_SCHEMA.parse(entry)


def test_array_form_of_the_bridge_protocol():
    """PROTOCOL.md's compact form: one 0/1 per button and one number per axis, schema order."""
    a = VIZDOOM_SCHEMA.parse({"buttons": [1, 0, 0, 0, 0, 0, 1, 0, 0], "axes": [2.5, -1]})
    assert a == VIZDOOM_SCHEMA.parse({"keys": ["forward", "attack"], "mouse": [2.5, -1]})
    assert VIZDOOM_SCHEMA.parse({"axes": [0, 0]}) == VIZDOOM_SCHEMA.noop()  # buttons may be left out
    s = ActionSchema(buttons=("a", "b"), axes=("x",), groups=(("a", "b"),), axis_low=(-1.0,), axis_high=(1.0,))
    assert s.parse({"buttons": [True, False], "axes": [9]}).axes[0] == 1.0  # msgpack bools; clipped as named
    for entry, match in [({"buttons": [1, 1], "axes": [0]}, "exclusive"), ({"buttons": [1]}, "2 values of 0/1"),
                         ({"buttons": [0.5, 0]}, "0/1"), ({"buttons": "ab"}, "0/1"), ({"axes": [1, 2]}, "1 numbers"),
                         ({"axes": [float("inf")]}, "finite"), ({"buttons": [0, 0], "mouse": [1, 1]}, "array form")]:
        with pytest.raises(ActionError, match=match):
            s.parse(entry)


def test_exclusive_groups_and_bounds():
    s = ActionSchema(buttons=("a", "b", "c"), axes=("x",), groups=(("a", "b"),), axis_low=(-1.0,), axis_high=(1.0,))
    assert s.parse({"keys": ["a", "c"]}).buttons.tolist() == [1, 0, 1]
    with pytest.raises(ActionError, match="exclusive"):
        s.parse({"keys": ["a", "b"]})
    assert s.parse({"axes": {"x": 5}}).axes[0] == 1.0  # clipped to the bound
    assert ActionSchema.from_dict(s.to_dict()) == s


def test_script_errors_name_file_and_entry(tmp_path):
    p = tmp_path / "s.json"
    p.write_text(json.dumps([{}, {"keys": ["forward"]}, {"keys": ["fly"]}]))
    with pytest.raises(ActionError, match=r"s\.json: entry 2: unknown button 'fly'"):
        load_script(p, VIZDOOM_SCHEMA)
    p.write_text("[{]")
    with pytest.raises(ActionError, match="not valid JSON"):
        load_script(p, VIZDOOM_SCHEMA)
    with pytest.raises(ActionError, match="no such action script"):
        load_script(tmp_path / "missing.json", VIZDOOM_SCHEMA)
    with pytest.raises(ActionError, match="JSON list"):
        parse_script({"keys": []}, VIZDOOM_SCHEMA)
    p.write_text(json.dumps([{"mouse": [3, 0]}, {}]))
    acts = load_script(p, VIZDOOM_SCHEMA)
    assert len(acts) == 2 and acts[0].axes[0] == 3
