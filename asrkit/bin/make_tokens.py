"""Stage 2: make the token list (char, word or sentencepiece bpe/unigram) from training text, or
write a Whisper checkpoint's own (whisper)."""
from __future__ import annotations

import logging

from asrkit.cli import make_parser, run_main, setup_logging
from asrkit.errors import DataError
from asrkit.fileio import read_jsonl
from asrkit.tokenizer import TEXT_STYLES, TOKEN_TYPES, build_token_list

log = logging.getLogger("asrkit.make_tokens")


def get_parser():
    parser = make_parser(__doc__)
    parser.add_argument("--data", required=True, nargs="+", help="split list(s), e.g. data/train.jsonl")
    parser.add_argument("--out", required=True, help="token dir, e.g. data/token_list/bpe_unigram300")
    parser.add_argument("--token_type", choices=TOKEN_TYPES, default="bpe")
    parser.add_argument("--nbpe", type=int, default=300, help="sentencepiece vocabulary size")
    parser.add_argument("--bpemode", choices=("unigram", "bpe"), default="unigram")
    parser.add_argument("--character_coverage", type=float, default=1.0,
                        help="sentencepiece: share of characters covered (1.0 for small alphabets)")
    parser.add_argument("--text_field", default="text", help="the (normalized) text field of the list")
    parser.add_argument("--ssl_model", default=None,
                        help="token_type whisper: the Whisper checkpoint (dir or model id) whose tokenizer to use")
    parser.add_argument("--text_style", choices=TEXT_STYLES, default="as_is",
                        help="token_type whisper: train transcripts as they are (as_is), or lowercase ones as "
                             "sentences, as Whisper writes (sentence)")
    return parser


def read_texts(paths, field: str = "text") -> list[str]:
    """Texts of the split lists; utterances without text are skipped and reported."""
    texts, skipped = [], []
    for path in paths:
        for lineno, rec in read_jsonl(path):
            text = rec.get(field)
            if not isinstance(text, str) or not text.strip():
                skipped.append(f"{path}:{lineno} ({rec.get('utt_id', '?')})")
                continue
            texts.append(text.strip())
    if skipped:
        log.warning("skipped %d utterance(s) with no %r: %s", len(skipped), field,
                    ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""))
    if not texts:
        raise DataError(f"no utterance has a non-empty {field!r} field", " ".join(map(str, paths)),
                        "run stage 0 (data prep) or set --text_field")
    return texts


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    setup_logging(args.log_file, args.verbose)
    texts = read_texts(args.data, args.text_field)
    tok = build_token_list(texts, args.token_type, args.out, nbpe=args.nbpe, bpemode=args.bpemode,
                           character_coverage=args.character_coverage, ssl_model=args.ssl_model,
                           text_style=args.text_style)
    for text in texts:
        tok.encode(text)
    n_unk = sum(tok.unk_counts.values())
    log.info("wrote %s: %d tokens (%s) from %d utterances", args.out, tok.vocab_size,
             args.token_type, len(texts))
    if n_unk:
        examples = ", ".join(f"{u!r} x{n}" for u, n in tok.unk_counts.most_common(5))
        log.warning("%d unit(s) of the training text map to <unk> (e.g. %s); lower "
                    "--character_coverage keeps rare characters out on purpose", n_unk, examples)
    return 0


if __name__ == "__main__":
    run_main(main)
