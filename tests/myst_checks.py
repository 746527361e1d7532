"""What egs/myst through all stages (0-5) on the fake MyST tree must write: filterbank features, a
one-block Conformer trained for one epoch, characters, and the filtered test scored from the full
one. The run itself is the README's command, in tests/test_readme_commands.py."""
from __future__ import annotations

import json
import re

from asrkit.features.store import FeatureReader
from asrkit.fileio import load_jsonl
from corpora_fixtures import myst_utt_id


def stage_states(out: str) -> dict[int, str]:
    return {int(n): ("skipped" if "skipped" in rest else "done")
            for n, rest in re.findall(r"^\[stage (\d)\] .*?: (done.*|up to date, skipped)$", out, re.M)}


def check_myst_outputs(out: str, again: str, data, dump, exp) -> None:
    """`out`, `again`: the output of the run and of a rerun with the same options (fbank, characters,
    conf/tuning/train_conformer_tiny.yaml with one block each and one epoch, --beam 2 --maxlenratio -10:
    a one-epoch model's near-uniform CTC would otherwise grow hypotheses of the 31 s test utterance
    up to its 1550 encoder frames)."""
    assert stage_states(out) == {n: "done" for n in range(6)}, out

    # stage 1: the corpus's train (2 utterances, speed-perturbed x3), development and test (kept whole)
    stores = {s: FeatureReader(dump / "fbank_sp" / f"{s}.h5") for s in ("train", "valid", "test")}
    assert {s: len(r) for s, r in stores.items()} == {"train": 6, "valid": 1, "test": 3}
    long_test_frames = stores["test"].num_frames(myst_utt_id("000301", 3))
    for r in stores.values():
        r.close()
    # stage 3
    model = exp / "conformer_tiny_fbank_sp_char"
    assert (model / "model.avg.safetensors").is_file()
    # stage 4: the full test set, its 31 s utterance included
    test_ids = [r["utt_id"] for r in load_jsonl(data / "test.jsonl")]
    assert myst_utt_id("000301", 3) in test_ids and long_test_frames >= 3000
    decoded = [p.parent for p in model.glob("decode_*/hyp.jsonl")]
    assert len(decoded) == 1, decoded  # the test set is decoded once
    full = decoded[0]
    dtag = full.name.removeprefix("decode_test_")
    hyps = load_jsonl(full / "hyp.jsonl")
    assert sorted(r["utt_id"] for r in hyps) == sorted(test_ids)
    assert all(len(r["token_ids"]) <= 10 for r in hyps)  # the cap held
    # stage 5 and local/score_filtered.sh: the filtered test is scored from the full test's decoding
    assert [r["utt_id"] for r in load_jsonl(data / "test_filtered.jsonl")] == [myst_utt_id("000301", 1)]
    filtered = model / f"decode_test_filtered_{dtag}"
    assert not (filtered / "hyp.jsonl").exists()  # not decoded again
    assert json.loads((full / "scores.json").read_text())["word"]["snt"] == 3
    assert json.loads((filtered / "scores.json").read_text())["word"]["snt"] == 1
    results = (model / "RESULTS.md").read_text()
    assert re.search(rf"^\|decode_test_{re.escape(dtag)}\|3\|", results, re.M), results
    assert re.search(rf"^\|decode_test_filtered_{re.escape(dtag)}\|1\|", results, re.M), results
    # the filtered row names the search it was scored from
    assert re.search(rf"^\|decode_test_filtered_{re.escape(dtag)}\|joint\|2\|0.3\|model.avg.safetensors\|child\|",
                     results, re.M), results
    assert "decode_test_filtered_" in out

    # run again: every stage is up to date, and the filtered scoring gives the same table
    assert stage_states(again) == {n: "skipped" for n in range(6)}
    assert sorted(p.name for p in model.glob("decode_*")) == sorted([full.name, filtered.name])
    assert (model / "RESULTS.md").read_text().split("## conformer")[1] == results.split("## conformer")[1]
