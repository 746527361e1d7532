"""Every command the READMEs show runs as written: each shell line of README.md's, docs/GUIDE.md's and
the recipe READMEs' bash blocks, and the Python example, in a scratch copy of the repository, with the
placeholders filled from small fixtures (`/path/to/manifest.jsonl`, `exp/<tag>`, `a.flac`, ...) and
tiny sizes appended (a tiny random WavLM in place of the pretrained one, one epoch). A command that
needs what a test machine cannot have is skipped with its reason; a command no rule knows fails,
so the READMEs cannot drift from the code. Variants of one recipe share one copy, so run.sh's rerun
rules skip the stages they have in common."""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, write_manifest, write_tone
from corpora_fixtures import make_fake_myst, myst_utt_id
from myst_checks import check_myst_outputs

pytestmark = pytest.mark.slow
DOCS = ["README.md", "docs/GUIDE.md", "egs/child/README.md", "egs/myst/README.md"]
TINY_TRAIN = ("--max_epoch 1 --batch_bins 3000 --num_workers 0 --encoder_conf.num_blocks 1 "
              "--decoder_conf.num_blocks 1 --keep_nbest_models 1 --preflight_batches 1")
TINY = ["--nj", "1", "--ngpu", "0", "--train_config", "{repo}/conf/tuning/train_conformer_tiny.yaml",
        "--train_args", TINY_TRAIN, "--decode_args", "--beam 2 --maxlenratio -10"]
TINY_WAVLM = ["--ssl_model", "{wavlm}", "--ssl_layer", "1"]  # the network is not there: a tiny random WavLM

# (pattern, what to append, or the reason it is skipped); the first match decides
RULES = [
    (r"^tools/test\.sh( |$)", ["tests/test_lock.py", "-q", "-p", "no:cacheprovider"]),  # the suite: one file of it
    (r"^tools/install\.sh --relock", "resolves every package anew from the network, then runs the whole suite"),
    (r"^python bench/gpu_check\.py --device cpu --tiny", "tests/test_gpu_check.py runs it"),
    (r"^bash bench/gpu_(wheels|check)\.sh", "for a lent GPU machine (the wheels are downloaded from the network)"),
    (r"^salloc |--launcher slurm", "needs Slurm"),
    (r"^\./run\.sh .*--num_nodes 2 --node_rank", "two nodes: tests/test_pipeline.py runs this form, on one host"),
    (r"^\./run\.sh$", ["--num_speakers", "12", "--utts_per_speaker", "2", "--nj", "1",
                       "--train_args", "--max_epoch 1", "--decode_args", "--beam 2 --maxlenratio -10"]),
    (r"^bash egs/child/run\.sh .*train_conformer_small", ["--nj", "1", "--ngpu", "0", "--train_args", TINY_TRAIN,
                                                          "--decode_args", "--beam 2 --maxlenratio -10"]),
    (r"^bash egs/child/run\.sh --raw_data \S+ --ssl_model openai/whisper-base( --top_layers \d+)?$",  # its decoder
     ["--nj", "1", "--ngpu", "0", "--train_args", "--max_epoch 1 --num_workers 0 --preflight_batches 1",
      "--decode_args", "--beam 2 --maxlenratio -10"]),
    (r"^bash egs/child/run\.sh .*--ssl_model", ["--nj", "1"]),  # already tiny as written
    (r"^bash egs/child/run\.sh .*train_bilstm", TINY_WAVLM + ["--nbpe", "60", "--nj", "1", "--ngpu", "0", "--train_args",
                                                         TINY_TRAIN.replace("--encoder_conf.num_blocks 1",
                                                                            "--encoder_conf.num_layers 1"),
                                                         "--decode_args", "--beam 2 --maxlenratio -10"]),
    (r"^(\./run\.sh|bash egs/child/run\.sh) --raw_data", TINY_WAVLM + ["--nbpe", "60"] + TINY),
    (r"^bash egs/myst/run\.sh", ["--feats_type", "fbank", "--token_type", "char", *TINY]),
    (r"^python -m asrkit\.bin\.export ", ["--include_front_end", "true"]),  # (the test's WavLM is a local folder)
    (r"^python -m asrkit\.bin\.transcribe ", []),
    (r"^python -c ", []),
    (r"^bench/setup_espnet_venv\.sh", "installs ESPnet from the network into its own environment"),
    (r"--device cuda", "needs a GPU"),
]


