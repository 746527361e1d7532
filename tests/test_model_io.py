"""A model dir from someone else runs no code when loaded: weights are safetensors, a .pth (the resume
state, an older asrkit's weights) is read with weights_only, and a file that is not what it should be
is a DataError naming it, not a traceback."""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch

from asrkit.bin import train, transcribe
from asrkit.cli import run_main
from asrkit.errors import DataError
from asrkit.model_io import load_model, model_state, save_weights
from conftest import write_tone
from decode_fixtures import make_exp_dir
from train_fixtures import make_experiment, train_argv


class Planted:
    """Unpickling this touches `marker`: the payload a .pth from someone else could carry
    (os.system would do the same)."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return Path.touch, (self.marker,)


def test_a_planted_pickle_runs_nothing_and_is_named(tmp_path, capsys):
    exp, *_ = make_exp_dir(tmp_path)
    marker = tmp_path / "ran"
    (exp / "model.avg.safetensors").unlink()
    torch.save({"encoder.weight": Planted(marker)}, exp / "model.avg.pth")  # an older asrkit's name
    wav = write_tone(tmp_path / "x.wav")
    with pytest.raises(SystemExit) as e:  # the command line as a user runs it
        run_main(transcribe.main, ["--model_dir", str(exp), str(wav)])
    err = capsys.readouterr().err
    assert e.value.code == 2 and f"{exp / 'model.avg.pth'}: not a weights file" in err and "Traceback" not in err
    assert not marker.exists()
    # the resume state too: training refuses it and runs nothing
    paths = make_experiment(tmp_path / "train", n_train=4, n_valid=2)
    (tmp_path / "exp2").mkdir()
    torch.save({"model": {}, "optimizer": Planted(marker)}, tmp_path / "exp2" / "checkpoint.pth")
    with pytest.raises(DataError, match="checkpoint.pth: not a weights file"):
        train.main(train_argv(paths, tmp_path / "exp2"))
    assert not marker.exists()
    torch.load(exp / "model.avg.pth", weights_only=False)  # (the payload is real: an unsafe load runs it)
    assert marker.exists()


def test_weights_are_safetensors_and_an_older_pth_still_loads(tmp_path):
    exp, *_ = make_exp_dir(tmp_path)
    model = load_model(exp)[0]
    old = tmp_path / "old"
    shutil.copytree(exp, old)
    (old / "model.avg.safetensors").unlink()
    torch.save(model.state_dict(), old / "model.avg.pth")  # what asrkit wrote before safetensors
    for name in ("model.avg.safetensors", "model.avg.pth", "model.avg"):  # the old default name finds it
        again = load_model(old, name)[0]
        assert all(torch.equal(v, again.state_dict()[k]) for k, v in model.state_dict().items())
    # tied weights (the decoder's embedding and output layer) are saved and come back as such values
    tied = torch.nn.Linear(3, 3)
    state = {"a": tied.weight, "b": tied.weight, "c": torch.arange(6.0)[2:5]}
    save_weights(state, tmp_path / "t.safetensors")
    back = model_state(tmp_path / "t.safetensors")
    assert all(torch.equal(back[k], v) for k, v in state.items())


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty", "not weights"])
def test_a_damaged_weights_file_is_named(tmp_path, damage):
    exp, *_ = make_exp_dir(tmp_path)
    path = exp / "model.avg.safetensors"
    data = path.read_bytes()
    if damage == "not weights":
        path.unlink()
        path = exp / "model.avg.pth"
        torch.save([1, 2, 3], path)
    else:
        path.write_bytes({"garbage": b"PK\x03\x04 not a model", "truncated": data[:len(data) // 2],
                          "empty": b""}[damage])
    with pytest.raises(DataError, match=f"{path}: (not a valid safetensors|holds no model weights)"):
        load_model(exp)


def test_weights_of_another_model_are_refused_and_named(tmp_path):
    exp, *_ = make_exp_dir(tmp_path)
    state = model_state(exp / "model.avg.safetensors")
    save_weights({**state, "ctc.weight": state["ctc.weight"][:-1]}, exp / "model.avg.safetensors")
    with pytest.raises(DataError, match="model.avg.safetensors: the weights do not fit the model of config.yaml"):
        load_model(exp)
