"""Speed of the joint CTC/attention search: batched over utterances x beams vs one utterance at a time
(same model, beam, inputs), and against ESPnet's BatchBeamSearch + CTCPrefixScorer when an environment
with `espnet` is given (--espnet_python), all measured in this one run; and the CTC prefix beam search
(modes ctc_prefix_beam and attention_rescoring) batched vs one utterance at a time.

    bench/setup_espnet_venv.sh            # once: ESPnet in tools/espnet-venv (not in tools/venv)
    tools/venv/bin/python bench/bench_decode.py [--quick] [--espnet_python tools/espnet-venv/bin/python]

The model has real sizes (Transformer decoder 6 x 256, 4 heads, 2048 units, BPE-sized vocabulary)
and random weights; the search itself is what is measured, on encoder outputs made so that the CTC
posteriors are peaky like a trained model's (a token every few frames, blank between). ESPnet gets the
same weights (the decoder architecture is the same), so both searches should also agree on the results.
The machine is shared: the searches take turns on each of --rounds shares of the utterances.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from machine import print_header  # noqa: E402
from asrkit.decode.beam import SearchOptions, beam_search  # noqa: E402
from asrkit.data import pad_feats  # noqa: E402
from asrkit.decode.ctc import ctc_prefix_beam_search, ctc_prefix_beam_search_batch  # noqa: E402
from asrkit.decode.runner import longest_first  # noqa: E402
from asrkit.nets import build_model  # noqa: E402

HOT = 10
ESPNET_PYTHONS = (Path(__file__).resolve().parents[1] / "tools/espnet-venv/bin/python", Path("/tmp/espnet-venv/bin/python"))


def make_model(a):
    conf = {"encoder": "bilstm", "encoder_conf": {"output_size": a.dim, "hidden_size": 8, "num_layers": 1},
            "decoder": "transformer", "decoder_conf": {"attention_heads": a.heads, "linear_units": a.linear_units,
                                                       "num_blocks": a.num_blocks, "dropout_rate": 0.0},
            "model_conf": {"ctc_weight": 0.3}}
    torch.manual_seed(0)
    return build_model(conf, 16, 1, a.vocab).eval()  # the encoder is not used: inputs are encoder outputs


def make_inputs(model, a):
    """Encoder outputs whose CTC posteriors spike on a token every ~4 frames, blank between. The spoken
    tokens come from a set of `HOT` that the decoder's output layer favours, so that (as with a trained
    model) the decoder's pre-beam holds the token the CTC wants and hypotheses end near the right length."""
    g = torch.Generator().manual_seed(1)
    emb = torch.nn.functional.normalize(torch.randn(a.vocab, a.dim, generator=g), dim=-1)
    with torch.no_grad():
        model.ctc.weight.copy_(6.0 * emb)
        model.ctc.bias.zero_()
        model.decoder.output_layer.bias[1: HOT + 1] += 6.0
        model.decoder.output_layer.bias[-1] += 6.0  # eos
    encs = []
    for _ in range(a.num_utts):
        T = int(torch.randint(a.min_frames, a.max_frames + 1, (1,), generator=g))
        labels = torch.zeros(T, dtype=torch.long)
        spikes = torch.arange(2, T, 4)
        labels[spikes] = torch.randint(1, HOT + 1, (len(spikes),), generator=g)
        encs.append(emb[labels] + 0.3 * torch.randn(T, a.dim, generator=g) / a.dim ** 0.5)
    return encs


def run_espnet(python: str, model, encs, a) -> dict:
    """ESPnet's BatchBeamSearch on the same weights and inputs, in its own environment:
    {"seconds", "hyps": [{"tokens", "score"}], "torch"}."""
    with tempfile.TemporaryDirectory() as tmp:
        inp, res = Path(tmp) / "in.pt", Path(tmp) / "out.json"
        state = {k: v for k, v in model.state_dict().items() if k.startswith(("decoder.", "ctc."))}
        conf = {k: getattr(a, k) for k in ("vocab", "dim", "heads", "linear_units", "num_blocks", "beam",
                                           "ctc_weight", "threads")}
        torch.save({"enc": encs, "state": state, "conf": {**conf, "length_bonus": 0.0, "maxlenratio": 0.0}}, inp)
        r = subprocess.run([python, str(Path(__file__).with_name("espnet_search.py")), str(inp), str(res)],
                           capture_output=True, text=True)
        if r.returncode:
            raise RuntimeError("ESPnet run failed:\n" + r.stderr[-3000:])
        return json.loads(res.read_text())


def batches(encs, batch_size):
    """Longest first, padded as decoding pads features: (indices, enc (B, T, D), lens (B,)) per batch."""
    for idx in longest_first(list(range(len(encs))), batch_size, frames=lambda i: len(encs[i])):
        enc, lens = pad_feats([encs[i].numpy() for i in idx])
        yield idx, enc, lens


def ours(model, encs, opts, batch_size):
    out = [None] * len(encs)
    t0 = time.perf_counter()
    for idx, enc, lens in batches(encs, batch_size):
        for i, hyps in zip(idx, beam_search(model, enc, lens, opts)):
            out[i] = hyps[0]
    return time.perf_counter() - t0, out