def doc_code(doc: str) -> list[tuple[str, str, int]]:
    """(language, code, first line number) of each fenced block."""
    blocks, lang, start, lines = [], None, 0, []
    for n, line in enumerate((REPO / doc).read_text(encoding="utf-8").splitlines(), 1):
        if line.startswith("```"):
            if lang is None:
                lang, start, lines = line[3:].strip(), n + 1, []
            else:
                blocks.append((lang, "\n".join(lines), start))
                lang = None
        elif lang is not None:
            lines.append(line)
    return blocks


def shell_commands(code: str) -> list[str]:
    """One command per line (backslash continuations joined), comments dropped."""
    out = []
    for line in code.replace("\\\n", " ").splitlines():
        words = shlex.split(line, comments=True)
        if words:
            out.append(shlex.join(words))
    return out


def all_commands() -> list[tuple[str, str, str]]:
    found = []
    for doc in DOCS:
        for lang, code, line in doc_code(doc):
            if lang == "bash":
                found += [(doc, "bash", c) for c in shell_commands(code)]
            elif lang == "python":
                found.append((doc, "python", code))
    return found


def appended(command: str, extra: list[str]) -> list[str]:
    """The tiny-size options, less those the command sets itself (its own value is what it shows)."""
    given = set(shlex.split(command))
    out, i = [], 0
    while i < len(extra):
        if extra[i].startswith("--") and extra[i] in given:
            i += 2
            continue
        out.append(extra[i])
        i += 1
    return out


