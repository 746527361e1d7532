"""The whole recipe through run.sh: stages 0-5 on a tiny corpus, rerun rules, a killed run resumed."""
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
from decode_fixtures import assert_same_hyps

pytestmark = pytest.mark.slow  # whole pipelines through run.sh

TINY = ["--feats_type", "fbank", "--token_type", "char", "--nj", "2", "--ngpu", "0",
        "--train_config", str(REPO / "conf" / "tuning" / "train_conformer_tiny.yaml"),
        "--decode_args", "--beam 2 --batch_size 8"]
TRAIN_ARGS = ("--max_epoch 2 --batch_bins 3000 --num_workers 0 --encoder_conf.num_blocks 1 "
              "--decoder_conf.num_blocks 1 --keep_nbest_models 2 --preflight_batches 1")


def run_sh(cwd: Path, *args: str) -> str:
    p = subprocess.run([str(REPO / "run.sh"), *args], cwd=cwd, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout


def stage_states(out: str) -> dict[int, str]:
    return {int(n): ("skipped" if "skipped" in rest else "done")
            for n, rest in re.findall(r"^\[stage (\d)\] .*?: (done.*|up to date, skipped)$", out, re.M)}


def test_all_stages_then_rerun_does_nothing_then_a_deleted_output_is_redone(tiny_corpus, tmp_path):
    args = ["--raw_data", str(tiny_corpus), *TINY, "--train_args", TRAIN_ARGS]
    first = run_sh(tmp_path, *args)
    assert stage_states(first) == {n: "done" for n in range(6)}
    exp = tmp_path / "exp" / "conformer_tiny_fbank_char"
    test_ids = {r["utt_id"] for r in load_jsonl(tmp_path / "data" / "test.jsonl")}
    decode_dir = next(exp.glob("decode_test_*"))
    assert {r["utt_id"] for r in load_jsonl(decode_dir / "hyp.jsonl")} == test_ids
    results = (exp / "RESULTS.md").read_text()
    assert re.search(r"\|decode_test_\S*\|%d\|" % len(test_ids), results), results
    assert "Results (" in first and "|" in first.split("Results (")[1]

    assert stage_states(run_sh(tmp_path, *args)) == {n: "skipped" for n in range(6)}

    store = tmp_path / "dump" / "fbank" / "test.h5"
    store.unlink()
    # the deleted store is made again; it comes out byte-identical, so nothing after it is redone
    assert stage_states(run_sh(tmp_path, *args)) == {0: "skipped", 1: "done", 2: "skipped", 3: "skipped",
                                                    4: "skipped", 5: "skipped"}
    assert store.is_file()
    # a stage whose options change is redone, and so is every stage that reads what it wrote
    changed = stage_states(run_sh(tmp_path, *args, "--token_type", "word"))
    assert changed == {0: "skipped", 1: "skipped", 2: "done", 3: "done", 4: "done", 5: "done"}
    assert (tmp_path / "exp" / "conformer_tiny_fbank_word" / "RESULTS.md").is_file()


def test_training_killed_mid_run_resumes_and_finishes(tiny_corpus, tmp_path):
    common = ["--raw_data", str(tiny_corpus), *TINY]
    run_sh(tmp_path, *common, "--stop_stage", "2")
    args = [*common, "--stage", "3", "--stop_stage", "3",
            "--train_args", TRAIN_ARGS.replace("--max_epoch 2", "--max_epoch 6") + " --save_interval_steps 1"]
    proc = subprocess.Popen([str(REPO / "run.sh"), *args], cwd=tmp_path, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    exp = tmp_path / "exp" / "conformer_tiny_fbank_char"
    deadline = time.time() + 300
    while not (exp / "checkpoint.pth").exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)
    assert proc.poll() is None, "training finished before it could be killed: make it longer"
    time.sleep(1.0)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "exp" / "stamps" / "stage3.conformer_tiny_fbank_char.done").exists()
    assert not (exp / "model.avg.safetensors").exists()

    out = run_sh(tmp_path, *args)
    assert stage_states(out) == {3: "done"}
    log = (tmp_path / "exp" / "logs" / "stage3.conformer_tiny_fbank_char.log").read_text()
    assert re.search(r"resum", log, re.I), log[-2000:]
    epochs = [r for r in load_jsonl(exp / "train_log.jsonl") if r.get("kind") == "epoch"]
    assert [r["epoch"] for r in epochs][-1] == 6
    assert (exp / "model.avg.safetensors").is_file()

    # other options: the finished experiment is not resumed but kept aside, and training starts afresh
    out = run_sh(tmp_path, *args[:-1], args[-1].replace("--max_epoch 6", "--max_epoch 1"))
    assert stage_states(out) == {3: "done"}
    assert len(list(exp.parent.glob(exp.name + ".old-*"))) == 1
    epochs = [r["epoch"] for r in load_jsonl(exp / "train_log.jsonl") if r.get("kind") == "epoch"]
    assert epochs == [1]


