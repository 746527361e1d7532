"""Sharing a trained model: exported into one folder (or archive) with exactly what decoding needs,
loaded back by one call from the folder, the archive or a Hub id, in place of the experiment dir."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from asrkit.bin import decode, export, train, transcribe
from asrkit.errors import DataError
from asrkit.fileio import file_digest, load_jsonl, write_jsonl
from asrkit.transcribe import Transcriber

FIXTURE = Path(__file__).parent / "data" / "package_format1"  # written by asrkit's first package format


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A tiny model trained on fbank features of tiny tone 'utterances', decoded by stage 4."""
    import yaml

    from asrkit.features.dump import dump
    from asrkit.features.extractors import ExtractorSpec
    from asrkit.tokenizer import build_token_list
    from conftest import write_tone
    from train_fixtures import TINY_MODEL, TINY_TRAIN

    root = tmp_path_factory.mktemp("package")
    words = ["one two", "three four five", "six", "seven eight"]
    records = []
    for i in range(16):
        wav = write_tone(root / "wav" / f"u{i}.wav", seconds=0.6 + 0.1 * (i % 4), freq=150 + 20 * i, seed=i)
        records.append({"utt_id": f"u{i:02d}", "audio": str(wav), "text": words[i % 4], "speaker": f"s{i % 4}"})
    paths = {}
    for split, part in (("train", records[:12]), ("valid", records[12:])):
        write_jsonl(root / f"{split}.jsonl", part)
        dump(str(root / f"{split}.jsonl"), str(root / f"{split}.h5"), ExtractorSpec("fbank", n_mels=20), nj=0,
             progress=False)
        paths |= {f"{split}_data": root / f"{split}.jsonl", f"{split}_feats": root / f"{split}.h5"}
    build_token_list([r["text"] for r in records], "char", root / "tokens")
    conf = root / "conf.yaml"
    conf.write_text(yaml.safe_dump({**TINY_MODEL, **TINY_TRAIN}))
    exp = root / "exp"
    train.main([f"--config={conf}", *(f"--{k}={v}" for k, v in paths.items()), f"--token_dir={root / 'tokens'}",
                f"--exp_dir={exp}", "--ngpu=0", "--max_epoch=2"])
    decode.main([f"--model_dir={exp}", f"--data={paths['valid_data']}", f"--feats={paths['valid_feats']}",
                 f"--out={exp / 'decode_valid'}", "--beam=2", "--maxlenratio=-4"])
    hyps = {r["utt_id"]: r["text"] for r in load_jsonl(exp / "decode_valid" / "hyp.jsonl")}
    return root, exp, records[12:], hyps


def test_an_exported_model_transcribes_as_stage_4_from_a_folder_and_an_archive(trained, tmp_path, monkeypatch):
    root, exp, valid, hyps = trained
    out, archive = tmp_path / "shared" / "tiny-model", tmp_path / "tiny-model.tar"
    assert export.main([f"--model_dir={exp}", f"--out={out}", f"--archive={archive}"]) == 0
    names = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert {"asrkit_model.json", "config.yaml", "feats_attrs.json", "model.safetensors", "decode.yaml",
            "README.md", "tokens/tokens.txt"} <= set(names)
    assert not any(n.startswith("epoch") or n == "checkpoint.pth" for n in names)  # the training's leftovers
    for name in names:  # no path of the training machine remains
        if not name.endswith(".safetensors"):
            assert str(root) not in (out / name).read_text(encoding="utf-8"), name
    moved = tmp_path / "elsewhere"
    shutil.move(str(exp), moved)  # the experiment dir is gone: the package alone is enough
    monkeypatch.setenv("ASRKIT_CACHE", str(tmp_path / "cache"))
    audio = [r["audio"] for r in valid]
    for source in (out, archive):
        got = Transcriber.from_pretrained(source).transcribe(audio)
        assert [g["text"] for g in got] == [hyps[r["utt_id"]] for r in valid], source
    assert len(list((tmp_path / "cache" / "packages").iterdir())) == 1  # the archive unpacked once
    shutil.move(str(moved), exp)


