"""Text normalization: named normalizers applied the same way to training text, references and hypotheses.

    normalize = get_normalizer("child")
    normalize("*Th-* they 're (( )) +um+ 3 <laugh> dogs!")  ->  "they're three dogs"

Names: `none` (whitespace only), `basic` (unicode, case, punctuation, whitespace), `child`
(children's-speech transcript markup, then `basic`: numbers become words) and `whisper` (the same
markup rules, then Whisper's English normalizer, the convention of most published MyST figures:
numbers become digits, British spellings American, contractions and titles expanded, fillers
dropped). Each rule is a flag of `Normalizer`, so a recipe can switch one off:
get_normalizer("child", digits_to_words=False).

    get_normalizer("whisper")("Mr. Smith, your colour is twenty-one, um")  ->  "mister smith your color is 21"
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass, replace
from functools import lru_cache

from asrkit.errors import DataError

_ONES = ("zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen "
         "fifteen sixteen seventeen eighteen nineteen").split()
_TENS = "_ _ twenty thirty forty fifty sixty seventy eighty ninety".split()
_SCALES = ((10**9, "billion"), (10**6, "million"), (1000, "thousand"), (100, "hundred"))
_ORDINAL_WORDS = {"one": "first", "two": "second", "three": "third", "five": "fifth", "eight": "eighth",
                  "nine": "ninth", "twelve": "twelfth"}

# Apostrophe and dash look-alikes mapped to ASCII before anything else.
_CHAR_MAP = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'",
                           "\u2013": "-", "\u2014": "-", "\u2010": "-", "\u2011": "-"})
_CONTRACTION = re.compile(r"(\w) +('(?:s|re|ve|ll|d|m|t)|n't)\b", re.IGNORECASE)


def number_to_words(n: int) -> str:
    """English cardinal: 342 -> 'three hundred forty two'."""
    if n < 0:
        return "minus " + number_to_words(-n)
    if n < 20:
        return _ONES[n]
    if n < 100:
        tens, ones = divmod(n, 10)
        return _TENS[tens] + ("" if ones == 0 else " " + _ONES[ones])
    for value, name in _SCALES:
        if n >= value:
            high, rest = divmod(n, value)
            words = number_to_words(high) + " " + name
            return words if rest == 0 else words + " " + number_to_words(rest)
    raise AssertionError("unreachable")


def ordinal_to_words(n: int) -> str:
    """English ordinal: 21 -> 'twenty first'."""
    words = number_to_words(n).split()
    last = words[-1]
    if last in _ORDINAL_WORDS:
        words[-1] = _ORDINAL_WORDS[last]
    elif last.endswith("y"):
        words[-1] = last[:-1] + "ieth"
    else:
        words[-1] = last + "th"
    return " ".join(words)


def _digits_to_words(text: str) -> str:
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text)  # 1,000 -> 1000
    text = re.sub(r"\b(\d+)(st|nd|rd|th)\b", lambda m: ordinal_to_words(int(m.group(1))), text)
    text = re.sub(r"(\d+)\.(\d+)", lambda m: f"{m.group(1)} point " + " ".join(m.group(2)), text)
    return re.sub(r"\d+", lambda m: f" {number_to_words(int(m.group()))} ", text)


@dataclass(frozen=True)
class Normalizer:
    """A normalizer is a set of rules applied in a fixed order; see the module doc for the names."""

    name: str = "basic"
    # children's-speech markup (MyST, CSLU and similar transcription conventions)
    drop_tags: bool = False            # <no_signal> <laugh> [noise] [breath]
    drop_unintelligible: bool = False  # (( )) ((guess)) (*)
    drop_fillers: bool = False         # +um+ +uh+
    unmark_mispronounced: bool = False  # *word* -> word
    drop_truncated: bool = False       # wh- th- -ing
    join_contractions: bool = False    # they 're -> they're, do n't -> don't
    digits_to_words: bool = False      # 3 -> three, 21st -> twenty first
    # basic
    unicode: bool = False              # NFKC, curly quotes and dashes to ASCII, accents kept
    lowercase: bool = False
    drop_punctuation: bool = False     # keeps apostrophes inside words
    collapse_whitespace: bool = True
    # Whisper's EnglishTextNormalizer (package whisper-normalizer, with its spelling map)
    whisper_english: bool = False

    def __call__(self, text: str) -> str:
        if self.unicode:
            text = unicodedata.normalize("NFKC", text).translate(_CHAR_MAP)
        if self.drop_tags:
            text = re.sub(r"<[^<>]*>|\[[^\[\]]*\]", " ", text)
        if self.drop_unintelligible:
            text = re.sub(r"\(\([^()]*\)\)|\(\*\)", " ", text)
        if self.drop_fillers:
            text = re.sub(r"\+[^\s+]+\+", " ", text)
        if self.unmark_mispronounced:
            text = re.sub(r"\*([^\s*]+)\*", r"\1", text)
        if self.drop_truncated:
            # a word that ends (wh-) or starts (-ing) with a hyphen was cut off by the speaker
            text = re.sub(r"(?<!\S)(?:[^\s-]+-|-[^\s-]+)(?!\S)", " ", text)
        if self.join_contractions:
            text = _CONTRACTION.sub(r"\1\2", text)
        if self.digits_to_words:
            text = _digits_to_words(text)
        if self.lowercase:
            text = text.lower()
        if self.drop_punctuation:
            # every non-letter, non-digit becomes a space, but an apostrophe inside a word stays
            text = "".join(c if (c.isalnum() or c == "'" or c.isspace()) else " " for c in text)
            text = re.sub(r"(?<!\w)'|'(?!\w)", " ", text)
        if self.whisper_english:
            text = _whisper_english()(text)
        if self.collapse_whitespace:
            text = " ".join(text.split())
        return text


@lru_cache(maxsize=1)
def _whisper_english():
    from whisper_normalizer.english import EnglishTextNormalizer

    return EnglishTextNormalizer()


_BASIC = dict(unicode=True, lowercase=True, drop_punctuation=True)
_CHILD = dict(_BASIC, drop_tags=True, drop_unintelligible=True, drop_fillers=True,
              unmark_mispronounced=True, drop_truncated=True, join_contractions=True,
              digits_to_words=True)
_WHISPER = dict(_CHILD, digits_to_words=False, whisper_english=True, **{k: False for k in _BASIC})
NORMALIZERS = {
    "none": Normalizer("none"),
    "basic": Normalizer("basic", **_BASIC),
    "child": Normalizer("child", **_CHILD),
    "whisper": Normalizer("whisper", **_WHISPER),
}


def get_normalizer(name: str, **overrides: bool) -> Normalizer:
    """The normalizer called `name`, with any rule switched on or off by keyword."""
    if name not in NORMALIZERS:
        raise DataError(f"unknown normalizer {name!r}", "--normalizer",
                        f"choose one of: {', '.join(NORMALIZERS)}")
    unknown = set(overrides) - set(Normalizer.__dataclass_fields__) - {"name"}
    if unknown:
        raise DataError(f"unknown normalizer rule(s) {sorted(unknown)}", "--normalizer_opts")
    return replace(NORMALIZERS[name], **overrides)


def parse_rule_overrides(spec: str) -> dict[str, bool]:
    """'digits_to_words=false,drop_fillers=true' -> {...}; used by the --normalizer_opts options."""
    out: dict[str, bool] = {}
    for item in filter(None, (s.strip() for s in (spec or "").split(","))):
        key, sep, value = item.partition("=")
        if not sep or value.strip().lower() not in ("true", "false", "1", "0"):
            raise DataError(f"bad rule override {item!r}", "--normalizer_opts",
                            "write rule=true or rule=false, separated by commas")
        out[key.strip()] = value.strip().lower() in ("true", "1")
    return out
