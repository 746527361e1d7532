"""Scoring (stage 5): WER and CER with jiwer after the stage-0 normalizer on both sides, per-utterance
alignments, breakdowns (speaker, age, grade, duration), a bootstrap confidence interval over speakers,
and the RESULTS.md of an experiment.

    scores = score_set(load_refs("data/test.jsonl"), load_hyps(".../hyp.jsonl"), get_normalizer("basic"))
"""
from __future__ import annotations

import datetime
import json
import platform
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import jiwer
import numpy as np

from asrkit.decode_info import DecodeInfo
from asrkit.errors import DataError
from asrkit.fileio import read_jsonl

DURATION_BINS = (0.0, 2.0, 5.0, 10.0, 20.0, float("inf"))  # seconds
BREAKDOWN_KEYS = ("speaker", "age", "grade")
TABLE_HEAD = "|set|Snt|Wrd|Corr|Sub|Del|Ins|Err|S.Err|"


@dataclass
class Counts:
    snt: int = 0
    wrd: int = 0  # reference words (or characters)
    cor: int = 0
    sub: int = 0
    dele: int = 0
    ins: int = 0
    snt_err: int = 0

    def add(self, o: "Counts") -> "Counts":
        return Counts(*(a + b for a, b in zip(self.astuple(), o.astuple())))

    def astuple(self):
        return self.snt, self.wrd, self.cor, self.sub, self.dele, self.ins, self.snt_err

    @property
    def err(self) -> int:
        return self.sub + self.dele + self.ins

    @property
    def rate(self) -> float:
        """Error rate in percent (insertions against an empty reference count as 100% per word)."""
        return 100.0 * self.err / self.wrd if self.wrd else (100.0 * bool(self.err))

    def row(self, name: str) -> str:
        pct = lambda n: f"{100.0 * n / self.wrd:.1f}" if self.wrd else "0.0"  # noqa: E731
        serr = f"{100.0 * self.snt_err / self.snt:.1f}" if self.snt else "0.0"
        return (f"|{name}|{self.snt}|{self.wrd}|{pct(self.cor)}|{pct(self.sub)}|{pct(self.dele)}|{pct(self.ins)}|"
                f"{pct(self.err)}|{serr}|")


@dataclass
class UttScore:
    utt_id: str
    ref: str
    hyp: str
    meta: dict
    word: Counts = field(default_factory=Counts)
    char: Counts = field(default_factory=Counts)
    alignment: list = field(default_factory=list)  # (ref word, hyp word, op) with op in C S D I


def load_refs(path) -> dict[str, dict]:
    refs = {}
    for lineno, rec in read_jsonl(path):
        if "utt_id" not in rec or "text" not in rec:
            raise DataError("a reference needs utt_id and text", f"{path}:{lineno}")
        refs[rec["utt_id"]] = rec
    return refs


def load_hyps(path) -> dict[str, str]:
    hyps = {}
    for lineno, rec in read_jsonl(path):
        if "utt_id" not in rec or "text" not in rec:
            raise DataError("a hypothesis needs utt_id and text", f"{path}:{lineno}", "is this a hyp.jsonl of decode?")
        hyps[rec["utt_id"]] = rec["text"]
    return hyps


def _counts(out, ref_words: list, hyp_words: list) -> tuple[Counts, list]:
    c, ali = Counts(snt=1, wrd=len(ref_words)), []
    for ch in out.alignments[0]:
        r, h = ref_words[ch.ref_start_idx: ch.ref_end_idx], hyp_words[ch.hyp_start_idx: ch.hyp_end_idx]
        if ch.type == "equal":
            c.cor += len(r)
            ali += [(a, b, "C") for a, b in zip(r, h)]
        elif ch.type == "substitute":
            c.sub += len(r)
            ali += [(a, b, "S") for a, b in zip(r, h)]
        elif ch.type == "delete":
            c.dele += len(r)
            ali += [(a, "", "D") for a in r]
        else:
            c.ins += len(h)
            ali += [("", b, "I") for b in h]
    c.snt_err = int(c.err > 0)
    return c, ali


def score_utt(utt_id: str, ref: str, hyp: str, meta: dict) -> UttScore:
    """Word and character counts of one (already normalized) pair, with the word alignment."""
    s = UttScore(utt_id, ref, hyp, meta)
    rw, hw = ref.split(), hyp.split()
    if rw or hw:
        s.word, s.alignment = _counts(jiwer.process_words(ref, hyp), rw, hw)
        s.char, _ = _counts(jiwer.process_characters(ref, hyp), list(ref), list(hyp))
    s.word.snt = s.char.snt = 1
    return s