def ctc_prefix_beam(model, encs, beam, batch_size):
    """The CTC prefix beam search (mode ctc_prefix_beam, and the first pass of attention_rescoring):
    batched over utterances, or (batch_size 1) the per-utterance search. Seconds and n-best lists."""
    out, seconds = [None] * len(encs), 0.0
    for idx, enc, lens in batches(encs, batch_size):
        with torch.inference_mode():
            logp = model.ctc_log_probs(enc).float()  # not timed: the encoder's part
        t0 = time.perf_counter()
        if batch_size == 1:
            nbests = [ctc_prefix_beam_search(logp[0, : int(lens[0])], beam, model.blank)]
        else:
            nbests = ctc_prefix_beam_search_batch(logp, lens, beam, model.blank)
        seconds += time.perf_counter() - t0
        for i, nb in zip(idx, nbests):
            out[i] = nb
    return seconds, out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="fewer, shorter utterances")
    p.add_argument("--num_utts", type=int, default=32)
    p.add_argument("--min_frames", type=int, default=50, help="encoder frames (25/s after subsampling)")
    p.add_argument("--max_frames", type=int, default=200)
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2, help="the searches take turns on this many shares of the data")
    p.add_argument("--beam", type=int, default=10)
    p.add_argument("--ctc_weight", type=float, default=0.3)
    p.add_argument("--vocab", type=int, default=500)
    p.add_argument("--dim", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--linear_units", type=int, default=2048)
    p.add_argument("--num_blocks", type=int, default=6)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--espnet_python", default=next((str(p) for p in ESPNET_PYTHONS if p.is_file()), ""),
                   help="python of an environment with espnet installed (bench/setup_espnet_venv.sh)")
    a = p.parse_args()
    print_header()
    if a.quick:
        a.num_utts, a.min_frames, a.max_frames, a.batch_size = 12, 40, 100, 6
    torch.set_num_threads(a.threads)
    model = make_model(a)
    encs = make_inputs(model, a)
    frame_s = 0.04
    audio_s = sum(len(e) for e in encs) * frame_s
    opts = SearchOptions(beam=a.beam, ctc_weight=a.ctc_weight)
    ours(model, encs[:1], opts, 1)  # warm-up
    if not a.espnet_python:
        print("no ESPnet environment (bench/setup_espnet_venv.sh makes one): ESPnet not compared")
    # the machine is shared and its load drifts over minutes: the three searches take turns on each
    # round's share of the utterances, so that a change of load hits all of them alike
    n, rounds = len(encs), max(1, min(a.rounds, len(encs)))
    t = {"batch": 0.0, "one": 0.0, "espnet": 0.0, "ctc_batch": 0.0, "ctc_one": 0.0}
    h_batch, h_one, h_esp, esp_torch, nb_batch, nb_one = [], [], [], "", [], []
    for r in range(rounds):
        part = encs[r::rounds]
        dt, h = ours(model, part, opts, a.batch_size)
        t["batch"] += dt
        h_batch += h
        dt, h = ours(model, part, opts, 1)
        t["one"] += dt
        h_one += h
        dt, nb = ctc_prefix_beam(model, part, a.beam, a.batch_size)
        t["ctc_batch"] += dt
        nb_batch += nb
        dt, nb = ctc_prefix_beam(model, part, a.beam, 1)
        t["ctc_one"] += dt
        nb_one += nb
        if a.espnet_python:
            try:
                e = run_espnet(a.espnet_python, model, part, a)
            except RuntimeError as err:
                print(err)
                a.espnet_python = ""
                continue
            t["espnet"] += e["seconds"]
            h_esp += e["hyps"]
            esp_torch = e["torch"]
    mean_len = sum(len(h.tokens) for h in h_batch) / n
    print(f"{n} utterances, {audio_s:.0f} s of audio (at 25 encoder frames/s), beam {a.beam}, ctc_weight "
          f"{a.ctc_weight}, vocab {a.vocab}, decoder {a.num_blocks}x{a.dim}, {a.threads} thread(s), "
          f"batches of up to {a.batch_size}, {rounds} round(s); mean hypothesis length {mean_len:.1f} tokens")
    print(f"batched vs one at a time: same hypotheses for {sum(x.tokens == y.tokens for x, y in zip(h_batch, h_one))}/{n}")
    rows = [("asrkit batched", t["batch"]), ("asrkit one at a time", t["one"])]
    if len(h_esp) == n:
        rows.append((f"ESPnet BatchBeamSearch (torch {esp_torch})", t["espnet"]))
        agree = sum(h.tokens == x["tokens"] for h, x in zip(h_batch, h_esp))
        diff = max((abs(h.score - x["score"]) for h, x in zip(h_batch, h_esp) if h.tokens == x["tokens"]),
                   default=float("nan"))
        print(f"asrkit vs ESPnet: same hypotheses for {agree}/{n} (max score difference {diff:.2e})")
    print("\n| search | utt/s | RTF | vs one at a time | vs ESPnet |\n|---|---|---|---|---|")
    esp = t["espnet"] if len(rows) > 2 else None
    for name, sec in rows:
        vs_esp = f"{esp / sec:.2f}x" if esp else "n/a"
        print(f"| {name} | {n / sec:.2f} | {sec / audio_s:.4f} | {t['one'] / sec:.2f}x | {vs_esp} |")
    same = sum([h for h, _ in x] == [h for h, _ in y] and all(abs(p - q) < 1e-6 for (_, p), (_, q) in zip(x, y))
               for x, y in zip(nb_batch, nb_one))
    print(f"\nCTC prefix beam search (modes ctc_prefix_beam, attention_rescoring), beam {a.beam}: batched "
          f"{n / t['ctc_batch']:.1f} utt/s, one at a time {n / t['ctc_one']:.1f} utt/s: "
          f"{t['ctc_one'] / t['ctc_batch']:.2f}x; same n-best lists for {same}/{n}")


if __name__ == "__main__":
    main()
