"""The recipe driver run.sh: options, help, stage skipping and rerun rules (stage 0 here)."""
import re
import subprocess
from pathlib import Path

import pytest

from asrkit.fileio import load_jsonl
from conftest import REPO

RUN = str(REPO / "run.sh")


def run_sh(cwd: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run([RUN, *args], cwd=cwd, capture_output=True, text=True, timeout=600)
    if check:
        assert p.returncode == 0, p.stdout + p.stderr
    return p


def test_help_lists_every_stage_and_option_with_defaults(tmp_path):
    out = run_sh(tmp_path, "--help").stdout
    for n, name in enumerate(["data prep", "feature dump", "token list", "training", "decoding", "scoring"]):
        assert f"{n} {name}" in out
    options = re.findall(r"^  --(\w+)", out, re.M)
    source = (REPO / "run.sh").read_text()
    assert options == re.findall(r"^opt (\w+) ", source, re.M)
    for must in ("raw_data", "feats_type", "ssl_model", "ssl_layer", "token_type", "nbpe", "train_config",
                 "decode_config", "ngpu", "nj", "tag", "test_sets", "skip_stages", "num_nodes"):
        assert must in options
    assert re.search(r"--ssl_model\s+.*\[microsoft/wavlm-base-plus\]", out)


def test_unknown_option_is_refused(tmp_path):
    p = run_sh(tmp_path, "--rawdata", "x", check=False)
    assert p.returncode == 2 and "unknown option --rawdata" in p.stderr
    # a missing config of a stage to run is named before any stage starts (it used to end run.sh silently)
    p = run_sh(tmp_path, "--raw_data", "x.jsonl", "--train_config", "conf/nope.yaml", check=False)
    assert p.returncode == 2 and "--train_config conf/nope.yaml: no such file" in p.stderr


@pytest.mark.slow
def test_stage0_on_fsdd_splits_by_speaker_then_skips_then_reruns_on_change(fsdd, tmp_path):
    args = ["--stage", "0", "--stop_stage", "0", "--raw_data", str(fsdd / "manifest.jsonl")]
    first = run_sh(tmp_path, *args).stdout
    assert "[stage 0] data preparation: done" in first
    splits = {s: load_jsonl(tmp_path / "data" / f"{s}.jsonl") for s in ("train", "valid", "test")}
    speakers = {s: {r["speaker"] for r in rs} for s, rs in splits.items()}
    assert all(speakers.values())
    assert not (speakers["train"] & speakers["valid"] or speakers["train"] & speakers["test"]
                or speakers["valid"] & speakers["test"])
    assert sum(map(len, splits.values())) == 3000
    mtime = (tmp_path / "data" / "train.jsonl").stat().st_mtime_ns

    assert "up to date, skipped" in run_sh(tmp_path, *args).stdout
    assert (tmp_path / "data" / "train.jsonl").stat().st_mtime_ns == mtime

    assert "data preparation: done" in run_sh(tmp_path, *args, "--seed", "7").stdout
    assert "data preparation: done" in run_sh(tmp_path, *args, "--seed", "7", "--force", "true").stdout
    (tmp_path / "data" / "train.jsonl").unlink()  # a missing output redoes the stage
    assert "data preparation: done" in run_sh(tmp_path, *args, "--seed", "7").stdout
    history = (tmp_path / "exp" / "logs" / "commands.sh").read_text()
    assert history.count("--raw_data") == 5 and "--seed 7" in history


def test_a_failed_stage_says_why_writes_nothing_and_is_not_marked_done(tmp_path, tiny_corpus):
    bad = tmp_path / "bad.csv"
    bad.write_text("path,words\na.wav,hi\n")
    p = run_sh(tmp_path, "--stop_stage", "0", "--raw_data", str(bad), check=False)
    assert p.returncode != 0
    assert "FAILED" in p.stderr and "manifest has no 'audio' column" in p.stderr
    assert "resume with:" in p.stderr
    assert not (tmp_path / "data" / "train.jsonl").exists()
    assert not (tmp_path / "exp" / "stamps" / "stage0.done").exists()
    assert (tmp_path / "exp" / "logs" / "stage0.log").is_file()


def test_a_dump_where_every_utterance_fails_stops_the_run(tmp_path, tiny_corpus):
    """Audio gone after stage 0: stage 1 must not write an empty store, exit 0 and let stage 2 run."""
    run_sh(tmp_path, "--stop_stage", "0", "--raw_data", str(tiny_corpus))
    for wav in (tiny_corpus.parent / "wav").rglob("*.wav"):
        wav.write_bytes(b"RIFF not a wave file any more")
    p = run_sh(tmp_path, "--stage", "1", "--stop_stage", "2", "--raw_data", str(tiny_corpus), "--feats_type", "fbank",
               check=False)
    assert p.returncode != 0 and "FAILED" in p.stderr and "[stage 2]" not in p.stdout + p.stderr
    log = (tmp_path / "exp" / "logs" / "stage1.fbank.log").read_text()
    assert re.search(r"feature extraction failed for \d+ of the \d+ utterances tried; the first, spk\d_u\d: "
                     r".*cannot read audio", log), log[-2000:]
    assert not (tmp_path / "dump" / "fbank" / "train.h5").exists()  # only the partial shard, for a resume
