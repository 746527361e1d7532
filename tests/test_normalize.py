import pytest

from asrkit.errors import DataError
from asrkit.normalize import get_normalizer, number_to_words, ordinal_to_words, parse_rule_overrides

child = get_normalizer("child")
basic = get_normalizer("basic")


@pytest.mark.parametrize("text, expected", [
    ("and <no_signal> then [noise] the <laugh>", "and then the"),           # tags
    ("it was (( )) a ((maybe)) big (*) dog", "it was a big dog"),           # unintelligible
    ("+um+ the +uh+ magnet", "the magnet"),                                  # fillers
    ("the *magnet* sticks", "the magnet sticks"),                           # mispronounced
    ("the wh- what th- -ing", "the what"),                                   # truncated words
    ("they 're sure it 's ok we do n't", "they're sure it's ok we don't"),  # split contractions
    ("3 dogs and 21 cats in 1,000 years", "three dogs and twenty one cats in one thousand years"),
    ("the 2nd and 3rd", "the second and third"),
    ("It's   A  Cat!!", "it's a cat"),                                       # basic rules apply too
])
def test_child_rules(text, expected):
    assert child(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("Hello,  World!", "hello world"),
    ("don\u2019t stop", "don't stop"),            # curly apostrophe
    ("'quoted' word", "quoted word"),             # quote marks are not apostrophes
    ("caf\u00e9 ＡＢＣ", "café abc"),                # NFKC folds full-width letters, accents kept
    ("well-known fact", "well known fact"),
    ("<laugh> 3", "laugh 3"),                     # basic knows no markup and keeps digits
])
def test_basic_rules(text, expected):
    assert basic(text) == expected


def test_none_only_collapses_whitespace():
    assert get_normalizer("none")("  Hello,\tWorld!  ") == "Hello, World!"


def test_numbers():
    assert number_to_words(0) == "zero"
    assert number_to_words(115) == "one hundred fifteen"
    assert number_to_words(2_000_019) == "two million nineteen"
    assert ordinal_to_words(1) == "first" and ordinal_to_words(20) == "twentieth"
    assert ordinal_to_words(103) == "one hundred third"


def test_rule_overrides():
    keep_digits = get_normalizer("child", **parse_rule_overrides("digits_to_words=false"))
    assert keep_digits("+um+ 3 dogs") == "3 dogs"


def test_unknown_names_are_clear_errors():
    with pytest.raises(DataError, match="unknown normalizer 'kids'.*none, basic, child"):
        get_normalizer("kids")
    with pytest.raises(DataError, match="unknown normalizer rule"):
        get_normalizer("basic", shout=True)
    with pytest.raises(DataError, match="rule=true"):
        parse_rule_overrides("digits_to_words")
