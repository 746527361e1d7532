"""The offline demo corpus: eSpeak NG voices as speakers, sentences from a small fixed grammar.

Speakers differ in accent, voice variant, pitch, pitch range and speaking rate; about 40% are
child-like (formants raised 15-30%, F0 about 240-360 Hz, wider range, slower), and some get noise
at a chosen SNR. Everything follows
from the seed, and speaker i and its utterances are the same whatever the number of speakers, so a
bigger corpus extends a smaller one. Ages are labels of the voice group (child 5-11, adult 20-60)
so that per-age scoring has something to break down; they are not measured.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Optional

import numpy as np
from tqdm import tqdm

from asrkit.audio import SAMPLE_RATE, resample
from asrkit_corpora.espeak import CHILD_VARIANTS, Synthesizer, Voice
from asrkit_corpora.writer import CorpusWriter
from asrkit.errors import DataError

DIGITS = "zero one two three four five six seven eight nine".split()
VERBS = ("find", "show", "take", "move")
COLORS = ("red", "green", "blue", "yellow")
OBJECTS = ("ball", "box", "cat", "dog", "book")
GRAMMARS = ("digits", "commands", "mixed")
ACCENTS = ("en-us", "en", "en-gb-x-rp", "en-gb-scotland", "en-us-nyc", "en-029", "en-gb-x-gbclan",
           "en-gb-x-gbcwmd")
NOISES = ("white", "pink")


@dataclass(frozen=True)
class Speaker:
    speaker: str
    group: str            # child / adult
    gender: str           # f / m (of the eSpeak variant; a label only for child voices)
    age: int
    voice: Voice
    snr: Optional[float]  # dB, None = clean
    noise: Optional[str]


def make_speaker(index: int, seed: int, child_share: float = 0.4, noisy_share: float = 0.3,
                 snr_range: tuple[float, float] = (10.0, 20.0)) -> Speaker:
    """Speaker `index` of the corpus of `seed` (independent of how many speakers there are)."""
    rng = np.random.default_rng([seed, 1, index])
    accent = str(rng.choice(ACCENTS))
    child = rng.random() < child_share
    gender = "f" if rng.random() < 0.5 else "m"
    if child:  # raised formants (a shorter vocal tract), high and lively pitch, a slower rate
        voice = Voice(f"{accent}+{rng.choice(list(CHILD_VARIANTS))}", pitch=int(rng.integers(25, 71)),
                      range=int(rng.integers(60, 96)), rate=int(rng.integers(130, 171)))
        age = int(rng.integers(5, 12))
    else:
        variant = f"{gender}{rng.integers(1, 6 if gender == 'f' else 8)}"
        voice = Voice(f"{accent}+{variant}", pitch=int(rng.integers(25, 61)), range=int(rng.integers(30, 71)),
                      rate=int(rng.integers(150, 211)))
        age = int(rng.integers(20, 61))
    noisy = rng.random() < noisy_share
    snr = round(float(rng.uniform(*snr_range)), 1) if noisy else None
    noise = str(rng.choice(NOISES)) if noisy else None
    group = "child" if child else "adult"
    return Speaker(f"{group}{index:03d}", group, gender, age, voice, snr, noise)


def make_sentence(rng: np.random.Generator, grammar: str = "mixed") -> str:
    """Connected digits (2-5) or '<verb> the <color> <object>'; 24 words in all."""
    if grammar not in GRAMMARS:
        raise DataError(f"unknown grammar {grammar!r}", "--grammar", f"choose one of {', '.join(GRAMMARS)}")
    if grammar == "digits" or (grammar == "mixed" and rng.random() < 0.5):
        return " ".join(rng.choice(DIGITS, size=int(rng.integers(2, 6))))
    return f"{rng.choice(VERBS)} the {rng.choice(COLORS)} {rng.choice(OBJECTS)}"


def make_noise(rng: np.random.Generator, n: int, kind: str) -> np.ndarray:
    """Unit-power white or pink (1/f power) noise."""
    noise = rng.standard_normal(n)
    if kind == "pink":
        spec = np.fft.rfft(noise)
        spec[1:] /= np.sqrt(np.arange(1, spec.size))
        spec[0] = 0
        noise = np.fft.irfft(spec, n)
    return noise / np.sqrt(np.mean(noise**2) + 1e-20)


def add_noise(clean: np.ndarray, snr_db: float, rng: np.random.Generator, kind: str = "white") -> np.ndarray:
    """`clean` plus noise whose power is `snr_db` below the power of the whole of `clean`."""
    power = float(np.mean(clean.astype(np.float64) ** 2))
    return clean + make_noise(rng, clean.size, kind) * np.sqrt(power / 10 ** (snr_db / 10))


def synthesize_utterance(spk: Speaker, text: str, rng: np.random.Generator) -> np.ndarray:
    """float32 16 kHz samples: speech with random silence around it, level, and the speaker's noise."""
    tts = Synthesizer.get()
    speech = resample(tts.synthesize(text, spk.voice).astype(np.float32) / 32768.0, tts.sample_rate, SAMPLE_RATE)
    lead, trail = (int(rng.uniform(lo, hi) * SAMPLE_RATE) for lo, hi in ((0.1, 0.4), (0.1, 0.3)))
    wav = np.concatenate([np.zeros(lead, np.float32), speech, np.zeros(trail, np.float32)])
    wav *= rng.uniform(0.3, 0.8) / max(float(np.abs(wav).max()), 1e-6)
    if spk.snr is not None:
        wav = add_noise(wav, spk.snr, rng, spk.noise)
        wav *= min(1.0, 0.99 / float(np.abs(wav).max()))  # no clipping; scaling keeps the SNR
    return wav.astype(np.float32)