def test_two_nodes_run_each_stage_once_and_share_the_distributed_ones(tiny_corpus, tmp_path):
    """README's manual multi-node form, with two "nodes" on localhost: two run.sh processes with
    --num_nodes 2 --node_rank 0/1 in one shared directory, c10d on 127.0.0.1, gloo. Node 0 alone
    prepares the data, the token list and the scores; both take part in the dump, the training and
    the decoding, each process doing a share; nothing races. A rerun finds every stage up to date on
    both nodes; the store and the hypotheses equal one process's."""
    import socket

    import numpy as np

    from asrkit.features.dump import dump
    from asrkit.features.extractors import ExtractorSpec
    from asrkit.features.store import FeatureReader

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    args = ["--raw_data", str(tiny_corpus), *TINY, "--nj", "0", "--train_args", TRAIN_ARGS, "--num_nodes", "2",
            "--master_addr", "127.0.0.1", "--master_port", str(port)]

    def two_nodes() -> list[str]:
        procs = [subprocess.Popen([str(REPO / "run.sh"), *args, "--node_rank", str(r)], cwd=tmp_path, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
                 for r in (0, 1)]
        try:
            outs = [p.communicate(timeout=600)[0] for p in procs]
        finally:
            for p in procs:
                if p.poll() is None:
                    os.killpg(p.pid, signal.SIGKILL)
        assert [p.returncode for p in procs] == [0, 0], "\n".join(outs)
        return outs

    node0, node1 = two_nodes()
    assert stage_states(node0) == {n: "done" for n in range(6)}, node0
    for n in (1, 3, 4):  # both nodes ran the distributed stages ...
        assert re.search(rf"^\[stage {n}\] .*: done in \d+s$", node1, re.M), node1
    for n in (0, 2, 5):  # ... and node 1 waited for node 0's others (or found them done)
        assert not re.search(rf"^\[stage {n}\] .*: done in", node1, re.M), node1
    logs = tmp_path / "exp" / "logs"
    assert sorted(p.name for p in logs.glob("*.node1.log")) == [
        "stage1.fbank.node1.log", "stage3.conformer_tiny_fbank_char.node1.log",
        "stage4.conformer_tiny_fbank_char.node1.log"]
    dump_log = (logs / "stage1.fbank.node1.log").read_text()
    assert re.search(r"process 1: [1-9]\d* utterances to extract", dump_log), dump_log  # its share of a split
    decode_log = (logs / "stage4.conformer_tiny_fbank_char.node1.log").read_text()
    assert "rank 1 of 2" in decode_log and "with 2 process(es)" in decode_log, decode_log

    again = two_nodes()
    assert [stage_states(out) for out in again] == [{n: "skipped" for n in range(6)}] * 2, again

    one = tmp_path / "one.h5"
    dump(str(tmp_path / "data" / "test.jsonl"), str(one), ExtractorSpec(feats_type="fbank"), nj=0, progress=False)
    a, b = FeatureReader(one), FeatureReader(tmp_path / "dump" / "fbank" / "test.h5")
    assert sorted(a.keys()) == sorted(b.keys()) and all(np.array_equal(a[k], b[k]) for k in a.keys())
    exp = tmp_path / "exp" / "conformer_tiny_fbank_char"
    two = next(exp.glob("decode_test_*"))
    subprocess.run([sys.executable, "-m", "asrkit.bin.decode", "--config", str(REPO / "conf" / "decode.yaml"),
                    "--model_dir", str(exp), "--data", str(tmp_path / "data" / "test.jsonl"), "--feats", str(one),
                    "--out", str(tmp_path / "one"), "--beam", "2"], check=True, capture_output=True, cwd=tmp_path)
    hyps = [{r["utt_id"]: r for r in load_jsonl(d / "hyp.jsonl")} for d in (two, tmp_path / "one")]
    assert_same_hyps(*hyps)
    assert len(hyps[0]) == len(load_jsonl(tmp_path / "data" / "test.jsonl"))
