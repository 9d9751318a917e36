"""The `worldsim` command itself: what it says when it is given nothing or a bad subcommand."""

import pytest

from worldsim.cli import main as cli_main


def test_a_bare_command_lists_every_subcommand(capsys):
    assert cli_main([]) == 2
    err = capsys.readouterr().err
    for name in ("record", "data", "train", "export", "eval", "bench", "play", "serve", "keys", "cutscene", "info"):
        assert f"    {name} " in err, name


def test_an_unknown_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as e:  # argparse's own exit
        cli_main(["fly"])
    assert e.value.code == 2
    assert "invalid choice: 'fly'" in capsys.readouterr().err


@pytest.mark.parametrize("group, subs", [("record", ("vizdoom", "gym", "bridge")), ("data", ("info",))])
def test_a_group_without_its_subcommand_lists_them(group, subs, capsys):
    assert cli_main([group]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"usage: worldsim {group}")
    for name in subs:
        assert f"    {name} " in err, name