def score_set(refs: dict[str, dict], hyps: dict[str, str], normalize, where: str = "") -> tuple[list[UttScore], list[str]]:
    """Scores of every reference utterance; a missing hypothesis counts as empty (all deletions) and
    is listed in the second return value."""
    missing = [u for u in refs if u not in hyps]
    extra = [u for u in hyps if u not in refs]
    if extra and len(extra) == len(hyps):
        raise DataError("no hypothesis matches a reference utt_id", where, "score the hyp.jsonl of the same split")
    return [score_utt(u, normalize(r["text"]), normalize(hyps.get(u, "")), r) for u, r in refs.items()], missing


def total(scores: list[UttScore], kind: str = "word") -> Counts:
    out = Counts()
    for s in scores:
        out = out.add(getattr(s, kind))
    return out


def duration_bin(seconds) -> tuple[int, str] | None:
    """(bin number, label) of a duration in seconds."""
    if seconds is None:
        return None
    for i, (lo, hi) in enumerate(zip(DURATION_BINS, DURATION_BINS[1:])):
        if lo <= float(seconds) < hi:
            return i, (f"{lo:g}-{hi:g}s" if hi != float("inf") else f">={lo:g}s")
    return None


def _natural(v):
    try:
        return (0, float(v), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(v))


def breakdowns(scores: list[UttScore]) -> dict[str, dict[str, tuple[Counts, Counts]]]:
    """{key: {value: (word counts, char counts)}} for speaker/age/grade (when present) and duration."""
    out: dict[str, dict] = {}
    for key in (*BREAKDOWN_KEYS, "duration"):
        groups: dict = {}
        for s in scores:
            v = duration_bin(s.meta.get("duration")) if key == "duration" else s.meta.get(key)
            if v is not None:
                groups.setdefault(v, []).append(s)
        if groups:
            order = sorted(groups, key=lambda v: v[0] if key == "duration" else _natural(v))
            out[key] = {(v[1] if key == "duration" else str(v)): (total(groups[v], "word"), total(groups[v], "char"))
                        for v in order}
    return out


def bootstrap_ci(scores: list[UttScore], kind: str = "word", n: int = 1000, seed: int = 0,
                 level: float = 0.95) -> tuple[float, float] | None:
    """Confidence interval of the error rate by resampling speakers with replacement (utterances of
    one speaker are not independent). None with fewer than two speakers."""
    by_spk: dict[str, list[int]] = {}
    for s in scores:
        c = getattr(s, kind)
        e = by_spk.setdefault(str(s.meta.get("speaker", s.utt_id)), [0, 0])
        e[0], e[1] = e[0] + c.err, e[1] + c.wrd
    if len(by_spk) < 2:
        return None
    err, wrd = np.array(list(by_spk.values()), dtype=float).T
    idx = np.random.default_rng(seed).integers(0, len(err), size=(n, len(err)))
    rates = 100.0 * err[idx].sum(1) / np.maximum(wrd[idx].sum(1), 1)
    a = (1 - level) / 2
    return float(np.quantile(rates, a)), float(np.quantile(rates, 1 - a))


def alignment_text(s: UttScore) -> str:
    """sclite-style block: errors upper-cased, columns aligned, '***' for the missing side."""
    refs, hyps, evals = [], [], []
    for r, h, op in s.alignment:
        r, h = (r or "*" * max(3, len(h))), (h or "*" * max(3, len(r)))
        if op != "C":
            r, h = r.upper(), h.upper()
        w = max(len(r), len(h))
        refs.append(r.ljust(w))
        hyps.append(h.ljust(w))
        evals.append(("" if op == "C" else op).ljust(w))
    c = s.word
    spk = f" speaker: {s.meta['speaker']}" if "speaker" in s.meta else ""
    return (f"id: ({s.utt_id}){spk}\nScores: (#C #S #D #I) {c.cor} {c.sub} {c.dele} {c.ins}\n"
            f"REF:  {' '.join(refs)}\nHYP:  {' '.join(hyps)}\nEval: {' '.join(evals).rstrip()}\n")


