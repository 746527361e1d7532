"""eSpeak NG through ctypes: text -> 16-bit samples, with voice, pitch, range and rate chosen per call.

The library and its voice data come from the `espeakng-loader` wheel (nothing to download).
eSpeak keeps hidden state from one utterance to the next (its output drifts by a few samples), so
to make every utterance depend only on its own text and voice, the engine runs in a small helper
process that initializes it once and forks a fresh copy for each utterance. The helper also adds
child voice variants (`child1`..`child4`: formants raised 15-30%, as in children's shorter vocal
tracts) to the voice data, through a temporary overlay of symbolic links.
"""
from __future__ import annotations

import atexit
import ctypes
import json
import os
import subprocess
import sys
import tempfile
import threading
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from asrkit.errors import DataError

ESPEAK_RATE = 22050  # eSpeak NG's output rate (asrkit.audio.SAMPLE_RATE is what the models take)
CHILD_VARIANTS = {f"child{i}": scale for i, scale in enumerate((1.15, 1.2, 1.25, 1.3), 1)}
# espeak_AUDIO_OUTPUT, espeak_PARAMETER, espeak_POSITION_TYPE and flag values of speak_lib.h
_AUDIO_OUTPUT_SYNCHRONOUS = 2
_RATE, _PITCH, _RANGE, _WORDGAP = 1, 3, 4, 7
_POS_CHARACTER = 1
_CHARS_UTF8, _ENDPAUSE = 1, 0x1000


@dataclass(frozen=True)
class Voice:
    """How a synthetic speaker sounds. `name` is an eSpeak voice with an optional variant
    ("en-us+f3", "en+child2"); pitch and range are 0-100 (eSpeak's default 50), rate in words per minute."""

    name: str = "en-us"
    pitch: int = 50
    range: int = 50
    rate: int = 175
    word_gap: int = 0  # extra pause between words, in units of 10 ms