def rule(kind: str, command: str):
    if kind == "python":
        return []
    for pattern, action in RULES:
        if re.search(pattern, command):
            return action
    return None


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A copy of the tracked tree (mtimes kept, so tools/install.sh finds the environment up to date),
    the fixtures the placeholders name, and the environment this suite runs in."""
    venv = Path(sys.prefix)
    if not (venv / "bin" / "activate").is_file():
        pytest.skip(f"{sys.prefix} is not a virtual environment that run.sh could activate")
    root = tmp_path_factory.mktemp("readme")
    repo = root / "asrkit"
    files = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    for rel in filter(None, files.decode().split("\0")):
        if (REPO / rel).is_file():
            (repo / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, repo / rel)
    fx = root / "fixtures"
    # text varied enough for the READMEs' BPE sizes (a BPE model cannot have more pieces than merges)
    vocab = ("the magnet sticks to fridge door because metal pulls iron water flows down hill plants "
             "need light grow tall seeds sprout soil warm sun rain clouds wind blows leaves fall "
             "autumn frogs jump pond fish swim river birds fly south winter").split()
    rng = __import__("random").Random(0)
    records = []
    for s in range(6):
        for u in range(4):
            rel = f"wav/spk{s}/u{u}.wav"
            write_tone(fx / rel, seconds=0.6 + 0.25 * u, freq=150 + 40 * s, seed=s * 10 + u)
            text = " ".join(rng.sample(vocab, 4 + u)).capitalize() + "."
            records.append({"utt_id": f"spk{s}_u{u}", "audio": rel, "text": text, "speaker": f"spk{s}",
                            "age": str(6 + s)})  # a string, as Kaldi's spk2age gives it
    manifest = write_manifest(fx / "manifest.jsonl", records)
    kaldi = fx / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text("".join(f"{r['utt_id']} {fx / r['audio']}\n" for r in records))
    (kaldi / "text").write_text("".join(f"{r['utt_id']} {r['text']}\n" for r in records))
    (kaldi / "utt2spk").write_text("".join(f"{r['utt_id']} {r['speaker']}\n" for r in records))
    # the same corpus as the manifest, so that after its stage 0 the Kaldi dir's run finds the rest up to date
    (kaldi / "spk2age").write_text("".join(f"spk{s} {6 + s}\n" for s in range(6)))
    myst = make_fake_myst(fx / "LDC2021S05")
    from asrkit.random_models import save_random_ssl

    wavlm = save_random_ssl(fx / "tiny-wavlm", preset="tiny")
    from asrkit.random_models import save_random_whisper

    whisper = save_random_whisper(fx / "tiny-whisper", preset="tiny")
    write_tone(repo / "a.flac", seconds=1.2, freq=210.0, seed=5)
    write_tone(repo / "b.wav", seconds=0.8, sr=8000, freq=260.0, seed=6)
    write_tone(repo / "lesson.wav", seconds=24.0, freq=230.0, seed=7)  # over --max_segment: cut at its pauses
    places = {"/path/to/manifest.jsonl": str(manifest), "/path/to/kaldi/data/train": str(kaldi),
              "/path/to/LDC2021S05": str(myst), "/tmp/tiny-wavlm": str(fx / "made-tiny-wavlm"),
              "/path/to/filtered_test_ids.txt": str(fx / "filtered_test_ids.txt"),
              "openai/whisper-large-v2": str(whisper), "openai/whisper-base": str(whisper)}
    (fx / "filtered_test_ids.txt").write_text(myst_utt_id("000301", 1) + "\n")
    env = {**os.environ, "ASRKIT_VENV": str(venv), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}", "MYST": ""}
    return dict(repo=repo, places=places, env=env, wavlm=wavlm)


def fill(text: str, ws: dict) -> str:
    for placeholder, value in ws["places"].items():
        text = text.replace(placeholder, value)
    if "exp/<tag>" in text:
        exps = sorted(ws["repo"].glob("exp/*/model.avg.safetensors"))
        assert exps, "no trained model in exp/ for exp/<tag>: the README should show training before transcribing"
        text = text.replace("exp/<tag>", str(exps[0].parent.relative_to(ws["repo"])))
    return text


def run(ws: dict, argv: list[str] | str, timeout: float = 600) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, cwd=ws["repo"], env=ws["env"], capture_output=True, text=True, timeout=timeout,
                       shell=isinstance(argv, str))
    assert p.returncode == 0, f"{argv}\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}"
    return p


COMMANDS = all_commands()


def test_every_command_has_a_rule():
    unknown = [f"{doc}: {c}" for doc, kind, c in COMMANDS if rule(kind, c) is None]
    assert not unknown, "README commands this test does not know how to run (add a rule):\n" + "\n".join(unknown)
    assert any("transcribe" in c for _, _, c in COMMANDS) and any(k == "python" for _, k, _ in COMMANDS)


@pytest.mark.parametrize("doc,kind,command", COMMANDS, ids=[f"{d}:{c[:60]}" for d, k, c in COMMANDS])
def test_readme_command(doc, kind, command, workspace):
    ws, action = workspace, rule(kind, command)
    if isinstance(action, str):
        pytest.skip(f"{command}: {action}")
    if action is None:
        pytest.fail(f"no rule for {command!r}")
    if kind == "python":  # the API example, then its result checked
        code = fill(command, ws).strip().splitlines()
        script = "\n".join(code[:-1] + [f"result = {code[-1]}", "import json; print(json.dumps(result))"])
        out = json.loads(run(ws, [str(Path(sys.prefix) / "bin" / "python"), "-c", script]).stdout.splitlines()[-1])
        assert out and all("text" in r for r in out), out
        return
    extra = appended(command, [a.format(repo=ws["repo"], wavlm=ws["wavlm"]) for a in action])
    p = run(ws, fill(command, ws) + "".join(f" {shlex.quote(a)}" for a in extra), timeout=900)
    if command.startswith("python -m asrkit.bin.transcribe"):
        lines = p.stdout.splitlines()
        files = [w for w in shlex.split(command) if w.endswith((".flac", ".wav"))]
        if "--json" in command:
            assert [json.loads(line)["file"] for line in lines] == files and all("words" in json.loads(x) for x in lines)
        else:
            assert [line.split("\t")[0] for line in lines] == files, p.stdout
        words = shlex.split(command)
        if "--output_dir" in words:
            out = ws["repo"] / words[words.index("--output_dir") + 1]
            formats = words[words.index("--output_format") + 1].split(",")
            assert {f"{Path(a).stem}.{x}" for a in files for x in formats} <= {f.name for f in out.iterdir()}
    if re.match(r"^(\./run\.sh|bash egs/\w+/run\.sh)", command) and "--stop_stage 0" not in command:
        assert "Results (" in p.stdout or "Demo results" in p.stdout, p.stdout[-3000:]
    if "--whisper_filter" in command:  # the filter's list is the filtered test
        local = ws["repo"] / "egs" / "myst" / "data" / "local"
        assert (local / "whisper_filter" / "filter.tsv").is_file(), p.stdout[-3000:]
        assert (local / "test_filtered.ids").read_text() == (local / "whisper_filter" / "test_filtered.ids").read_text()
    if command == "bash egs/myst/run.sh --myst_root /path/to/LDC2021S05" and not ws.get("myst_checked"):
        ws["myst_checked"] = True  # its first run did all stages on the fake tree (the other README's is a rerun)
        myst = ws["repo"] / "egs" / "myst"
        rerun = run(ws, fill(command, ws) + "".join(f" {shlex.quote(a)}" for a in extra)).stdout
        check_myst_outputs(p.stdout, rerun, myst / "data", myst / "dump", myst / "exp")
