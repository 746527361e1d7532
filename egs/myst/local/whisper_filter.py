#!/usr/bin/env python3
"""MyST's "filtered" test: decode the test set zero-shot with Whisper and drop an utterance whose WER
is above --max_wer percent or whose reference has fewer than --min_words words (both after the
`whisper` normalizer); writes the id list that egs/myst takes as --test_list.

    python local/whisper_filter.py --data data/local/manifest.jsonl --model openai/whisper-large-v2 \\
        --out data/local/whisper_filter      # -> data/local/whisper_filter/test_filtered.ids

out/hyp.tsv holds the hypotheses (a rerun decodes only what it lacks), out/filter.tsv the verdict on
every utterance, out/filter.json the rule, its parameters and the counts. local/data.sh runs it when
egs/myst/run.sh is given --whisper_filter MODEL.
"""
from asrkit.cli import make_parser, run_main, setup_logging
from asrkit_corpora.whisper_filter import whisper_filter


def main(argv=None) -> int:
    p = make_parser(__doc__)
    p.add_argument("--data", required=True, help="a manifest or split list (utt_id, audio, text[, split])")
    p.add_argument("--split", default="test", help="the records of this split (a list without a split field: all)")
    p.add_argument("--model", default="openai/whisper-large-v2", help="Whisper checkpoint id or local dir")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--max_wer", type=float, default=50.0, help="drop above this zero-shot WER (percent)")
    p.add_argument("--min_words", type=int, default=3, help="drop references with fewer words")
    p.add_argument("--batch_size", type=int, default=16, help="utterances decoded together")
    p.add_argument("--device", default=None, help="cuda or cpu (default: cuda when there is one)")
    args = p.parse_args(argv)
    setup_logging(args.log_file, args.verbose)
    kept = whisper_filter(args.data, args.model, args.out, args.split, args.max_wer, args.min_words,
                          batch_size=args.batch_size, device=args.device)
    print(f"{len(kept)} utterances kept: {args.out}/test_filtered.ids (rule and counts: {args.out}/filter.json)")
    return 0


if __name__ == "__main__":
    run_main(main)
