"""Transcribe audio files with a trained experiment dir (same feature extractor as in training).

    python -m asrkit.bin.transcribe --model_dir exp/<tag> a.flac b.wav [--json]
    python -m asrkit.bin.transcribe --model model/ a.flac         # a shared model: a folder, archive or Hub id

Prints one line per file, `<file>\\t<text>`; with --json one JSON object per file, with word timings
(a Whisper decoder's from its cross-attention, another model's from CTC forced alignment: asrkit/timing.py). With --output_dir, also a file per input named after it, in each of
--output_format's formats: txt (the text), srt and vtt (subtitles from the word timings), json.
A file that cannot be read is reported and the others go on (exit code 1). A file longer than
--max_segment seconds (a lesson, a session) is cut at its pauses into segments decoded as utterances
(their texts joined; timings on the file's clock; with --json, its "segments").

    python -m asrkit.bin.transcribe --model_dir exp/<tag> session1.wav --output_dir subs --output_format srt,txt
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

from asrkit.cli import make_parser, number, run_main, setup_logging, str2bool
from asrkit.decode.search import DecodeOptions, add_search_options, search_options
from asrkit.device import first_device
from asrkit.segment import SegmentOptions
from asrkit.subtitles import FORMATS, write_transcripts


def main(argv=None) -> int:
    parser = make_parser(__doc__)
    parser.add_argument("audio", nargs="+", help="audio files (any format soundfile reads; resampled to 16 kHz)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--model_dir", help="experiment dir (exp/<tag>)")
    source.add_argument("--model", help="a shared model (asrkit.bin.export): its folder, its archive, or a Hugging "
                                        "Face Hub id (org/name); decoded with its reported search unless "
                                        "search options other than the defaults are given")
    parser.add_argument("--checkpoint", default="model.avg.safetensors", help="weights file in --model_dir")
    parser.add_argument("--json", action="store_true", help="JSON lines with score and word timings")
    parser.add_argument("--ngpu", type=number(int, 0, 1), default=0, help="1: run on the GPU")
    parser.add_argument("--batch_size", type=number(int, 1), default=8, help="files decoded together")
    parser.add_argument("--output_dir", default=None, help="write <stem>.<format> per input file here")
    parser.add_argument("--output_format", default="txt",
                        help=f"comma-separated, of {', '.join(FORMATS)} (with --output_dir)")
    parser.add_argument("--max_segment", type=number(float, 0), default=None,
                        help="a file longer than this (seconds) is cut at its pauses (Silero VAD) into segments "
                             "no longer than this, decoded as utterances; 0: decode every file whole. These three "
                             "default to the model's training utterances (its utterances.json: a quarter over the 99th "
                             f"percentile of their durations), else {SegmentOptions.max_seconds:g}")
    parser.add_argument("--min_segment", type=number(float, 0), default=None,
                        help="a shorter segment joins a neighbour (less than --max_segment; default: the shortest "
                             f"training utterance, else {SegmentOptions.min_seconds:g})")
    parser.add_argument("--segment_pad", type=number(float, 0), default=None,
                        help="seconds of context kept before and after each segment's speech (default: the "
                             "training utterances' own silence before and after their speech, else "
                             f"{SegmentOptions.pad:g})")
    parser.add_argument("--progress", type=str2bool, default=True, help="progress bars on stderr")
    add_search_options(parser)
    args = parser.parse_args(argv)
    setup_logging(args.log_file, args.verbose)
    formats = [f for f in args.output_format.replace(" ", "").split(",") if f]
    if bad := sorted(set(formats) - set(FORMATS)):
        parser.error(f"--output_format {','.join(bad)}: choose from {', '.join(FORMATS)}")
    stems = [Path(a).stem for a in args.audio]
    if args.output_dir and (same := sorted({s for s in stems if stems.count(s) > 1})):
        parser.error(f"--output_dir: several inputs are named {', '.join(same)}: their transcripts would "
                     "overwrite each other; transcribe them into separate dirs")
    given = {k: v for k, v in [("max_seconds", args.max_segment), ("min_seconds", args.min_segment),
                               ("pad", args.segment_pad), ("pad_after", args.segment_pad)] if v is not None}
    try:  # every option checked before the model loads or any file is decoded
        opts = search_options(args)
        if args.max_segment is not None and args.min_segment is not None and args.max_segment > 0:
            SegmentOptions(args.max_segment, args.min_segment)
    except ValueError as e:
        parser.error(str(e))
    segment = None if args.max_segment == 0 else given
    from asrkit.transcribe import Transcriber

    if args.model:  # its reported search, unless the options say another
        asr = Transcriber.from_pretrained(args.model, first_device(args.ngpu), segment,
                                          None if opts == DecodeOptions() else opts)
    else:
        asr = Transcriber(args.model_dir, args.checkpoint, first_device(args.ngpu), segment, opts)
    failed = 0
    timings = args.json or bool(args.output_dir and {"srt", "vtt", "json"} & set(formats))
    for rec in asr.transcribe(args.audio, timings=timings, batch_size=args.batch_size, progress=args.progress):
        failed += "error" in rec
        if args.output_dir and "error" not in rec:
            write_transcripts(rec, args.output_dir, formats)
        if args.json:
            print(json.dumps(rec, ensure_ascii=False))
        elif "error" in rec:
            print(f"error: {rec['error']}", file=sys.stderr)
        else:
            print(f"{rec['file']}\t{rec['text']}")
    return 1 if failed else 0


if __name__ == "__main__":
    run_main(main)
