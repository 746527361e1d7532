"""A fake MyST tree (the LDC2021S05 layout, markup-laden .trn files) and what scanning it must give."""
from __future__ import annotations

from pathlib import Path

from conftest import write_tone

# (partition, student, utterance number, seconds, transcript or None for no .trn, expected outcome)
FAKE_MYST = [
    ("train", "000101", 1, 1.5, "um the *magnet* (( )) sticks to +um+ the <laugh> metal", "kept"),
    ("train", "000101", 2, 1.0, "<no_signal>", "marked <no_signal>"),
    ("train", "000101", 3, 1.0, None, "no transcript"),
    ("train", "000101", 4, 1.0, "yes (( )) it", "fewer than 3 words"),
    ("train", "000101", 5, 31.0, "and then the circuit is closed", "longer than 30s"),
    ("train", "000101", 6, 1.0, "<DISCARD> i think so", "marked <discard>"),
    ("train", "000101", 7, 1.0, b"\xff\xfe the bad bytes", "unreadable"),
    ("train", "000102", 1, 2.0, "they 're (( )) attracted to it 3 times", "kept"),
    ("development", "000201", 1, 1.2, "the wh- water evaporates", "kept"),
    ("development", "000201", 2, 1.0, "(( )) +uh+", "no words in transcript"),
    ("development", "000201", 3, 1.0, None, "no transcript"),
    ("test", "000301", 1, 1.5, "it goes (( )) around the sun", "kept"),
    ("test", "000301", 2, 1.0, "yes it", "kept"),          # short, but test is kept whole
    ("test", "000301", 3, 31.0, "a long long answer", "kept"),  # long, but test is kept whole
    ("test", "000302", 4, 1.0, "<no_signal> so", "marked <no_signal>"),
    ("test", "000302", 5, 1.0, None, "no transcript"),
]


def myst_utt_id(student: str, n: int) -> str:
    return f"myst_{student}_2014-02-27_09-29-01_LS_1.1_{n:03d}"


def make_fake_myst(root: Path) -> Path:
    """<root>/myst_child_conv_speech/data/<partition>/<student>/<session>/<utt>.flac (+ .trn)."""
    data = root / "myst_child_conv_speech" / "data"
    for k, (part, student, n, seconds, trn, _) in enumerate(FAKE_MYST):
        utt = myst_utt_id(student, n)
        session = data / part / student / utt.rsplit("_", 1)[0]
        flac = session / f"{utt}.flac"
        session.mkdir(parents=True, exist_ok=True)
        write_tone(flac, seconds=seconds, freq=180 + 10 * k, seed=k)
        if isinstance(trn, bytes):
            flac.with_suffix(".trn").write_bytes(trn)
        elif trn is not None:
            flac.with_suffix(".trn").write_text(trn + "\n", encoding="utf-8")
    return root
