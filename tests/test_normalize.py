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


@pytest.mark.parametrize("text, child, whisper", [
    ("twenty-one", "twenty one", "21"),             # numbers: words under child, digits under whisper
    ("I have 3 dogs", "i have three dogs", "i have 3 dogs"),
    ("the colour grey", "the colour grey", "the color gray"),  # Whisper's British -> American map
    ("Mr. Jones", "mr jones", "mister jones"),        # titles spelled out
    ("he's here and they 're not", "he's here and they're not", "he is here and they are not"),
    ("um I uh think hmm", "um i uh think hmm", "i think"),   # bare fillers: kept by child only
    ("+um+ so (( )) <laugh> *th-* the *aminal*", "so the aminal", "so the aminal"),  # MyST markup: both
])
def test_whisper_differs_from_child_where_the_conventions_do(text, child, whisper):
    assert get_normalizer("child")(text) == child
    assert get_normalizer("whisper")(text) == whisper


def test_whisper_is_whispers_own_english_normalizer():
    """On text without transcript markup, `whisper` is exactly Whisper's EnglishTextNormalizer, and
    that agrees with transformers' port given the same spelling map (two implementations, one rule)."""
    import json
    from importlib.resources import files

    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer as HFNormalizer
    from whisper_normalizer.english import EnglishTextNormalizer

    spelling = json.loads((files("whisper_normalizer") / "normalizers" / "english.json").read_text())
    assert len(spelling) > 1000 and spelling["colour"] == "color"
    reference, hf = EnglishTextNormalizer(), HFNormalizer(spelling)
    for text in ("Twenty-one colours, Mr. Jones!", "He's got 3 dogs and uh one cat.",
                 "I've seen the 1st one; it costs $5.50", "They won't go at ten past two."):
        ours = get_normalizer("whisper")(text)
        assert ours == reference(text) == hf(text), text
    # the markup rules stay switchable as for child
    assert get_normalizer("whisper", drop_fillers=False)("+um+ yes") == "yes"  # Whisper drops um itself
    assert get_normalizer("whisper", drop_truncated=False)("th- the cat") == "th the cat"
