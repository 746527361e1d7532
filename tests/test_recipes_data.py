"""Recipes egs/{mini,child,myst}: stage 0 through their run.sh (paths from any folder, corpus options,
the user's options winning), with every output sent to a temporary folder."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from asrkit.fileio import load_jsonl, write_jsonl
from conftest import REPO
from corpora_fixtures import make_fake_myst, myst_utt_id


def recipe(name: str, cwd: Path, out: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    dirs = ["--datadir", str(out / "data"), "--dumpdir", str(out / "dump"), "--expdir", str(out / "exp")]
    p = subprocess.run(["bash", str(REPO / "egs" / name / "run.sh"), "--stop_stage", "0", *dirs, *args],
                       cwd=cwd, capture_output=True, text=True, timeout=600, env={**os.environ, "MYST": ""})
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


@pytest.mark.slow
def test_myst_recipe_stage0_keeps_the_corpus_split(tmp_path):
    make_fake_myst(tmp_path / "LDC2021S05")
    out = tmp_path / "run"
    # a relative --myst_root, from the caller's folder
    first = recipe("myst", tmp_path, out, "--myst_root", "LDC2021S05").stdout
    assert "[stage 0] data preparation: done" in first
    splits = {s: {r["utt_id"]: r for r in load_jsonl(out / "data" / f"{s}.jsonl")} for s in ("train", "valid", "test")}
    assert {s: len(v) for s, v in splits.items()} == {"train": 2, "valid": 1, "test": 3}
    assert splits["train"][myst_utt_id("000101", 1)]["text"] == "um the magnet sticks to the metal"
    assert splits["test"][myst_utt_id("000301", 3)]["duration"] == pytest.approx(31.0)  # test is kept whole
    assert (out / "data" / "local" / "test_filtered.ids").read_text().split() == [myst_utt_id("000301", 1)]
    assert "up to date, skipped" in recipe("myst", tmp_path, out, "--myst_root", "LDC2021S05").stdout

    ids = tmp_path / "paper_test.list"
    ids.write_text(myst_utt_id("000301", 2) + "\n")
    again = recipe("myst", tmp_path, out, "--myst_root=LDC2021S05", "--test_list", "paper_test.list").stdout
    assert "data preparation: done" in again  # another test list: stage 0 redone
    assert (out / "data" / "local" / "test_filtered.ids").read_text().split() == [myst_utt_id("000301", 2)]

    missing = recipe("myst", tmp_path, out, check=False)
    assert missing.returncode == 2 and "--myst_root" in missing.stderr


def test_child_recipe_stage0_with_a_relative_manifest(tiny_corpus, tmp_path):
    out = tmp_path / "run"
    cwd = tiny_corpus.parent.parent
    recipe("child", cwd, out, "--raw_data", str(tiny_corpus.relative_to(cwd)))
    records = [r for s in ("train", "valid", "test") for r in load_jsonl(out / "data" / f"{s}.jsonl")]
    assert len(records) == 24
    assert all(r["text"] == r["text_raw"].lower().rstrip(".") for r in records)  # the child normalizer
    log = (out / "exp" / "logs" / "commands.sh").read_text()
    assert "--normalizer child" in log and "--speed_perturb 0.9\\ 1.0\\ 1.1" in log


@pytest.mark.slow
def test_mini_recipe_stage0_generates_corpus_and_wavlm(tmp_path):
    out = tmp_path / "run"
    recipe("mini", tmp_path, out, "--local_data", "local/data.sh --num_speakers 6 --utts_per_speaker 3")
    manifest = load_jsonl(out / "data" / "local" / "manifest.jsonl")
    assert len(manifest) == 18 and len({r["speaker"] for r in manifest}) == 6
    assert (out / "data" / "local" / "wavlm-random-small" / "config.json").is_file()
    splits = {s: load_jsonl(out / "data" / f"{s}.jsonl") for s in ("train", "valid", "test")}
    speakers = {s: {r["speaker"] for r in rs} for s, rs in splits.items()}
    assert sum(map(len, splits.values())) == 18 and all(speakers.values())
    assert not (speakers["train"] & speakers["test"] or speakers["train"] & speakers["valid"])


def test_myst_filtered_test_is_scored_from_the_full_test_decoding(tmp_path):
    data, exp = tmp_path / "data", tmp_path / "exp"
    refs = [("u1", "the magnet sticks", True), ("u2", "it goes around the sun", True), ("u3", "yes it", False)]
    write_jsonl(data / "test.jsonl", [{"utt_id": u, "audio": "x.wav", "duration": 1.0, "speaker": "s", "text": t,
                                        "text_raw": t, "test_filtered": f} for u, t, f in refs])
    decode = exp / "model" / "decode_test_beam10"
    hyps = {"u1": "the magnet sticks", "u2": "it goes around the sun", "u3": "no"}  # only u3 is wrong
    write_jsonl(decode / "hyp.jsonl", [{"utt_id": u, "text": t} for u, t in hyps.items()])
    (decode / "decode_info.json").write_text(json.dumps({"mode": "attention", "beam": 10, "ctc_weight": 0.0,
                                                          "checkpoint": "model.avg.safetensors", "rtf": 0.02, "utterances": 3}))
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    subprocess.run([sys.executable, "-m", "asrkit.bin.score", "--data", str(data / "test.jsonl"),
                    "--hyp", str(decode / "hyp.jsonl")], check=True, capture_output=True, env=env)
    p = subprocess.run(["bash", str(REPO / "egs" / "myst" / "local" / "score_filtered.sh"), str(data), str(exp)],
                       capture_output=True, text=True, env=env)
    assert p.returncode == 0, p.stderr
    assert [r["utt_id"] for r in load_jsonl(data / "test_filtered.jsonl")] == ["u1", "u2"]
    full = json.loads((decode / "scores.json").read_text())
    filtered = json.loads((exp / "model" / "decode_test_filtered_beam10" / "scores.json").read_text())
    assert full["wer"] > 0 and filtered["wer"] == 0
    results = (exp / "model" / "RESULTS.md").read_text()
    assert "decode_test_beam10" in results and "decode_test_filtered_beam10" in results
    # the filtered scoring keeps the decoding's search settings, not its timings or counts
    info = json.loads((exp / "model" / "decode_test_filtered_beam10" / "decode_info.json").read_text())
    assert info["beam"] == 10 and info["mode"] == "attention" and "rtf" not in info and "utterances" not in info
    assert info["scored_from"] == str(decode.resolve()) and info["data"] == str((data / "test_filtered.jsonl").resolve())
    assert "|decode_test_filtered_beam10|attention|10|0.0|model.avg.safetensors|" in results