def test_a_damaged_or_incomplete_package_is_refused_with_the_file_named(trained, tmp_path):
    _, exp, _, _ = trained
    out = tmp_path / "pkg"
    export.main([f"--model_dir={exp}", f"--out={out}", "--dtype=float16"])
    Transcriber.from_pretrained(out)  # (whole, float16 weights into the float32 model)
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DataError, match=f"{weights}: the file is not the one the package was made with"):
        Transcriber.from_pretrained(out)
    export.main([f"--model_dir={exp}", f"--out={out}"])
    (out / "tokens" / "tokens.txt").unlink()
    with pytest.raises(DataError, match=f"{out / 'tokens' / 'tokens.txt'}: the package misses a file"):
        Transcriber.from_pretrained(out)
    with pytest.raises(DataError, match="not an asrkit model package"):
        Transcriber.from_pretrained(exp)  # an experiment dir is loaded with --model_dir
    export.main([f"--model_dir={exp}", f"--out={out}"])  # weights that do not fit the config (a hand-made package)
    config = out / "config.yaml"
    config.write_text(config.read_text().replace("output_size: 16", "output_size: 24"))
    info = json.loads((out / "asrkit_model.json").read_text())
    info["files"]["config.yaml"] = file_digest(config)
    (out / "asrkit_model.json").write_text(json.dumps(info))
    with pytest.raises(DataError, match="model.safetensors: the weights do not fit the model of config.yaml"):
        Transcriber.from_pretrained(out)
    (out / "asrkit_model.json").write_text(json.dumps({**info, "format": 99}))
    with pytest.raises(DataError, match="a package of format 99.*upgrade asrkit"):
        Transcriber.from_pretrained(out)


def test_a_package_of_the_first_format_still_loads(tmp_path):
    """A package written by asrkit's first package format (tests/data/package_format1: a tiny random
    fbank model) loads with this asrkit: its weights as stored, and it transcribes."""
    import torch

    from asrkit.model_io import model_state
    from conftest import write_tone

    asr = Transcriber.from_pretrained(FIXTURE)
    stored = model_state(FIXTURE / "model.safetensors")
    assert all(torch.equal(v.float(), stored[k].float()) for k, v in asr.model.state_dict().items() if k in stored)
    [rec] = asr.transcribe([write_tone(tmp_path / "x.wav", seconds=1.0)])
    assert "text" in rec and "error" not in rec


def test_a_hub_id_loads_through_the_hub_cache_and_push_uploads(trained, tmp_path, monkeypatch, capsys):
    """The Hugging Face Hub, stood in for by a local folder: --push_to_hub uploads the package to it,
    and from_pretrained(ID) gets it back through snapshot_download (no network in the test)."""
    import huggingface_hub

    _, exp, valid, hyps = trained
    hub = tmp_path / "hub"

    def create_repo(self, repo_id, exist_ok=False, **kw):
        (hub / repo_id).mkdir(parents=True, exist_ok=exist_ok)
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, folder_path, repo_id, **kw):
        shutil.copytree(folder_path, hub / repo_id, dirs_exist_ok=True)

    def snapshot_download(repo_id, revision=None, **kw):
        if not (hub / repo_id).is_dir():
            raise huggingface_hub.errors.LocalEntryNotFoundError(f"{repo_id} is not in the cache")
        return str(hub / repo_id)

    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    export.main([f"--model_dir={exp}", f"--out={tmp_path / 'pkg'}", "--push_to_hub=kids/tiny-asr"])
    assert "uploaded to https://huggingface.co/kids/tiny-asr" in capsys.readouterr().out
    assert transcribe.main(["--model=kids/tiny-asr", *(r["audio"] for r in valid)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split("\t")[1] if "\t" in line else "" for line in lines] == [hyps[r["utt_id"]] for r in valid]
    with pytest.raises(DataError, match="cannot get the model from the Hugging Face Hub.*only a model in the local cache"):
        Transcriber.from_pretrained("kids/not-there")
