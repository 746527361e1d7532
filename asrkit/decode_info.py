"""What a decoding did: `decode_<set>_<dtag>/decode_info.json`, written by stage 4 and read by
scoring for RESULTS.md. One flat JSON object: the search options (asrkit.decode.DecodeOptions'
fields: mode, beam, ctc_weight, ...) beside the rest; torch-free, so that scoring needs no torch."""
from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from asrkit.fileio import write_json

FILE = "decode_info.json"


@dataclass
class DecodeInfo:
    search: dict[str, Any]  # the search options, stored at the top level of the file
    checkpoint: str = ""
    model_dir: str = ""
    data: str = ""
    feats: str = ""
    utterances: int | None = None  # hypotheses written
    decoded_now: int | None = None  # of them decoded by this run (the rest resumed)
    skipped: int | None = None
    rtf: float | None = None  # decoding seconds per second of audio decoded now
    decode_seconds: float | None = None
    audio_seconds: float | None = None
    device: str = ""
    nj: int | None = None
    threads: int | None = None
    batch_size: int | None = None
    versions: dict[str, str] = field(default_factory=dict)
    scored_from: str = ""  # for a subset scored from another decoding: that decoding's dir

    def write(self, decode_dir: str | Path) -> None:
        out = asdict(self)
        write_json(Path(decode_dir) / FILE, {**out.pop("search"), **{k: v for k, v in out.items() if v not in ("", None)}})

    @classmethod
    def read(cls, decode_dir: str | Path) -> DecodeInfo | None:
        """The decoding's info; None when the dir has none (hypotheses from elsewhere)."""
        path = Path(decode_dir) / FILE
        if not path.is_file():
            return None
        raw = json.loads(path.read_text(encoding="utf-8"))
        names = {f.name for f in fields(cls)} - {"search"}
        return cls(search={k: v for k, v in raw.items() if k not in names},
                   **{k: v for k, v in raw.items() if k in names})

    def subset(self, data: str | Path, decode_dir: str | Path) -> DecodeInfo:
        """The same search scored on a subset `data` of the decoded list: its counts and timings are
        the whole list's, so they are dropped."""
        return DecodeInfo(search=dict(self.search), checkpoint=self.checkpoint, model_dir=self.model_dir,
                          data=str(Path(data).resolve()), feats=self.feats, device=self.device,
                          versions=dict(self.versions), scored_from=str(Path(decode_dir).resolve()))