def report(scores: list[UttScore], name: str, normalizer: str, missing: list[str]) -> tuple[str, dict]:
    """(result.txt text, scores.json dict) of a scored set."""
    w, c = total(scores, "word"), total(scores, "char")
    ci_w, ci_c = bootstrap_ci(scores, "word"), bootstrap_ci(scores, "char")
    parts = [f"# {name}  (normalizer: {normalizer})", "", "## WER", TABLE_HEAD, "|---|---|---|---|---|---|---|---|---|",
             w.row(name), "", "## CER", TABLE_HEAD, "|---|---|---|---|---|---|---|---|---|", c.row(name), ""]
    for label, ci in (("WER", ci_w), ("CER", ci_c)):
        if ci:
            parts.append(f"{label} 95% CI (bootstrap over speakers): [{ci[0]:.2f}, {ci[1]:.2f}]")
    bd = breakdowns(scores)
    for key, groups in bd.items():
        parts += ["", f"## by {key}", "|" + key + "|Snt|Wrd|WER|CER|", "|---|---|---|---|---|"]
        parts += [f"|{v}|{cw.snt}|{cw.wrd}|{cw.rate:.1f}|{cc.rate:.1f}|" for v, (cw, cc) in groups.items()]
    if missing:
        parts += ["", f"{len(missing)} utterance(s) without a hypothesis, scored as empty: {' '.join(missing[:20])}"]
    parts += ["", "## alignments", ""] + [alignment_text(s) for s in scores]
    js = {"set": name, "normalizer": normalizer, "wer": w.rate, "cer": c.rate,
          "word": dict(zip(("snt", "wrd", "cor", "sub", "del", "ins", "snt_err"), w.astuple())),
          "char": dict(zip(("snt", "wrd", "cor", "sub", "del", "ins", "snt_err"), c.astuple())),
          "wer_ci95": ci_w, "cer_ci95": ci_c, "missing": missing,
          "breakdown": {k: {v: {"snt": cw.snt, "wer": cw.rate, "cer": cc.rate} for v, (cw, cc) in g.items()}
                        for k, g in bd.items()}}
    return "\n".join(parts) + "\n", js


def git_commit(repo: Path | None = None) -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=repo or Path(__file__).parent,
                             capture_output=True, text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def environment() -> list[str]:
    import asrkit

    return [f"- date: `{datetime.datetime.now().astimezone():%a %b %d %H:%M:%S %Z %Y}`",
            f"- python version: `{platform.python_version()}`", f"- asrkit version: `asrkit {asrkit.__version__}`",
            f"- pytorch version: `pytorch {_version('torch')}`", f"- jiwer version: `{_version('jiwer')}`",
            f"- Git hash: `{git_commit()}`"]


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "unknown"


def gather(exp_dir) -> str:
    """RESULTS.md text for every scored decode dir (scores.json) under exp_dir, ESPnet style."""
    exp_dir = Path(exp_dir)
    # scores.json: the first normalizer; scores_<name>.json: the others (score --normalizers)
    found = sorted(exp_dir.glob("decode_*/scores*.json")) + sorted(exp_dir.glob("*/decode_*/scores*.json"))
    if not found:
        raise DataError("no scored decoding (decode_*/scores.json) here", str(exp_dir), "run stage 5 first")
    rows = []
    for p in found:
        js = json.loads(p.read_text(encoding="utf-8"))
        info = DecodeInfo.read(p.parent) or DecodeInfo(search={})
        name = str(p.parent.relative_to(exp_dir)) + ("" if p.stem == "scores" else f" [{js['normalizer']}]")
        rows.append((name, js, info))
    lines = [f"<!-- Generated by asrkit.bin.score --gather {exp_dir} -->", "# RESULTS", "## Environments",
             *environment(), "", f"## {exp_dir.name}"]
    for kind, label in (("word", "WER"), ("char", "CER")):
        lines += ["", f"### {label}", "", TABLE_HEAD, "|---|---|---|---|---|---|---|---|---|"]
        for name, js, _ in rows:
            c = js[kind]
            lines.append(Counts(c["snt"], c["wrd"], c["cor"], c["sub"], c["del"], c["ins"], c["snt_err"]).row(name))
    lines += ["", "### decoding", "", "|set|mode|beam|ctc_weight|checkpoint|normalizer|WER 95% CI|RTF|",
              "|---|---|---|---|---|---|---|---|"]
    for name, js, info in rows:
        ci, rtf, search = js.get("wer_ci95"), info.rtf, info.search
        lines.append(f"|{name}|{search.get('mode', '')}|{search.get('beam', '')}|{search.get('ctc_weight', '')}|"
                     f"{info.checkpoint}|{js['normalizer']}|{f'{ci[0]:.2f}-{ci[1]:.2f}' if ci else ''}|"
                     f"{'' if rtf is None else f'{rtf:.4f}'}|")
    if (weights := exp_dir / "layer_weights.md").is_file():  # written by training (asrkit.model_io)
        lines += ["", "### feature layers: learned weights (model.avg)", "",
                  "Slice the stores to the heaviest: `python -m asrkit.bin.slice_store --model_dir "
                  f"{exp_dir} --top K ...`.", "", *weights.read_text(encoding="utf-8").splitlines()]
    return "\n".join(lines) + "\n"
