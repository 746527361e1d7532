"""A trained model to share: one folder (or archive) with exactly what decoding needs, and the one
call that loads it back from a path, an archive, or the Hugging Face Hub.

    python -m asrkit.bin.export --model_dir exp/<tag> --out model/ [--archive model.tar] [--dtype float16]
    Transcriber.from_pretrained("model/")          # or "model.tar", or "org/name" on the Hub

A package is a model dir (model_io) without the training's leftovers:

    asrkit_model.json   the format version, the asrkit and torch versions, the front end, and the
                        SHA-256 of every other file (a missing or changed file is refused, named)
    config.yaml         the model config alone (no path of the training machine)
    tokens/             the token list (a sentencepiece or Whisper tokenizer's files with it)
    feats_attrs.json    the feature extractor (its checkpoint: a Hub id, or front_end/)
    model.safetensors   the averaged weights (float16 with --dtype float16); with the encoder's top
                        trained, only the top layers' (the rest is the front end's checkpoint)
    decode.yaml         the search the model's reported figures were decoded with
    utterances.json     the training utterances' shape (long recordings' segments copy it)
    RESULTS.md          the figures, as training's scoring wrote them (when it did)
    README.md           a model card: what it is, its figures, how to load it
    front_end/          with --include_front_end: the stage-1 checkpoint's files, for use offline

Loading runs no code from the package (safetensors, YAML, JSON; docs/PROMISES.md). A Hub id goes
through huggingface_hub's snapshot_download, which honours HF_HUB_OFFLINE and its cache: no network
call when the files are cached. An archive is unpacked once into ~/.cache/asrkit/packages.
"""
from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import tarfile
import tempfile
from pathlib import Path

import torch
import yaml

import asrkit
from asrkit.decode.search import DecodeOptions
from asrkit.decode_info import DecodeInfo
from asrkit.errors import DataError
from asrkit.features.extractors import ExtractorSpec
from asrkit.fileio import atomic_open, file_digest, write_json
from asrkit.model_io import (CONFIG, FEATS_ATTRS, TOKENS_DIR, load_config, load_feats_attrs, map_tied,
                             model_state, save_weights, weights_path)
from asrkit.nets import MODEL_KEYS
from asrkit.segment import SHAPE

log = logging.getLogger("asrkit.package")
FORMAT = 1  # a newer asrkit reads every older format; a package of a newer one is refused
MANIFEST, WEIGHTS, DECODE, FRONT_END = "asrkit_model.json", "model.safetensors", "decode.yaml", "front_end"
SIZES = ("input_dim", "input_layers", "vocab_size")


