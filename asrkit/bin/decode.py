"""Stage 4: decode a split's stored features with a trained model; writes hyp.jsonl (n-best included).

    python -m asrkit.bin.decode --config conf/decode.yaml --model_dir exp/<tag> --checkpoint model.avg.safetensors \\
        --data data/test.jsonl --feats dump/<feats_tag>/test.h5 --out exp/<tag>/decode_test_<dtag>

Utterances are decoded longest first in batches of --batch_size (utterances x beam hypotheses searched
together), by --nj processes (one per GPU with --ngpu N). An interrupted run resumes where it stopped;
hyp.jsonl appears atomically at the end. Utterances missing from the store, too short for the model,
or failing to decode are skipped and listed in <out>/skipped.txt (see asrkit/decode/runner.py).
"""
from __future__ import annotations

from pathlib import Path

from asrkit.cli import make_parser, number, run_main, setup_logging
from asrkit.decode.search import add_search_options, search_options


def main(argv=None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--model_dir", required=True, help="experiment dir (exp/<tag>)")
    parser.add_argument("--checkpoint", default="model.avg.safetensors", help="weights file in --model_dir")
    parser.add_argument("--average_nbest", type=number(int, 0), default=0,
                        help="first average the best K epochs into model.avg<K>.safetensors and decode that (0: off)")
    parser.add_argument("--data", required=True, help="split list (data/<split>.jsonl)")
    parser.add_argument("--feats", required=True, help="feature store (dump/<feats_tag>/<split>.h5)")
    parser.add_argument("--out", required=True, help="output dir (exp/<tag>/decode_<split>_<dtag>)")
    parser.add_argument("--ngpu", type=number(int, 0), default=0, help="GPUs to decode on (0: CPU)")
    parser.add_argument("--nj", type=number(int, 0), default=0, help="decoding processes (0: one per GPU, or 1 on CPU)")
    parser.add_argument("--batch_size", type=number(int, 1), default=16, help="utterances searched together")
    parser.add_argument("--num_threads", type=number(int, 0), default=0,
                        help="torch CPU threads in all (0: torch's default)")
    add_search_options(parser)
    args = parser.parse_args(argv)
    try:
        opts = search_options(args)
    except ValueError as e:
        parser.error(str(e))
    setup_logging(args.log_file or str(Path(args.out) / "decode.log"), args.verbose)
    import torch

    from asrkit.decode.runner import decode_split

    if args.num_threads:
        torch.set_num_threads(args.num_threads)
    info = decode_split(args.model_dir, args.data, args.feats, args.out, opts, args.checkpoint,
                        args.batch_size, args.ngpu, args.nj, args.average_nbest, args.verbose)
    if info is None:  # a torchrun/srun rank other than 0: it decoded its share, rank 0 reports
        return 0
    speed = f"{info.decoded_now / info.decode_seconds:.2f} utt/s" if info.decode_seconds else "nothing new decoded"
    print(f"decoded {info.utterances} utterances into {Path(args.out) / 'hyp.jsonl'}; RTF {info.rtf:.4f} "
          f"({info.decode_seconds:.1f} s for {info.audio_seconds:.1f} s of audio, {speed})")
    return 0


if __name__ == "__main__":
    run_main(main)
