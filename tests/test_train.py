"""Single-process training (CPU): resume equals an uninterrupted run, the experiment dir, bad input,
non-finite steps, early stopping, config overrides, checkpoint averaging."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from asrkit.bin import train
from asrkit.errors import DataError
from asrkit.features.store import FeatureReader, FeatureWriter, finalize_store
from asrkit.model_io import load_model
from asrkit.model_io import average_states, best_epochs, load_checkpoint, model_state, save_weights
from asrkit.train.config import resolve_config
from train_fixtures import ATTRS, make_experiment, train_argv, utterance_feats


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """2 shared cores: a second intra-op thread only adds contention for these tiny models."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def weights(path):
    return model_state(path)


def records(exp_dir, kind):
    return [json.loads(line) for line in open(exp_dir / "train_log.jsonl") if json.loads(line)["kind"] == kind]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_experiment(tmp_path_factory.mktemp("train"))


def test_interrupted_then_resumed_equals_uninterrupted(data, tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    train.main(train_argv(data, full))
    # 3 updates per epoch, a checkpoint every 3: stopping at update 5 resumes from update 5
    # mid-epoch 2, with dropout/SpecAugment RNG, Adam moments and the warmup schedule restored
    train.main(train_argv(data, cut, "--max_steps=5"))
    state = load_checkpoint(cut / "checkpoint.pth")["state"]
    assert (state["epoch"], state["batches_done"], state["step"]) == (2, 2, 5)
    assert not (cut / "epoch2.safetensors").exists()
    train.main(train_argv(data, cut))
    a, b = weights(full / "epoch2.safetensors"), weights(cut / "epoch2.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed run diverged from the uninterrupted one"
    steps = [r["step"] for r in records(cut, "step")]
    assert steps == list(range(1, 7))  # each update logged once, the redone ones not twice
    metrics = lambda exp: [(r["train"], r["valid"]) for r in records(exp, "epoch")]  # noqa: E731
    assert metrics(cut) == metrics(full)


def test_experiment_dir_is_enough_to_decode(data, tmp_path):
    exp = tmp_path / "exp"
    train.main(train_argv(data, exp, "--max_epoch=3", "--keep_nbest_models=2", "--keep_last_models=1",
                          "--encoder_conf.linear_units=24", "--optim_conf", '{"lr": 0.005}', "--tensorboard=true"))
    config = yaml.safe_load(open(exp / "config.yaml"))
    assert config["encoder_conf"]["linear_units"] == 24 and config["encoder_conf"]["num_blocks"] == 1
    assert config["optim_conf"] == {"lr": 0.005} and config["max_epoch"] == 3 and config["vocab_size"] > 3
    history = [r for r in records(exp, "epoch")]
    assert [r["epoch"] for r in history] == [1, 2, 3]
    assert {"loss", "acc", "cer"} <= set(history[0]["valid"]) and 0 <= history[-1]["valid"]["cer"]
    assert history[-1]["train"]["loss"] < history[0]["train"]["loss"]  # it learns
    best = best_epochs(history, "acc", 2)
    kept = sorted(p.name for p in exp.glob("epoch*"))
    assert kept == sorted({f"epoch{e}.safetensors" for e in best} | {"epoch3.safetensors"})
    avg = average_states([exp / f"epoch{e}.safetensors" for e in best])
    model, tok, cfg, attrs = load_model(exp)
    assert all(torch.equal(v, avg[k]) for k, v in model.state_dict().items())
    assert attrs["feats_type"] == "fbank" and tok.vocab_size == cfg["vocab_size"]
    assert (exp / "curves.png").stat().st_size > 1000 and list((exp / "tensorboard").glob("events.out.tfevents.*"))
    assert (exp / "model.best.safetensors").resolve().name == f"epoch{best[0]}.safetensors"
    # decoding from the exp dir alone: greedy CTC on one stored utterance runs through the model
    feats = torch.from_numpy(utterance_feats("one two", 0)).float()[None]
    enc, lens = model.encode(feats, torch.tensor([feats.shape[1]]))
    assert model.ctc_log_probs(enc).shape[-1] == tok.vocab_size


def test_the_ctc_head_fitted_after_training(data, tmp_path):
    """--ctc_head_epochs: after training, the head alone learns on the averaged model's encoder output:
    the rest of model.avg stays the average, each epoch is recorded, the head of the lowest validation
    CER is kept; a rerun fits it again, the same, recorded once."""
    exp = tmp_path / "exp"
    argv = train_argv(data, exp, "--model_conf.ctc_detach=true", "--ctc_head_epochs=3", "--ctc_head_lr=0.01")
    train.main(argv)
    avg = average_states([exp / f"epoch{e}.safetensors" for e in best_epochs(records(exp, "epoch"), "acc", 2)])
    fitted = weights(exp / "model.avg.safetensors")
    assert all(torch.equal(fitted[k], avg[k]) for k in avg if not k.startswith("ctc."))
    cers = [r["valid_cer"] for r in records(exp, "ctc_head")]
    assert [r["epoch"] for r in records(exp, "ctc_head")] == [0, 1, 2, 3] and min(cers[1:]) < cers[0]
    assert not torch.equal(fitted["ctc.weight"], avg["ctc.weight"])
    train.main(argv)
    again = weights(exp / "model.avg.safetensors")
    assert all(torch.equal(again[k], v) for k, v in fitted.items()) and len(records(exp, "ctc_head")) == 4


def test_nonfinite_step_is_skipped_and_early_stop(tmp_path):
    data = make_experiment(tmp_path, n_train=12, n_valid=4)
    # one utterance of inf features (more than SpecAugment can mask): a non-finite gradient norm
    bad = np.full_like(utterance_feats("one", 3), np.inf)
    shard = tmp_path / "bad.partial" / "s.h5"
    w = FeatureWriter(shard, ATTRS)
    good = FeatureReader(data["train_feats"])
    w.write([(k, good[k]) for k in good.keys()] + [("train_005", bad)])
    w.close()
    finalize_store([shard], data["train_feats"], ATTRS, [])
    exp = tmp_path / "exp"
    # lr 0: validation never improves, so patience 1 stops after epoch 2 of 5
    train.main(train_argv(data, exp, "--max_epoch=5", "--patience=1", "--optim_conf", "{lr: 0.0}"))
    steps = records(exp, "step")
    assert sum(r["skipped"] for r in steps) == 2  # the bad batch, once per epoch
    assert "update skipped" in (exp / "train.log").read_text()
    assert all(torch.isfinite(v).all() for v in weights(exp / "checkpoint.pth").values() if v.is_floating_point())
    assert [r["epoch"] for r in records(exp, "epoch")] == [1, 2]
    assert "early stop" in (exp / "train.log").read_text()


def test_refuses_store_of_another_extractor(data, tmp_path):
    shard = tmp_path / "other.partial" / "s.h5"
    other = dict(ATTRS, feats_type="wavlm", weights_hash="x")
    w = FeatureWriter(shard, other)
    w.write([("valid_000", utterance_feats("one", 0))])
    w.close()
    finalize_store([shard], tmp_path / "other.h5", other, [])
    with pytest.raises(DataError, match="feats_type: store has 'wavlm'"):
        train.main(train_argv({**data, "valid_feats": tmp_path / "other.h5"}, tmp_path / "exp"))


def test_config_overrides_merge_nested_sections(data):
    parser = train.get_parser()
    base = [f"--{k}={data[k]}" for k in data] + ["--exp_dir=x"]
    _, opts, config = resolve_config(parser, base + ["--encoder_conf", '{"num_blocks": 4}', "--max_epoch", "7",
                                                     "--model_conf.ctc_weight=0.5", "--specaug", "null",
                                                     "--optim_conf.lr", "2e-4", "--scheduler_conf.warmup_steps=50"])
    assert config["encoder_conf"]["num_blocks"] == 4 and config["encoder_conf"]["output_size"] == 16
    assert config["model_conf"] == {"ctc_weight": 0.5, "lsm_weight": 0.1} and config["specaug"] is None
    assert opts.max_epoch == 7 and opts.batch_bins == 400  # from the YAML
    assert opts.optim_conf["lr"] == 2e-4 and opts.scheduler_conf["warmup_steps"] == 50
    assert opts.optim_conf["lr"] == 2e-4 and "max_epoch" not in config  # (options and model sections apart)
    with pytest.raises(DataError, match="unknown option --max_epochs"):
        resolve_config(parser, base + ["--max_epochs", "3"])


def test_average_states(tmp_path):
    states = [{"w": torch.tensor([1.0, 2.0]), "n": torch.tensor(3)},
              {"w": torch.tensor([3.0, 6.0]), "n": torch.tensor(4)}]
    paths = [tmp_path / "avg_0.safetensors", tmp_path / "avg_1.pth"]  # (an older asrkit's .pth among them)
    save_weights(states[0], paths[0])
    torch.save(states[1], paths[1])
    avg = average_states(paths)
    assert torch.equal(avg["w"], torch.tensor([2.0, 4.0])) and int(avg["n"]) == 3
    history = [{"epoch": e, "valid": {"acc": a, "loss": -a}} for e, a in [(1, 0.5), (2, 0.7), (3, 0.6)]]
    assert best_epochs(history, "acc", 2) == [2, 3] and best_epochs(history, "loss", 1) == [2]
