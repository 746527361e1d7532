"""asrkit.bin.decode end to end on a tiny asrkit.nets model and a real feature store."""
from __future__ import annotations

import json

import pytest
import torch

from asrkit.bin import decode
from asrkit.decode import DecodeOptions
from asrkit.fileio import load_jsonl, write_jsonl
from asrkit.model_io import model_state
from decode_fixtures import assert_same_hyps, make_exp_dir


def run(exp, data, feats, out, *extra):
    decode.main([f"--model_dir={exp}", f"--data={data}", f"--feats={feats}", f"--out={out}",
                 "--config=conf/decode.yaml", "--beam=3", *extra])
    return {r["utt_id"]: r for r in load_jsonl(out / "hyp.jsonl")}


def test_decode_writes_nbest_and_does_not_depend_on_batch_size_or_processes(tmp_path, capsys):
    exp, data, feats, tok = make_exp_dir(tmp_path)
    records = load_jsonl(data)
    write_jsonl(data, records + [{"utt_id": "ghost", "audio": "x.wav", "text": "one"}])  # not in the store
    a = run(exp, data, feats, tmp_path / "a", "--batch_size=4", "--nbest=2")
    assert "RTF" in capsys.readouterr().out
    b = run(exp, data, feats, tmp_path / "b", "--batch_size=1", "--nbest=2", "--nj=2")  # two processes
    assert sorted(a) == sorted(r["utt_id"] for r in records)
    assert_same_hyps(a, b)
    for utt, r in a.items():
        assert len(r["nbest"]) == 2 and r["nbest"][0]["score"] >= r["nbest"][1]["score"]
        assert r["text"] == tok.decode(r["token_ids"]) and len(r["tokens"]) == len(r["token_ids"])
    assert (tmp_path / "a" / "skipped.txt").read_text().startswith("ghost\t")
    info = json.loads((tmp_path / "a" / "decode_info.json").read_text())
    assert info["utterances"] == len(records) and info["beam"] == 3 and info["rtf"] > 0


def test_a_killed_decoding_resumes_where_it_stopped(tmp_path, monkeypatch):
    """Killed after 2 utterances (and mid-line on a third): the rerun decodes only the rest and ends
    as an uninterrupted run; a rerun with other options starts afresh."""
    from asrkit.decode import runner

    exp, data, feats, _ = make_exp_dir(tmp_path)
    full = run(exp, data, feats, tmp_path / "full", "--mode=ctc_greedy")
    out, real, calls = tmp_path / "resumed", runner.hyp_record, []

    def dying(*args):
        if len(calls) == 2:
            raise KeyboardInterrupt("killed")
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(runner, "hyp_record", dying)
    with pytest.raises(KeyboardInterrupt):
        run(exp, data, feats, out, "--mode=ctc_greedy", "--batch_size=1")
    part = out / ".partial" / "part0.jsonl"
    with open(part, "a") as f:
        f.write('{"utt_id": "cut by the kill", "te')
    assert not (out / "hyp.jsonl").exists() and len(part.read_text().splitlines()) == 3

    def counting(*args):
        calls.append(args[0])
        return real(*args)

    monkeypatch.setattr(runner, "hyp_record", counting)
    resumed = run(exp, data, feats, out, "--mode=ctc_greedy")
    assert len(calls) == len(full) and sorted(calls) == sorted(full)  # 2 before the kill, the rest now
    assert_same_hyps(resumed, full)  # (batches of 1 before the kill, 16 after: scores to a tolerance)
    assert not (out / ".partial").exists()
    assert json.loads((out / "decode_info.json").read_text())["decoded_now"] == len(full) - 2

    calls.clear()
    monkeypatch.setattr(runner, "hyp_record", dying)
    with pytest.raises(KeyboardInterrupt):
        run(exp, data, feats, tmp_path / "other", "--mode=ctc_greedy", "--batch_size=1")
    monkeypatch.setattr(runner, "hyp_record", counting)
    calls.clear()
    run(exp, data, feats, tmp_path / "other", "--mode=ctc_prefix_beam")
    assert len(calls) == len(full)  # other options: nothing kept


def test_a_resumed_decoding_of_another_model_starts_afresh(tmp_path, monkeypatch):
    """A decoding of model A killed in its --out; then model B (another dir, the same weights file name)
    decodes into the same --out: none of A's hypotheses is kept and credited to B."""
    from asrkit.decode import runner

    exp_a, data, feats, _ = make_exp_dir(tmp_path / "a", seed=0)
    exp_b = make_exp_dir(tmp_path / "b", seed=1)[0]
    real, calls = runner.hyp_record, []

    def dying(*args):
        if len(calls) == 3:
            raise KeyboardInterrupt("killed")
        calls.append(args[0])
        return real(*args)

    out = tmp_path / "out"
    monkeypatch.setattr(runner, "hyp_record", dying)
    with pytest.raises(KeyboardInterrupt):
        run(exp_a, data, feats, out, "--batch_size=1")
    monkeypatch.setattr(runner, "hyp_record", real)
    assert_same_hyps(run(exp_b, data, feats, out), run(exp_b, data, feats, tmp_path / "b_alone"))
    assert json.loads((out / "decode_info.json").read_text())["decoded_now"] == len(load_jsonl(data))


