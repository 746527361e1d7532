"""Pretrained checkpoints through HuggingFace `transformers`, the one module that loads them (with
friendly errors and checks of a local dir): self-supervised encoders (WavLM, wav2vec2, HuBERT),
Whisper's encoder, and the whole Whisper (its decoder, tokenizer and processor). A checkpoint, an HF
model id or a local dir, is named `ssl_model` everywhere, as run.sh's option.

Users load pretrained checkpoints by id or local dir (`microsoft/wavlm-base-plus`,
`openai/whisper-base`); tests, benchmarks and the offline demo load random-weight ones that
asrkit/random_models.py saved, through the very same `from_pretrained` path.
"""
from __future__ import annotations

import json
from pathlib import Path

from asrkit.errors import DataError

# ---------------------------------------------------------------------------------------------
# Loading any HF speech encoder with hidden states (WavLM, wav2vec2, HuBERT; Whisper) and choosing layers.

def hf_source(ssl_model: str) -> str:
    """What from_pretrained is given: a local dir (checked), else the model id."""
    looks_local = Path(ssl_model).expanduser().exists() or ssl_model.startswith((".", "/", "~"))
    if looks_local and not (Path(ssl_model).expanduser() / "config.json").is_file():
        raise DataError("not a HuggingFace model dir (no config.json)", ssl_model,
                        "pass a dir written by save_pretrained, or a model id such as microsoft/wavlm-base-plus")
    return str(Path(ssl_model).expanduser()) if looks_local else ssl_model


def load_error(e: Exception, ssl_model: str):
    return DataError(f"cannot load the model: {str(e).splitlines()[0]}", ssl_model,
                     "check the model id, or download it on a machine with internet "
                     "(huggingface-cli download ID) and pass its local dir")


def load_config(ssl_model: str):
    """The checkpoint's config alone (transformers' AutoConfig)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(hf_source(ssl_model))
    except (OSError, ValueError) as e:
        raise load_error(e, ssl_model) from None


def model_type(ssl_model: str) -> str:
    """The checkpoint's `model_type` ("wavlm", "hubert", "whisper", ...) from its config alone."""
    return load_config(ssl_model).model_type


def from_pretrained(cls, ssl_model: str, weights: bool = True, **kw):
    """`cls.from_pretrained` of a checkpoint (friendly errors; no progress bar). weights=False: the same
    model from the checkpoint's config alone, its weights left uninitialized, in milliseconds: for a
    trained model's weights to replace (model_io.load_model), where reading the checkpoint's would be
    wasted. A Whisper skeleton gets the checkpoint's generation config too (its prompt tokens)."""
    from transformers import AutoConfig, GenerationConfig
    from transformers.initialization import no_init_weights
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    src = hf_source(ssl_model)
    try:
        if weights:
            return cls.from_pretrained(src, **kw)
        config = AutoConfig.from_pretrained(src)
        with no_init_weights():  # (AutoModel has from_config, a model class _from_config)
            model = cls.from_config(config, **kw) if hasattr(cls, "from_config") else cls._from_config(config, **kw)
    except (OSError, ValueError) as e:
        raise load_error(e, ssl_model) from None
    if model.can_generate():
        try:
            model.generation_config = GenerationConfig.from_pretrained(src)
        except OSError:  # none saved: the one from the config stays
            pass
    return model


def load_whisper(ssl_model: str, dtype=None, weights: bool = True):
    """The whole Whisper checkpoint (encoder and decoder: WhisperForConditionalGeneration), in float32
    unless `dtype` says otherwise, whatever the file stores (weights=False: see from_pretrained)."""
    import torch
    from transformers import WhisperForConditionalGeneration

    return from_pretrained(WhisperForConditionalGeneration, ssl_model, weights, dtype=dtype or torch.float32)


def load_whisper_tokenizer(ssl_model: str):
    """A Whisper checkpoint's tokenizer (or that of a token dir holding its files)."""
    from transformers import WhisperTokenizer

    try:  # (a token dir holds the tokenizer's files and no model config)
        tok = WhisperTokenizer.from_pretrained(ssl_model if Path(ssl_model).is_dir() else hf_source(ssl_model))
    except (OSError, ValueError) as e:
        raise DataError(f"cannot load a Whisper tokenizer: {str(e).splitlines()[0]}", ssl_model,
                        "give a Whisper checkpoint dir or model id (run.sh: --ssl_model)") from None
    restore_missing_merges(tok)
    return tok


