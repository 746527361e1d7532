"""Pack a trained model to share: exactly what decoding needs, in one folder (and an archive).

    python -m asrkit.bin.export --model_dir exp/<tag> --out model/ [--archive model.tar] [--dtype float16]
    python -m asrkit.bin.export --model_dir exp/<tag> --out model/ --include_front_end   # works offline
    python -m asrkit.bin.export --model_dir exp/<tag> --out model/ --push_to_hub ORG/NAME

The package loads with `Transcriber.from_pretrained(PATH_OR_ID)` or `transcribe --model PATH_OR_ID`
(asrkit/package.py says what it holds).
"""
from __future__ import annotations

from asrkit.cli import make_parser, run_main, str2bool


def main(argv=None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--model_dir", required=True, help="the experiment dir (exp/<tag>)")
    p.add_argument("--out", required=True, help="the package folder to write")
    p.add_argument("--checkpoint", default="model.avg.safetensors", help="weights file in --model_dir")
    p.add_argument("--archive", default=None, help="also write the folder as this tar file")
    p.add_argument("--dtype", default=None, choices=("float16", "bfloat16", "float32"),
                   help="store the weights in this dtype (default: as trained; float16 halves the size)")
    p.add_argument("--include_front_end", type=str2bool, default=False,
                   help="copy the stage-1 checkpoint's files into the package (front_end/), to load with no network")
    p.add_argument("--front_end_id", default=None,
                   help="the Hugging Face Hub id of a stage-1 checkpoint that was a local folder (e.g. "
                        "openai/whisper-base): the package names it instead of the folder")
    p.add_argument("--push_to_hub", default=None, metavar="ORG/NAME",
                   help="upload the package to this Hugging Face Hub repo (created if need be)")
    args = p.parse_args(argv)
    from asrkit.cli import setup_logging
    from asrkit.package import export, push_to_hub

    setup_logging(args.log_file, args.verbose)
    out = export(args.model_dir, args.out, args.checkpoint, args.include_front_end, args.front_end_id, args.dtype,
                 args.archive)
    print(f"exported {args.model_dir} into {out}" + (f" and {args.archive}" if args.archive else ""))
    if args.push_to_hub:
        print(f"uploaded to {push_to_hub(out, args.push_to_hub)}")
    return 0


if __name__ == "__main__":
    run_main(main)
