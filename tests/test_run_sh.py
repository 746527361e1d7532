"""The recipe driver run.sh: options, help, stage skipping and rerun rules (stage 0 here)."""
import os
import re
import signal
import subprocess
import sys
import time
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


def test_a_missing_input_is_named_with_what_to_run(tmp_path, tiny_corpus):
    """--raw_data with a typo, or --stage 3 before stages 1-2: a message, never a silent exit."""
    p = run_sh(tmp_path, "--raw_data", str(tiny_corpus) + "l", check=False)
    assert p.returncode == 2 and f"--raw_data {tiny_corpus}l: no such file or directory" in p.stderr
    run_sh(tmp_path, "--stop_stage", "0", "--raw_data", str(tiny_corpus))
    p = run_sh(tmp_path, "--stage", "3", "--raw_data", str(tiny_corpus), "--feats_type", "fbank", "--token_type",
               "char", check=False)
    assert p.returncode == 1 and "[stage 3] training" in p.stderr
    assert "dump/fbank/train.h5 does not exist" in p.stderr and "Stage 1 writes it" in p.stderr
    assert "--stage 1)" in p.stderr


def test_paths_with_spaces_and_force_redoes_the_dump(tmp_path, tiny_corpus):
    """A corpus and a recipe dir whose paths hold spaces run through stages 0-2; --force true redoes
    stage 1's stores (it used to verify and keep them)."""
    corpus = tmp_path / "my corpus"
    tiny_corpus.parent.rename(corpus)
    work = tmp_path / "my recipe"
    work.mkdir()
    args = ["--stop_stage", "2", "--raw_data", str(corpus / "manifest.jsonl"), "--feats_type", "fbank",
            "--token_type", "char", "--nj", "1", "--dumpdir", "feature stores"]
    out = run_sh(work, *args).stdout
    assert all(f"[stage {n}]" in out and "FAILED" not in out for n in range(3))
    store = work / "feature stores" / "fbank" / "train.h5"
    assert store.is_file() and (work / "data" / "token_list" / "char" / "tokens.txt").is_file()
    assert "up to date, skipped" in run_sh(work, *args).stdout
    before = store.stat().st_mtime_ns
    run_sh(work, *args, "--stage", "1", "--stop_stage", "1", "--force", "true")
    log = (work / "exp" / "logs" / "stage1.fbank.log").read_text()
    assert store.stat().st_mtime_ns != before and "nothing to do" not in log


def write_script(path: Path, body: str) -> str:
    path.write_text("#!/usr/bin/env bash\n" + body)
    path.chmod(0o755)
    return str(path)


def node(cwd: Path, rank: int, *args: str) -> subprocess.Popen:
    return subprocess.Popen([RUN, "--num_nodes", "2", "--node_rank", str(rank), "--node_wait_timeout", "6", *args],
                            cwd=cwd, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True)


def test_node1_stops_when_node0_failed_before_it_started_or_was_killed(tmp_path, tiny_corpus):
    """Node 1 waits for node 0's stage 0. Node 0 failed first (its failure marker is older than node 1),
    or node 0 is SIGKILLed (no marker at all): node 1 stops within --node_wait_timeout, saying why."""
    bad = tmp_path / "bad.csv"
    bad.write_text("path,words\na.wav,hi\n")
    first = node(tmp_path, 0, "--raw_data", str(bad))
    assert first.wait(timeout=120) == 1
    t0 = time.time()
    second = node(tmp_path, 1, "--raw_data", str(bad))
    out = second.communicate(timeout=60)[0]
    assert second.returncode == 1 and time.time() - t0 < 30, out
    assert "stage 0 failed on node 0" in out and "node 0 stopped (exited 1)" in out, out

    hang = write_script(tmp_path / "hang.sh", "sleep 300\n")
    killed = node(tmp_path, 0, "--local_data", hang)
    beat = tmp_path / "exp" / "stamps" / ".node0.heartbeat"
    deadline = time.time() + 60
    while not (beat.is_file() and beat.read_text().startswith("alive")) and time.time() < deadline:
        time.sleep(0.1)
    waiting = node(tmp_path, 1, "--local_data", hang)
    time.sleep(1)
    os.killpg(killed.pid, signal.SIGKILL)  # node 0 and all it runs, with no chance to say so
    t0 = time.time()
    out = waiting.communicate(timeout=60)[0]
    assert waiting.returncode == 1 and time.time() - t0 < 30, out
    assert "node 0 has sent no heartbeat for 6s" in out, out


def test_a_failed_stage_leaves_no_process_behind(tmp_path):
    """A stage that fails leaving a process that ignores SIGTERM, in a session of its own and parentless
    (as a torchrun worker whose torchrun died): run.sh ends it."""
    pid_file = tmp_path / "stubborn.pid"
    stubborn = ("import os, signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                f"open({str(pid_file)!r}, 'w').write(str(os.getpid())); time.sleep(300)")
    script = write_script(tmp_path / "fails.sh", f"setsid {sys.executable} -c \"{stubborn}\" &\n"
                          f"while [ ! -s {pid_file} ]; do sleep 0.1; done\nexit 3\n")
    p = subprocess.run([RUN, "--stop_stage", "0", "--local_data", script], cwd=tmp_path, capture_output=True,
                       text=True, timeout=120, env={**os.environ, "ASRKIT_KILL_GRACE": "1"})
    assert p.returncode == 1 and "FAILED (exit 3)" in p.stderr
    pid = int(pid_file.read_text())
    assert not Path(f"/proc/{pid}").exists() or Path(f"/proc/{pid}/stat").read_text().split()[2] == "Z"