def restore_missing_merges(tok) -> list[tuple[str, str]]:
    """Put back the merges a byte-level BPE tokenizer lost; returns them (none for a sound one).

    In Whisper's (GPT-2's) byte-level BPE, tokens 0-255 are the bytes and merge r makes token 256 + r, so the
    vocab says which merges there must be. A tokenizer.json converted from a merges.txt whose first merge was
    taken for its "#version" header lacks merge 0, "Ġ t": every word starting with t then splits into "Ġ" and
    the rest ("Ġ", "the" instead of "Ġthe"), spellings Whisper never learnt, and a decoder fine-tuned on such
    targets must learn the commonest English words anew. A lost merge is the token's bytes merged by the
    lower-ranked merges: two parts are left.
    """
    from tokenizers.models import BPE

    backend = tok.backend_tokenizer
    state = json.loads(backend.to_str())["model"]
    if state.get("type") != "BPE" or not state.get("merges"):
        return []
    vocab = state["vocab"]
    pairs = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["merges"]]
    made = {vocab.get(a + b) for a, b in pairs}
    if None in made or len(made) != len(pairs) or min(made) < 256:
        return []  # not a byte-level BPE in vocab order: nothing to say which merge is lost
    token = {i: t for t, i in vocab.items()}
    lost = [i for i in range(256, max(made)) if i not in made and i in token]
    if not lost:
        return []
    rank = {p: vocab[p[0] + p[1]] for p in pairs}
    restored = []
    for i in lost:
        parts = list(token[i])
        while len(parts) > 2:
            best = min(zip(parts, parts[1:]), key=lambda p: rank.get(p, i))
            if rank.get(best, i) >= i:
                break
            j = list(zip(parts, parts[1:])).index(best)
            parts[j:j + 2] = [best[0] + best[1]]
        if len(parts) != 2:
            return []  # not recoverable: leave the tokenizer as it came
        rank[tuple(parts)] = i
        restored.append(tuple(parts))
    merges = sorted(rank, key=rank.get)
    backend.model = BPE(vocab=vocab, merges=merges, dropout=state.get("dropout"), unk_token=state.get("unk_token"),
                        continuing_subword_prefix=state.get("continuing_subword_prefix") or "",
                        end_of_word_suffix=state.get("end_of_word_suffix") or "", fuse_unk=state.get("fuse_unk", False),
                        byte_fallback=state.get("byte_fallback", False), ignore_merges=state.get("ignore_merges", False))
    return restored


def load_whisper_processor(ssl_model: str):
    """A Whisper checkpoint's feature extractor and tokenizer (WhisperProcessor)."""
    from transformers import WhisperProcessor

    try:
        processor = WhisperProcessor.from_pretrained(hf_source(ssl_model))
    except (OSError, ValueError) as e:
        raise load_error(e, ssl_model) from None
    restore_missing_merges(processor.tokenizer)
    return processor


def load_whisper_encoder(ssl_model: str, device: str = "cpu", weights: bool = True):
    """(Whisper's encoder in eval mode on `device`, its WhisperFeatureExtractor): the decoder is dropped.
    The weights are loaded in float32 whatever dtype the file stores (see load_ssl_model; weights=False:
    see from_pretrained)."""
    import torch
    from transformers import WhisperFeatureExtractor, WhisperModel

    # sdpa: the encoder's layers are given a boolean padding mask (see WhisperExtractor)
    encoder = from_pretrained(WhisperModel, ssl_model, weights, attn_implementation="sdpa",
                              dtype=torch.float32).get_encoder()
    src = hf_source(ssl_model)
    try:
        fe = WhisperFeatureExtractor.from_pretrained(src)
    except OSError:
        raise DataError("the Whisper checkpoint has no feature extractor (preprocessor_config.json)", ssl_model,
                        "save the checkpoint's WhisperFeatureExtractor (or WhisperProcessor) into it") from None
    return encoder.eval().requires_grad_(False).to(device), fe


