"""Real speech: connected digits from the Free Spoken Digit Dataset, fbank features, the small
Conformer of conf/tuning trained on CPU for a few minutes through run.sh. The model must really
learn: WER on held-out takes of the training speakers is asserted; WER on speakers never seen in
training is printed (and must show more than a lookup of recordings)."""
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO

pytestmark = pytest.mark.slow  # real training through run.sh


def wer(results_md: str, test_set: str) -> float:
    row = re.search(r"^\|decode_%s_\S*?\|(\d+)\|(\d+)\|([\d.]+)\|([\d.]+)\|([\d.]+)\|([\d.]+)\|([\d.]+)\|" % test_set,
                    results_md, re.M)
    assert row, results_md
    return float(row.group(7))


def test_connected_digits_are_learned(fsdd, tmp_path):
    corpus = tmp_path / "corpus"
    subprocess.run([sys.executable, "-m", "asrkit.bin.make_connected_digits", "--fsdd", str(fsdd),
                    "--out", str(corpus), "--unseen_speakers", "theo", "yweweler"],
                   check=True, capture_output=True, timeout=600)
    p = subprocess.run([str(REPO / "run.sh"), "--raw_data", str(corpus / "manifest.jsonl"),
                        "--split_field", "split", "--test_sets", "test test_unseen",
                        "--feats_type", "fbank", "--token_type", "char", "--ngpu", "0", "--nj", "2",
                        "--train_config", str(REPO / "conf" / "tuning" / "train_conformer_tiny.yaml"),
                        "--train_args", "--num_workers 0",
                        "--decode_args", "--beam 4"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=1500,
                       env={k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"})  # all cores
    assert p.returncode == 0, p.stdout + p.stderr
    results = next(tmp_path.glob("exp/*/RESULTS.md")).read_text()
    seen, unseen = wer(results, "test"), wer(results, "test_unseen")
    print(f"\nFSDD connected digits (4 training speakers), fbank, 2-block Conformer, 16 epochs on CPU: "
          f"WER {seen:.1f}% on held-out takes of training speakers, {unseen:.1f}% on 2 unseen speakers")
    # measured with 20 epochs of this config on 2 Zen 3 cores: 2.0% and 15.7%, in 3.7 minutes
    assert seen < 15.0, results
    assert unseen < 40.0, results
