"""--device on every command that runs a model: checked when the flags are read, one line when wrong."""

import pytest
import torch

from worldsim.cli import main as cli_main
from worldsim.device import DeviceError, check_device, pick_device

NO_CUDA = not torch.cuda.is_available()


def test_check_device_spells_devices_as_the_code_compares_them():
    assert check_device("cpu") == "cpu" and check_device(" cpu:0 ") == "cpu"
    assert pick_device(None) == ("cuda" if torch.cuda.is_available() else "cpu")
    assert pick_device("cpu") == "cpu"


@pytest.mark.parametrize("name, msg", [("tpu", "expected cpu, cuda or cuda:N"), ("", "expected cpu, cuda or cuda:N"),
                                       ("meta", "expected cpu, cuda or cuda:N"), ("cuda:x", "expected cpu, cuda")])
def test_names_torch_or_worldsim_cannot_run_on_are_refused(name, msg):
    with pytest.raises(DeviceError, match=msg):
        check_device(name)


def test_a_gpu_the_machine_lacks_is_refused():
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(DeviceError, match="not available" if NO_CUDA else "numbered from 0"):
        check_device(f"cuda:{n}")
    if NO_CUDA:
        with pytest.raises(DeviceError, match="CUDA is not available"):
            pick_device("cuda")


@pytest.mark.parametrize("argv", [
    ["play", "--headless", "--ticks", "1"],
    ["serve"],
    ["cutscene", "demos/cutscene.json", "--out", "unused"],
    ["bench", "--ticks", "1"],
    ["train", "--config", "tiny"],
])
def test_every_model_command_refuses_a_bad_device_before_loading(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli_main([*argv, "--device", "tpu"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert "argument --device: device 'tpu': expected cpu, cuda or cuda:N" in err and "Traceback" not in err


def test_eval_takes_a_device_and_refuses_a_bad_one(capsys, tmp_path):
    from worldsim.eval.registry import load_model

    assert cli_main(["eval", "--checkpoint", "default", "--data", "tests", "--device", "tpu"]) == 2
    assert "eval: error: device 'tpu'" in capsys.readouterr().err
    model = load_model("default", device="cpu")  # what `worldsim eval --device cpu` loads
    assert model.device == "cpu"
    if NO_CUDA:
        assert cli_main(["eval", "--checkpoint", "default", "--device", "cuda"]) == 2
        assert "CUDA is not available" in capsys.readouterr().err