def utterance(spk: Speaker, index: int, u: int, seed: int, grammar: str) -> tuple[str, str, np.random.Generator]:
    """(utt_id, text, rng for its audio) of utterance u of speaker `index`."""
    rng = np.random.default_rng([seed, 2, index, u])
    return f"{spk.speaker}_{u:03d}", make_sentence(rng, grammar), rng


def speaker_metadata(spk: Speaker) -> dict[str, Any]:
    v = asdict(spk.voice)
    return {"speaker": spk.speaker, "age": spk.age, "group": spk.group, "gender": spk.gender,
            "voice": v["name"], "pitch": v["pitch"], "range": v["range"], "rate": v["rate"],
            "snr": spk.snr, "noise": spk.noise}


def make_demo_corpus(out: str | Path, num_speakers: int = 20, utts_per_speaker: int = 60, seed: int = 0,
                     grammar: str = "mixed", child_share: float = 0.4, noisy_share: float = 0.3,
                     snr_range: tuple[float, float] = (10.0, 20.0), progress: bool = True) -> Path:
    """Write out/wav/<speaker>/<utt_id>.wav and out/manifest.jsonl (resumable); the manifest's path."""
    if grammar not in GRAMMARS:
        raise DataError(f"unknown grammar {grammar!r}", "--grammar", f"choose one of {', '.join(GRAMMARS)}")
    writer = CorpusWriter(out, dict(generator="demo", num_speakers=num_speakers, utts_per_speaker=utts_per_speaker,
                                    seed=seed, grammar=grammar, child_share=child_share, noisy_share=noisy_share,
                                    snr_range=snr_range))
    if writer.up_to_date:
        return writer.manifest
    records = []
    with tqdm(total=num_speakers * utts_per_speaker, desc="synthesizing", unit="utt", disable=not progress) as bar:
        for i in range(num_speakers):
            spk = make_speaker(i, seed, child_share, noisy_share, snr_range)
            for u in range(utts_per_speaker):
                utt_id, text, rng = utterance(spk, i, u, seed, grammar)
                rel = f"wav/{spk.speaker}/{utt_id}.wav"
                duration = writer.wav(rel, lambda: synthesize_utterance(spk, text, rng))
                records.append({"utt_id": utt_id, "audio": rel, "text": text, "duration": round(duration, 4),
                                **speaker_metadata(spk)})
                bar.update()
    return writer.finish(records)