def export(model_dir: str | Path, out: str | Path, checkpoint: str = "model.avg.safetensors",
           include_front_end: bool = False, front_end_id: str | None = None, dtype: str | None = None,
           archive: str | Path | None = None) -> Path:
    """Write the package of the experiment `model_dir` into the folder `out` (made whole beside it,
    then renamed) and, with `archive`, as a tar file too; returns the folder."""
    model_dir, out = Path(model_dir), Path(out)
    config, attrs = load_config(model_dir), load_feats_attrs(model_dir)
    spec = ExtractorSpec.from_attrs(attrs)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        front = _front_end(spec, tmp, include_front_end, front_end_id, model_dir)
        model = {k: v for k, v in config.items() if k in MODEL_KEYS or k in SIZES}
        for section, keys in (("decoder_conf", ("pretrained",)), ("ssl_top", ("checkpoint", "from_layer"))):
            if isinstance(model.get(section), dict):  # (an older dir's copies of the checkpoint)
                model[section] = {k: v for k, v in model[section].items() if k not in keys}
        with atomic_open(tmp / CONFIG) as f:
            yaml.safe_dump(model, f, sort_keys=False, allow_unicode=True)
        resolved = ExtractorSpec(**{**spec.as_attr(), "ssl_model": front, "layers": spec.layers})
        write_json(tmp / FEATS_ATTRS, {**attrs, "ssl_model": front, "extractor": resolved.as_attr()})
        shutil.copytree(model_dir / TOKENS_DIR, tmp / TOKENS_DIR)
        state = model_state(weights_path(model_dir, checkpoint))
        if dtype:
            cast = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}[dtype]
            state = map_tied(state, lambda k, v: v.to(cast) if v.is_floating_point() else v)
        save_weights(state, tmp / WEIGHTS)
        search = _reported_search(model_dir)
        with atomic_open(tmp / DECODE) as f:
            yaml.safe_dump(search, f, sort_keys=False)
        for name in (SHAPE, "RESULTS.md"):
            if (model_dir / name).is_file():
                shutil.copyfile(model_dir / name, tmp / name)
        _model_card(tmp, model_dir.name, config, spec, front, search)
        files = sorted(str(p.relative_to(tmp)) for p in tmp.rglob("*") if p.is_file())
        write_json(tmp / MANIFEST, {
            "format": FORMAT, "asrkit": asrkit.__version__, "torch": torch.__version__,
            "python": platform.python_version(), "name": model_dir.name,
            "front_end": {"ssl_model": front, "included": front == FRONT_END, "weights_hash": spec.weights_hash},
            "weights_dtype": dtype or "as trained", "files": {f: file_digest(tmp / f) for f in files}})
        if out.exists():
            shutil.rmtree(out)
        os.chmod(tmp, 0o777 & ~_umask())  # (mkdtemp's folder is its owner's alone)
        os.replace(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if archive:
        _write_archive(out, Path(archive))
    log.info("exported %s into %s (%.1f MB)%s", model_dir, out,
             sum(p.stat().st_size for p in out.rglob("*") if p.is_file()) / 1e6, f" and {archive}" if archive else "")
    return out


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _front_end(spec: ExtractorSpec, tmp: Path, include: bool, hub_id: str | None, model_dir: Path) -> str:
    """What the package names as its stage-1 checkpoint: front_end/ (its files copied), a Hub id, or ''
    for fbank."""
    if spec.feats_type == "fbank":
        return ""
    local = Path(spec.ssl_model).expanduser()
    if include:
        if not local.is_dir():
            from huggingface_hub import snapshot_download

            local = Path(snapshot_download(spec.ssl_model))  # (from the cache when it is there)
        shutil.copytree(local, tmp / FRONT_END, ignore=shutil.ignore_patterns(".*"))
        return FRONT_END
    if hub_id:
        return hub_id
    if local.exists():
        raise DataError(f"the front end {spec.ssl_model} is a folder of this machine", str(model_dir),
                        "add --include_front_end to put its files in the package, or --front_end_id with its "
                        "Hugging Face Hub id (e.g. openai/whisper-base)")
    return spec.ssl_model


def _reported_search(model_dir: Path) -> dict:
    """The search of the decoding that RESULTS.md reports (the first decode dir), else the defaults."""
    from dataclasses import asdict, fields

    names = {f.name for f in fields(DecodeOptions)}
    for decode_dir in sorted(p.parent for p in model_dir.glob("decode_*/decode_info.json")):
        info = DecodeInfo.read(decode_dir)
        return {k: v for k, v in info.search.items() if k in names}
    return asdict(DecodeOptions())


def _model_card(tmp: Path, name: str, config: dict, spec: ExtractorSpec, front: str, search: dict) -> None:
    results = (tmp / "RESULTS.md").read_text(encoding="utf-8") if (tmp / "RESULTS.md").is_file() else ""
    table = [line for line in results.splitlines() if line.startswith(("|", "### WER", "### CER"))][:8]
    features = f"{spec.n_mels}-dim filterbanks" if spec.feats_type == "fbank" else \
        f"layer(s) {', '.join(map(str, spec.layers))} of {front} ({'its files in front_end/' if front == FRONT_END else 'Hugging Face Hub'})"
    top = config.get("ssl_top")
    lines = [
        f"# {name}", "",
        "A speech recognizer trained with asrkit on stored features: "
        f"{features}; decoder {config.get('decoder', 'transformer')}, encoder {config.get('encoder')}"
        + (f", the encoder's layers above layer {spec.stored_layer} trained ({(top or {}).get('adapter', 'full')})"
           if top is not None else "") + ".", "",
        "## Use", "", "```python", "from asrkit.transcribe import Transcriber",
        f'Transcriber.from_pretrained("{name}").transcribe(["a.wav"])', "```", "",
        f"or `python -m asrkit.bin.transcribe --model {name} a.wav`. Search: "
        + ", ".join(f"{k} {v}" for k, v in search.items()) + ".", "",
        "## Figures", "", *(table or ["(no scoring in the experiment dir)"]), "",
        "## Made with", "", f"asrkit {asrkit.__version__}, torch {torch.__version__}, Python {platform.python_version()}."]
    with atomic_open(tmp / "README.md") as f:
        f.write("\n".join(lines) + "\n")


def _write_archive(folder: Path, archive: Path) -> None:
    archive.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=archive.parent, prefix=f".{archive.name}.", delete=False) as f:
        tmp = Path(f.name)
    try:
        with tarfile.open(tmp, "w") as tar:
            tar.add(folder, arcname=folder.name)
        os.replace(tmp, archive)
    finally:
        tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------------------------