def load_ssl_model(ssl_model: str, device: str = "cpu", weights: bool = True):
    """(model in eval mode on `device`, do_normalize) for an HF model id or a local dir.

    `do_normalize`: whether the checkpoint expects each waveform scaled to zero mean and unit
    variance (its feature extractor's setting; WavLM Base(+) does not, the Large models do).
    The weights are loaded in float32 whatever dtype the file stores (float16 for whisper-large-v3,
    say): the compute dtype is the device's choice (autocast), never the file's, and float16
    weights would fail on a CPU ("mixed dtype"). weights=False: see from_pretrained.
    """
    import torch
    from transformers import AutoFeatureExtractor, AutoModel

    model = from_pretrained(AutoModel, ssl_model, weights, dtype=torch.float32)
    config, src = model.config, hf_source(ssl_model)
    if not hasattr(model, "feature_extractor") or not hasattr(model, "encoder"):
        raise DataError(f"{type(model).__name__} is not a speech encoder with a convolutional front end",
                        ssl_model, "use a WavLM, wav2vec2 or HuBERT checkpoint")
    try:
        do_normalize = bool(getattr(AutoFeatureExtractor.from_pretrained(src), "do_normalize", False))
    except (OSError, ValueError):  # no preprocessor_config.json: the Large ("layer" norm) models normalize
        do_normalize = getattr(config, "feat_extract_norm", "group") == "layer"
    return model.eval().requires_grad_(False).to(device), do_normalize


def weights_hash(model) -> str:
    """A short sha256 of a model's weights (names and bytes), independent of where it was loaded from."""
    import hashlib

    import torch

    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def conv_geometry(config) -> tuple[int, int]:
    """(receptive field, stride) in samples of a model's convolutional front end (400, 320 for WavLM)."""
    field, stride = 1, 1
    for k, s in zip(config.conv_kernel, config.conv_stride):
        field += (k - 1) * stride
        stride *= s
    return field, stride


def num_frames(num_samples: int, config) -> int:
    """Frames the front end makes from `num_samples` samples: 1 + (n - field) // stride, 0 if too short."""
    field, stride = conv_geometry(config)
    return 0 if num_samples < field else 1 + (num_samples - field) // stride


LAYER_SPEC_HELP = ("hidden layer(s) to keep, 0 being the transformer's input and N its last layer: "
                   "'9' one layer; '6,9,12' or '6-12' several, stored stacked (layers, frames, dim) "
                   "for a learned weighted sum; 'all' every layer 0..N stacked; 'last' layer N; 'last-K' layer N-K "
                   "(below K top layers that train with the model: ssl_top); "
                   "'mean:6-12' (or 'mean:6,9,12') their average, stored as one layer")


def parse_layers(spec: str, num_layers: int) -> tuple[list[int], str]:
    """(layer indices, reduce) of a --ssl_layer spec; reduce is 'none' (one layer), 'stack' or 'mean'."""
    spec = str(spec).strip().lower()
    reduce = "stack"
    if spec.startswith("mean:"):
        reduce, spec = "mean", spec[5:]
    try:
        if spec == "all":
            layers = list(range(num_layers + 1))
        elif spec == "last":
            layers = [num_layers]
        elif spec.startswith("last-"):
            layers = [num_layers - int(spec[5:])]
        else:
            layers = []
            for part in spec.split(","):
                lo, _, hi = part.strip().partition("-")
                layers += list(range(int(lo), int(hi) + 1)) if hi else [int(lo)]
    except ValueError:
        raise DataError(f"bad layer spec {spec!r}", "--ssl_layer", LAYER_SPEC_HELP) from None
    bad = [i for i in layers if not 0 <= i <= num_layers]
    if not layers or bad:
        raise DataError(f"layer(s) {bad or spec} do not exist: the model has layers 0-{num_layers}",
                        "--ssl_layer", "choose layers within that range")
    if len(set(layers)) != len(layers):
        raise DataError(f"layer spec {spec!r} names a layer twice", "--ssl_layer")
    return layers, ("none" if len(layers) == 1 else reduce)
