"""Real speech and a real pretrained encoder: connected digits from the Free Spoken Digit Dataset,
the hidden states of the pretrained Whisper-base in ../shared (a checkpoint stored in float16)
against those of a random-weight Whisper of the same shape, the small Conformer of conf/tuning
trained on each for the same few epochs through run.sh (stages 0-5, the store's Whisper attributes
and the scoring under two normalizers checked on the way). The pretrained states must be learned
from far better, on a speaker that no model saw."""
import os
import re
import subprocess
import sys

import pytest

from asrkit.features.store import FeatureReader
from asrkit.fileio import load_jsonl
from asrkit.random_models import save_random_whisper
from conftest import REPO

pytestmark = pytest.mark.slow  # real training through run.sh

WHISPER_BASE = REPO.parent / "shared" / "models" / "whisper-base"


def wer(results_md: str, test_set: str) -> float:
    row = re.search(r"^\|decode_%s_\S*?\|(\d+)\|(\d+)\|([\d.]+)\|([\d.]+)\|([\d.]+)\|([\d.]+)\|([\d.]+)\|" % test_set,
                    results_md, re.M)
    assert row, results_md
    return float(row.group(7))


def test_pretrained_whisper_states_learn_digits_far_better_than_random_ones(fsdd, tmp_path):
    if not (WHISPER_BASE / "config.json").is_file():
        pytest.skip(f"the pretrained Whisper-base is not at {WHISPER_BASE}")
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, "-m", "asrkit_corpora.bin.make_connected_digits",
                    "--fsdd", str(fsdd), "--out", str(corpus), "--speakers", "jackson", "nicolas", "theo",
                    "--unseen_speakers", "theo", "--repeats", "1"], check=True, capture_output=True, timeout=600)
    config = tmp_path / "tiny.yaml"  # the tiny Conformer with a schedule for 8 short epochs
    config.write_text((REPO / "conf" / "tuning" / "train_conformer_tiny.yaml").read_text()
                      .replace("warmup_steps: 200", "warmup_steps: 40").replace("batch_bins: 6000", "batch_bins: 2500")
                      .replace("max_epoch: 16", "max_epoch: 8"))
    results = {}
    for name, model in [("pretrained", WHISPER_BASE), ("random", save_random_whisper(tmp_path / "random", "base"))]:
        # the same recipe dir: stages 0 and 2 are shared, stage 1 and 3 are per front end
        p = subprocess.run([str(REPO / "run.sh"), "--raw_data", str(corpus / "manifest.jsonl"), "--split_field",
                            "split", "--test_sets", "test_unseen", "--normalizer", "child", "--score_normalizers",
                            "whisper", "--ssl_model", str(model), "--ssl_layer", "6",
                            "--dump_args", "--whisper_input trimmed", "--token_type", "char", "--ngpu", "0",
                            "--nj", "2", "--train_config", str(config), "--train_args", "--num_workers 0",
                            "--decode_args", "--mode ctc_greedy", "--tag", name],
                           cwd=tmp_path, capture_output=True, text=True, timeout=1200,
                           env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})  # all cores
        assert p.returncode == 0, p.stdout + p.stderr
        results[name] = wer((tmp_path / "exp" / name / "RESULTS.md").read_text(), "test_unseen")
    test = load_jsonl(tmp_path / "data" / "test_unseen.jsonl")
    store = FeatureReader(tmp_path / "dump" / "whisper-base_L6" / "test_unseen.h5")
    assert store.attrs["model_type"] == "whisper" and store.attrs["whisper_input"] == "trimmed, 30 s windows"
    assert sorted(store.keys()) == sorted(r["utt_id"] for r in test)
    for r in test[:3]:  # 50 frames a second of audio
        assert abs(store[r["utt_id"]].shape[-2] - 50 * r["duration"]) <= 1
    # scored under both conventions on the same hypotheses; under whisper a spoken digit string is one number
    md = (tmp_path / "exp" / "pretrained" / "RESULTS.md").read_text()
    assert re.search(r"^\|decode_test_unseen_\S+ \[whisper\]\|%d\|%d\|" % (len(test), len(test)), md, re.M), md
    print(f"\nFSDD connected digits, 2 training speakers, 1 unseen, Whisper-base layer 6, tiny Conformer, 8 epochs: "
          f"WER {results['pretrained']:.1f}% with the pretrained states, {results['random']:.1f}% with random ones")
    # measured on a 2-core Xeon (AMX): 26.2% and 97.2%
    assert results["pretrained"] < 50.0 and results["pretrained"] < results["random"] - 30.0, results


def test_word_timings_of_a_whisper_model_on_known_word_positions(fsdd, tmp_path):
    """Whisper-base fine-tuned at full depth (egs/child's default recipe) on connected digits of three
    FSDD speakers for one short epoch; 8 files of 5 held-out takes joined with 0.2 s pauses, through
    transcribe with word timings from the decoder's cross-attention (asrkit/timing.py): the digits lie
    where their takes' speech is (bench/bench_timings.py, which also reads them openai-whisper's way)."""
    import numpy as np
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from bench_timings import digits_model, edge_errors, joined_takes

    from asrkit.transcribe import Transcriber

    if not (WHISPER_BASE / "config.json").is_file():
        pytest.skip(f"the pretrained Whisper-base is not at {WHISPER_BASE}")
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        exp = digits_model(fsdd, tmp_path, seed=0, epochs=1)
        paths, placed = joined_takes(fsdd, tmp_path)
        out = Transcriber(exp, segment=None).transcribe(paths, timings=True)
    finally:
        torch.set_num_threads(threads)
    edges = edge_errors([rec["words"] for rec in out], placed)
    print(f"\nWhisper-base, 1 epoch on FSDD connected digits: {len(edges)} of 40 held-out digits named on their take; "
          f"start off by {np.median(edges[:, 0]):.3f} s, end by {np.median(edges[:, 1]):.3f} s (medians); "
          f"{(edges.max(1) <= 0.1).mean():.0%} of them both within 0.1 s")
    # measured on a 2-core Xeon (AMX): 32 of 40; 0.059 s and 0.045 s; 47% both within 0.1 s (read at
    # the path's changes, as openai-whisper does, the starts are about 0.27 s off: bench_timings)
    assert len(edges) >= 26, (len(edges), out)
    assert np.median(edges[:, 0]) <= 0.1 and np.median(edges[:, 1]) <= 0.1, edges