def test_average_nbest_averages_the_best_epochs(tmp_path):
    exp, data, feats, _ = make_exp_dir(tmp_path, epochs=3)
    write_jsonl(exp / "train_log.jsonl", [{"kind": "epoch", "epoch": e, "valid": {"acc": acc}}
                                          for e, acc in [(1, 0.5), (2, 0.9), (3, 0.7)]])
    run(exp, data, feats, tmp_path / "d", "--average_nbest=2", "--mode=ctc_greedy")
    avg = model_state(exp / "model.avg2.safetensors")
    e2, e3 = model_state(exp / "epoch2.safetensors"), model_state(exp / "epoch3.safetensors")
    key = next(k for k, v in avg.items() if v.is_floating_point())
    assert torch.allclose(avg[key], (e2[key] + e3[key]) / 2)
    assert json.loads((tmp_path / "d" / "decode_info.json").read_text())["checkpoint"] == "model.avg2.safetensors"


def test_bad_options_and_mismatched_store_are_clear_errors(tmp_path, capsys):
    from asrkit.errors import DataError

    exp, data, feats, _ = make_exp_dir(tmp_path)
    with pytest.raises(SystemExit) as e:  # before the model loads: argparse's message, exit 2
        run(exp, data, feats, tmp_path / "x", "--ctc_weight=1.5")
    assert e.value.code == 2 and "ctc_weight must be in [0, 1], got 1.5" in capsys.readouterr().err
    attrs = json.loads((exp / "feats_attrs.json").read_text())
    (exp / "feats_attrs.json").write_text(json.dumps({**attrs, "feats_type": "wavlm"}))
    with pytest.raises(DataError, match="feats_type"):
        run(exp, data, feats, tmp_path / "y")


def test_ctc_only_model_decodes_with_ctc_modes_and_refuses_joint(tmp_path):
    from asrkit.errors import DataError

    exp, data, feats, _ = make_exp_dir(tmp_path, ctc_only=True)
    with pytest.raises(DataError, match="needs the attention decoder"):
        run(exp, data, feats, tmp_path / "joint")
    greedy = run(exp, data, feats, tmp_path / "greedy", "--mode=ctc_greedy")
    beam = run(exp, data, feats, tmp_path / "beam", "--mode=ctc_prefix_beam", "--nbest=3")
    assert sorted(greedy) == sorted(beam) and all(len(r["nbest"]) >= 1 for r in beam.values())
    assert all(r["nbest"][0]["score"] >= r["nbest"][-1]["score"] for r in beam.values())


def test_conf_decode_yaml_states_the_defaults():
    """The search defaults are defined once (DecodeOptions); conf/decode.yaml, the recipes' config that
    users edit, spells them out and must not drift from them."""
    from dataclasses import fields

    import yaml

    from conftest import REPO

    conf = yaml.safe_load((REPO / "conf" / "decode.yaml").read_text())
    defaults = {f.name: f.default for f in fields(DecodeOptions)}
    assert {k: v for k, v in conf.items() if k in defaults} == defaults


def test_a_decoding_that_fails_for_every_utterance_stops_with_the_cause(tmp_path, monkeypatch):
    from asrkit.decode import runner
    from asrkit.failures import SystematicFailure
    from asrkit.features.store import FeatureReader

    exp, data, feats, _ = make_exp_dir(tmp_path, n_test=12)
    real, calls = runner.decode_batch, []

    def broken(model, feats, lens, opts, keep=None):
        calls.append(len(feats))
        raise RuntimeError("expected scalar type Float but found Half")

    monkeypatch.setattr(runner, "decode_batch", broken)
    with pytest.raises(SystematicFailure, match=r"decoding failed for 10 of the 10 utterances tried; the first, .*: "
                                                r"decoding failed: expected scalar type Float"):
        run(exp, data, feats, tmp_path / "a", "--batch_size=1")
    assert len(calls) == 10 and not (tmp_path / "a" / "hyp.jsonl").exists()
    first = sorted(r["utt_id"] for r in load_jsonl(data))[0]

    def one_bad(model, feats, lens, opts, keep=None):  # one utterance's features break the search: it alone is skipped
        if lens.tolist() == [lens_of[first]]:
            raise RuntimeError("this one is bad")
        return real(model, feats, lens, opts, keep)

    lens_of = {k: FeatureReader(feats).num_frames(k) for k in FeatureReader(feats).keys()}
    assert list(lens_of.values()).count(lens_of[first]) == 1
    monkeypatch.setattr(runner, "decode_batch", one_bad)
    hyps = run(exp, data, feats, tmp_path / "b", "--batch_size=1")
    assert len(hyps) == 11 and (tmp_path / "b" / "skipped.txt").read_text().startswith(f"{first}\tdecoding failed")
