"""Same hypotheses and scores as ESPnet's BatchBeamSearch + CTCPrefixScorer, on the same weights and
inputs; runs where the separate ESPnet environment exists (bench/setup_espnet_venv.sh)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))
import bench_decode  # noqa: E402


@pytest.mark.parametrize("ctc_weight", [0.3, 0.5])
def test_joint_search_agrees_with_espnet(ctc_weight):
    python = next((p for p in bench_decode.ESPNET_PYTHONS if p.is_file()), None)
    if python is None:
        pytest.skip("no ESPnet environment (bench/setup_espnet_venv.sh)")
    a = argparse.Namespace(num_utts=4, min_frames=12, max_frames=30, vocab=40, dim=32, heads=2, linear_units=64,
                           num_blocks=2, beam=5, ctc_weight=ctc_weight, threads=1)
    model = bench_decode.make_model(a)
    encs = bench_decode.make_inputs(model, a)
    _, ours = bench_decode.ours(model, encs, bench_decode.SearchOptions(beam=a.beam, ctc_weight=ctc_weight), 4)
    theirs = bench_decode.run_espnet(str(python), model, encs, a)["hyps"]
    assert [h.tokens for h in ours] == [h["tokens"] for h in theirs]
    assert [h.score for h in ours] == pytest.approx([h["score"] for h in theirs], abs=1e-4)
    assert any(h.tokens for h in ours)
