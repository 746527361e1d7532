"""Keep fewer layers: copy feature stores with only some of their stacked layers (the same codec).

    python -m asrkit.bin.slice_store --src dump/wavlm_all/train.h5 dump/wavlm_all/valid.h5 \\
        --out_dir dump/wavlm_l4-8-9 --layers 4,8,9
    python -m asrkit.bin.slice_store --src dump/wavlm_all/*.h5 --out_dir dump/wavlm_top3 \\
        --model_dir exp/<tag> --top 3        # the 3 layers the trained model weighs most

Each store is written under --out_dir with its own file name, atomically. The layer numbers are
the model's (as dump_feats --ssl_layer counts them); the learned weights of a model trained on all
layers are printed at the end of its training and in its RESULTS.md.
"""
from __future__ import annotations

from pathlib import Path

from asrkit.cli import make_parser, run_main, setup_logging


def main(argv=None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("--src", required=True, nargs="+", help="feature stores with several stacked layers")
    parser.add_argument("--out_dir", required=True, help="where the sliced stores go")
    parser.add_argument("--layers", default="", help="comma-separated layers to keep, in this order")
    parser.add_argument("--model_dir", default="", help="with --top: the experiment whose weights choose")
    parser.add_argument("--top", type=int, default=0, help="keep the K layers the model weighs most")
    args = parser.parse_args(argv)
    setup_logging(args.log_file, args.verbose)
    if bool(args.layers) == bool(args.top and args.model_dir):
        parser.error("give either --layers, or --model_dir and --top")
    from asrkit.features.store import slice_layers
    from asrkit.model_io import heaviest_layers

    layers = [int(x) for x in args.layers.split(",") if x.strip()] if args.layers else \
        heaviest_layers(args.model_dir, args.top)
    for src in args.src:
        out = Path(args.out_dir) / Path(src).name
        attrs = slice_layers(src, out, layers)
        print(f"{out}: layers {attrs['layers']} of {src} ({attrs['num_utts']} utterances)")
    return 0


if __name__ == "__main__":
    run_main(main)
