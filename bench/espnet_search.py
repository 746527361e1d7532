"""ESPnet's side of bench_decode.py; runs in a separate environment that has `espnet` installed.

    <espnet-venv>/bin/python bench/espnet_search.py inputs.pt result.json

Loads the same decoder/CTC weights and encoder outputs as ours, runs espnet.nets.batch_beam_search.
BatchBeamSearch with CTCPrefixScorer one utterance at a time (ESPnet batches the hypotheses of one
utterance), and writes the wall time and the hypotheses.
"""
import json
import logging
import sys
import time

import torch
from espnet2.asr.ctc import CTC
from espnet2.asr.decoder.transformer_decoder import TransformerDecoder
from espnet.nets.batch_beam_search import BatchBeamSearch
from espnet.nets.scorers.ctc import CTCPrefixScorer
from espnet.nets.scorers.length_bonus import LengthBonus

logging.disable(logging.INFO)


def espnet_key(k: str) -> str:
    """asrkit's decoder/CTC parameter names -> ESPnet's (same architecture)."""
    if k.startswith("ctc."):
        return "ctc_lo." + k[4:]
    k = k[len("decoder."):]
    return (k.replace("embed.weight", "embed.0.weight").replace("feed_forward.0.", "feed_forward.w_1.")
            .replace("feed_forward.3.", "feed_forward.w_2."))


def main(inp: str, out: str) -> None:
    d = torch.load(inp, weights_only=True)
    c = d["conf"]
    torch.set_num_threads(c["threads"])
    V, D = c["vocab"], c["dim"]
    dec = TransformerDecoder(V, D, attention_heads=c["heads"], linear_units=c["linear_units"],
                             num_blocks=c["num_blocks"], dropout_rate=0.0, positional_dropout_rate=0.0,
                             self_attention_dropout_rate=0.0, src_attention_dropout_rate=0.0)
    ctc = CTC(V, D)
    mods = {"decoder": dec, "ctc": ctc}
    for name, mod in mods.items():
        mod.load_state_dict({espnet_key(k): v for k, v in d["state"].items()
                             if k.startswith(name + ".")}, strict=True)
    for ln in [m for m in dec.modules() if isinstance(m, torch.nn.LayerNorm)]:
        ln.eps = 1e-5  # ESPnet uses 1e-12; asrkit's (torch's) default is 1e-5
    eos = V - 1
    search = BatchBeamSearch(
        scorers={"decoder": dec, "ctc": CTCPrefixScorer(ctc, eos), "length_bonus": LengthBonus(V)},
        weights={"decoder": 1 - c["ctc_weight"], "ctc": c["ctc_weight"], "length_bonus": c["length_bonus"]},
        beam_size=c["beam"], vocab_size=V, sos=eos, eos=eos, pre_beam_score_key="full").eval()
    hyps = []
    with torch.no_grad():
        search(d["enc"][0], maxlenratio=c["maxlenratio"], minlenratio=0.0)  # warm-up
        t0 = time.perf_counter()
        for x in d["enc"]:
            best = search(x, maxlenratio=c["maxlenratio"], minlenratio=0.0)[0]
            hyps.append({"tokens": best.yseq[1:-1].tolist(), "score": float(best.score)})
        seconds = time.perf_counter() - t0
    with open(out, "w") as f:
        json.dump({"seconds": seconds, "hyps": hyps, "torch": torch.__version__}, f)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