class Synthesizer:
    """Client of the helper process; `Synthesizer.get().synthesize(text, voice)` -> int16 samples."""

    _instance: "Synthesizer | None" = None
    _lock = threading.Lock()
    sample_rate = ESPEAK_RATE

    def __init__(self):
        try:
            import espeakng_loader  # noqa: F401  (checked here for a clear message; the helper uses it)
        except ImportError:
            raise DataError("eSpeak NG is not installed", "espeakng-loader",
                            "pip install espeakng-loader (or: pip install -e '.[demo]')") from None
        self._proc = subprocess.Popen([sys.executable, "-m", "asrkit_corpora.espeak"], stdin=subprocess.PIPE,
                                      stdout=subprocess.PIPE, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        atexit.register(self.close)

    @classmethod
    def get(cls) -> "Synthesizer":
        with cls._lock:
            if cls._instance is None or cls._instance._proc.poll() is not None:
                cls._instance = cls()
            return cls._instance

    def synthesize(self, text: str, voice: Voice) -> np.ndarray:
        """int16 samples at 22050 Hz of `text` spoken by `voice`; the same for the same arguments."""
        with self._lock:
            try:
                self._proc.stdin.write(json.dumps({"text": text, **asdict(voice)}).encode() + b"\n")
                self._proc.stdin.flush()
                status, _, arg = self._proc.stdout.readline().decode().strip().partition(" ")
                if status == "OK":
                    return np.frombuffer(self._read(int(arg)), dtype=np.int16)
            except (BrokenPipeError, ValueError):
                status, arg = "ERR", "the eSpeak helper process ended"
        if arg.startswith("voice "):
            raise DataError(f"unknown eSpeak voice {voice.name!r}", "voice",
                            "use a language code with an optional variant, e.g. en-us, en-gb-x-rp+f2, en+child1")
        raise DataError(f"eSpeak NG failed: {arg or 'no answer'}", repr(text))

    def _read(self, n: int) -> bytes:
        data = self._proc.stdout.read(n)
        if len(data) != n:
            raise ValueError("short read")
        return data

    def close(self) -> None:
        if self._proc.poll() is None:
            self._proc.stdin.close()
            self._proc.wait(timeout=10)


# ---------------------------------------------------------------- the helper process

def _child_variant(name: str, scale: float) -> str:
    formants = "\n".join(f"formant {i} {round(100 * (scale if 1 <= i <= 5 else 1 + (scale - 1) / 2))} 80 150"
                         for i in range(9))
    return f"language variant\nname {name}\ngender female\n\npitch 200 320\n{formants}\nbreath 0 2 3 3 3 3 3 2\n"


def _overlay_data_dir(data: Path, out: Path) -> Path:
    """`data` as links in `out`, with the child variants added to voices/!v."""
    out.mkdir(parents=True)
    for entry in data.iterdir():
        if entry.name != "voices":
            (out / entry.name).symlink_to(entry)
    variants = out / "voices" / "!v"
    variants.mkdir(parents=True)
    for entry in (data / "voices" / "!v").iterdir():
        (variants / entry.name).symlink_to(entry)
    for name, scale in CHILD_VARIANTS.items():
        (variants / name).write_text(_child_variant(name, scale), encoding="utf-8")
    return out


def _serve() -> None:
    """Read one JSON request a line; answer 'OK <bytes>\\n' + int16 samples, or 'ERR <reason>\\n'."""
    import espeakng_loader

    lib = ctypes.CDLL(espeakng_loader.get_library_path())
    lib.espeak_Initialize.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int]
    lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
    lib.espeak_SetParameter.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int]
    lib.espeak_ng_SetRandSeed.argtypes = [ctypes.c_long]
    lib.espeak_Synth.argtypes = [ctypes.c_char_p, ctypes.c_size_t, ctypes.c_uint, ctypes.c_int,
                                 ctypes.c_uint, ctypes.c_uint, ctypes.c_void_p, ctypes.c_void_p]
    chunks: list[bytes] = []

    @ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)
    def collect(samples, n, events):
        if n > 0:
            chunks.append(ctypes.string_at(samples, 2 * n))
        return 0

    out = sys.stdout.buffer
    with tempfile.TemporaryDirectory(prefix="asrkit-espeak-") as tmp:
        data = _overlay_data_dir(Path(espeakng_loader.get_data_path()), Path(tmp) / "espeak-ng-data")
        if lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, str(data).encode(), 0) != ESPEAK_RATE:
            raise SystemExit("eSpeak NG failed to initialize")
        lib.espeak_SetSynthCallback(collect)
        for line in sys.stdin.buffer:
            pid = os.fork()  # the child starts from the state right after initialization, every time
            if pid:
                os.waitpid(pid, 0)
                continue
            try:
                # eSpeak NG seeds its noise generator (breathy voices: the female and child
                # variants) from the clock at initialization; a seed per request makes the audio
                # the same in every process and whatever the order of requests
                lib.espeak_ng_SetRandSeed(zlib.crc32(line))
                out.write(_synthesize(lib, json.loads(line), chunks))
            except Exception as e:  # answered, so that the client can name the utterance
                out.write(f"ERR {type(e).__name__}: {e}\n".encode())
            out.flush()
            os._exit(0)


def _synthesize(lib, req: dict, chunks: list[bytes]) -> bytes:
    if lib.espeak_SetVoiceByName(req["name"].encode()) != 0:
        return f"ERR voice {req['name']}\n".encode()
    for param, key in ((_RATE, "rate"), (_PITCH, "pitch"), (_RANGE, "range"), (_WORDGAP, "word_gap")):
        lib.espeak_SetParameter(param, int(req[key]), 0)
    text = req["text"].encode("utf-8")
    err = lib.espeak_Synth(text, len(text) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8 | _ENDPAUSE, None, None)
    lib.espeak_Synchronize()
    if err != 0:
        return f"ERR espeak_Synth returned {err}\n".encode()
    samples = b"".join(chunks)
    return f"OK {len(samples)}\n".encode() + samples


if __name__ == "__main__":
    _serve()
