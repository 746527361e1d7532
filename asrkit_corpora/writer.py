"""Writing a generated corpus resumably: wav files one by one (atomic), the manifest last.

The generator's options go to <out>/corpus.json first. A rerun with the same options keeps the wav
files already there (generation is deterministic, they would come out identical) and finds a
finished corpus up to date; other options start it afresh.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np
import soundfile as sf

from asrkit.audio import SAMPLE_RATE, audio_info
from asrkit.fileio import atomic_path, write_json, write_jsonl

log = logging.getLogger("asrkit_corpora")


class CorpusWriter:
    def __init__(self, out: str | Path, params: dict[str, Any]):
        self.out = Path(out)
        self.manifest = self.out / "manifest.jsonl"
        params_file = self.out / "corpus.json"
        self.params = json.loads(json.dumps(params))  # tuples -> lists, as they come back from the file
        try:
            self.resume = json.loads(params_file.read_text(encoding="utf-8")) == self.params
        except (OSError, ValueError):
            self.resume = False
        self.up_to_date = self.resume and self.manifest.is_file()
        if self.up_to_date:
            log.info("%s is up to date (same options)", self.manifest)
        elif not self.resume:
            self.manifest.unlink(missing_ok=True)
            write_json(params_file, self.params)

    def wav(self, rel: str, make: Callable[[], np.ndarray]) -> float:
        """Write out/rel from make() (float32, 16 kHz) unless a resumed run has it; its duration (s)."""
        path = self.out / rel
        if self.resume and path.is_file():
            sr, frames, _ = audio_info(str(path))
            return frames / sr
        wav = make()
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            sf.write(tmp, wav, SAMPLE_RATE, subtype="PCM_16", format="WAV")
        return wav.size / SAMPLE_RATE

    def finish(self, records: Iterable[dict[str, Any]]) -> Path:
        n = write_jsonl(self.manifest, records)
        log.info("wrote %d utterances to %s", n, self.manifest)
        return self.manifest