# Loading


def resolve(source: str | Path, revision: str | None = None) -> Path:
    """The package folder of `source`: a folder, an archive (unpacked once into the cache), or a Hugging
    Face Hub id (snapshot_download: its cache, HF_HUB_OFFLINE honoured); checked (`verify`)."""
    path = Path(source).expanduser()
    if path.is_dir():
        return verify(path)
    if path.is_file():
        return verify(_unpacked(path))
    if str(source).startswith((".", "/", "~")) or str(source).count("/") != 1:
        raise DataError("no such model package (a folder, an archive, or a Hub id org/name)", str(source))
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return verify(Path(snapshot_download(str(source), revision=revision)))
    except (LocalEntryNotFoundError, HfHubHTTPError, OSError) as e:
        raise DataError(f"cannot get the model from the Hugging Face Hub: {str(e).splitlines()[0]}", str(source),
                        "check the id; offline (HF_HUB_OFFLINE=1), only a model in the local cache loads") from None


def verify(folder: Path) -> Path:
    """`folder` if it is a whole package of a format this asrkit reads; else a DataError naming what
    is wrong (no manifest, a newer format, a missing or changed file)."""
    manifest = folder / MANIFEST
    if not manifest.is_file():
        raise DataError(f"not an asrkit model package (no {MANIFEST})", str(folder),
                        "export one with python -m asrkit.bin.export, or load an experiment dir with --model_dir")
    try:
        info = json.loads(manifest.read_text(encoding="utf-8"))
        fmt, files = int(info["format"]), dict(info["files"])
    except (ValueError, KeyError, TypeError) as e:
        raise DataError(f"a damaged {MANIFEST} ({e})", str(manifest)) from None
    if fmt > FORMAT:
        raise DataError(f"a package of format {fmt}, made by asrkit {info.get('asrkit')}; this asrkit reads "
                        f"formats up to {FORMAT}", str(folder), "upgrade asrkit")
    for name, digest in files.items():
        path = folder / name
        if not path.is_file():
            raise DataError("the package misses a file", str(path), "copy the whole package again")
        if file_digest(path) != digest:
            raise DataError("the file is not the one the package was made with (damaged or changed)", str(path),
                            "copy the package again from where it was made")
    return folder


def _unpacked(archive: Path) -> Path:
    """The folder an archive unpacks to, in ~/.cache/asrkit/packages/<its SHA-256> (once; atomically)."""
    if not tarfile.is_tarfile(archive):
        raise DataError("not a model package archive (a tar file)", str(archive))
    cache = Path(os.environ.get("ASRKIT_CACHE", Path.home() / ".cache" / "asrkit")) / "packages" / file_digest(archive)
    if not cache.is_dir():
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".unpack.", dir=cache.parent))
        try:
            with tarfile.open(archive) as tar:
                tar.extractall(tmp, filter="data")  # (no link or path out of the folder: refused)
            os.replace(tmp, cache)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    tops = [p for p in cache.iterdir() if p.is_dir()]
    if len(tops) != 1:
        raise DataError("a package archive holds one folder", str(archive))
    return tops[0]


def search_of(folder: Path) -> DecodeOptions:
    """The package's reported search (decode.yaml), as DecodeOptions."""
    path = folder / DECODE
    if not path.is_file():
        return DecodeOptions()
    return DecodeOptions(**(yaml.safe_load(path.read_text(encoding="utf-8")) or {}))


def push_to_hub(folder: Path, repo_id: str) -> str:
    """Upload a package folder to the Hugging Face Hub repo `repo_id` (created if need be; the token of
    `huggingface-cli login` or HF_TOKEN); returns the repo's URL."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    verify(folder)
    api = HfApi()
    try:
        url = api.create_repo(repo_id, exist_ok=True)
        api.upload_folder(folder_path=str(folder), repo_id=repo_id,
                          commit_message=f"asrkit model package (format {FORMAT})")
    except (HfHubHTTPError, OSError) as e:
        raise DataError(f"cannot upload to the Hugging Face Hub: {str(e).splitlines()[0]}", repo_id,
                        "log in (huggingface-cli login, or HF_TOKEN) and check the repo id") from None
    return str(url)
