"""Stage 1: extract features of split lists into HDF5 stores (resumable, batched, multi-GPU).

    python -m asrkit.bin.dump_feats --data data/train.jsonl --out dump/wavlm_l9/train.h5 \
        --feats_type wavlm --ssl_model microsoft/wavlm-base-plus --ssl_layer 9 \
        --speed_perturb "0.9 1.0 1.1" --nj 4 --ngpu 1
    python -m asrkit.bin.dump_feats --data data/train.jsonl data/valid.jsonl --out dump/x/train.h5 dump/x/valid.h5 \
        --speed_perturb "0.9 1.0 1.1" --speed_perturb_data data/train.jsonl      # one model load for both

Several --data lists go to as many --out stores, in order, with the model loaded once.

A killed run continues where it stopped when rerun; a finished store that matches the options is
verified and left alone. Unreadable utterances are skipped and listed in <out>.skipped.tsv.
"""
from __future__ import annotations

import os
from dataclasses import fields

# Before torch is loaded: large CPU tensors on transparent huge pages (torch's allocator madvises
# them). A batch's activations are hundreds of MB allocated afresh, and on a VM that gives huge
# pages only on request their first-touch page faults took a fifth to a quarter of the time.
os.environ.setdefault("THP_MEM_ALLOC_ENABLE", "1")

from asrkit.cli import make_parser, number, run_main, setup_logging, str2bool, usable_cores
from asrkit.features.codecs import CODECS
from asrkit.features.dump import dump_lists
from asrkit.features.extractors import WHISPER_INPUTS, ExtractorSpec
from asrkit.ssl import LAYER_SPEC_HELP


def get_parser():
    p = make_parser(__doc__)
    p.add_argument("--data", required=True, nargs="+",
                   help="split list(s) (jsonl: utt_id, audio, [duration, start, end])")
    p.add_argument("--out", required=True, nargs="+", help="the HDF5 store to write for each --data")
    p.add_argument("--feats_type", default="wavlm", choices=["wavlm", "fbank"],
                   help="wavlm: hidden states of an HF speech encoder (WavLM, wav2vec2, HuBERT), 50 frames/s; "
                        "fbank: 80-dim Kaldi-compatible log-mel filterbank, 25 ms windows every 10 ms (100 frames/s)")
    p.add_argument("--ssl_model", default="microsoft/wavlm-base-plus", help="HF model id or local dir")
    p.add_argument("--ssl_layer", default="9",
                   help=LAYER_SPEC_HELP + ". Default 9: layer-wise studies of Base-size WavLM/HuBERT (Pasad et "
                        "al. 2023; SUPERB ASR weights) find phone and word content peaking in the upper-middle "
                        "layers and falling off in the last ones, and one layer keeps the store small")
    p.add_argument("--speed_perturb", default="",
                   help='speed factors, e.g. "0.9 1.0 1.1": copies stored as <utt_id>-sp0.9 (training split only)')
    p.add_argument("--speed_perturb_data", nargs="*", default=None,
                   help="which of the --data lists get --speed_perturb (default: all of them)")
    p.add_argument("--nj", type=number(int, 0), default=usable_cores(),
                   help="parallel jobs (default: the CPU cores this process may use). On CPU: processes that "
                        "each read and extract whole batches with one torch thread (0: the main process "
                        "alone, with torch's threads); on GPU: workers reading audio for each GPU")
    p.add_argument("--ngpu", type=number(int, 0), default=0, help="GPUs (0: CPU); batches are dealt out among them")
    p.add_argument("--dtype", default="float16", choices=["float16", "float32"], help="storage dtype")
    p.add_argument("--compute_dtype", default="auto", choices=["auto", "float32", "float16", "bfloat16"],
                   help="model compute dtype (autocast; the first conv layer stays float32); auto: float16 on "
                        "GPU, bfloat16 on a CPU with native bf16 (AVX512-BF16 or AMX), else float32")
    p.add_argument("--batch_seconds", type=number(float, 0), default=0.0,
                   help="padded audio per batch in seconds; 0: 200 on GPU, 20 on CPU")
    p.add_argument("--max_seconds", type=number(float, above=1), default=60.0,
                   help="longer utterances are run in overlapping windows of this length (bounds memory)")
    p.add_argument("--n_mels", type=number(int, 1), default=80, help="fbank bins")
    p.add_argument("--whisper_input", default=WHISPER_INPUTS[0], choices=WHISPER_INPUTS,
                   help="Whisper encoders: each utterance padded to a 30 s window, as Whisper was trained (the "
                        "states of its own frames kept), or trimmed to its own frames (up to 15x less compute on "
                        "short utterances, but states the encoder never made in training)")
    p.add_argument("--force", type=str2bool, default=False, help="redo a finished store")
    p.add_argument("--store_codec", default="none", choices=CODECS,
                   help="how the store keeps the arrays: none (in --dtype), int8 (a scale per layer and channel, "
                        "about half of float16), int8f (a scale per layer and frame)")
    return p


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    setup_logging(args.log_file, args.verbose)
    spec = ExtractorSpec(**{f.name: getattr(args, f.name) for f in fields(ExtractorSpec) if hasattr(args, f.name)})
    dump_lists(args.data, args.out, spec, args.speed_perturb_data, args.speed_perturb, nj=args.nj, ngpu=args.ngpu,
               batch_seconds=args.batch_seconds, max_seconds=args.max_seconds, force=args.force,
               store_codec=args.store_codec)
    return 0


if __name__ == "__main__":
    run_main(main)
