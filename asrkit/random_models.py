"""Random-weight speech encoders saved as pretrained checkpoints are: for tests, benchmarks and the
offline demo, which load them back through `from_pretrained` exactly as a user's checkpoint
(asrkit.ssl). Nothing in the toolkit's stages imports this module.
"""
from __future__ import annotations

from pathlib import Path

# Architectures of the real checkpoints; "tiny" is for tests and the offline demo on CPU.
PRESETS = {
    "tiny": dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128,
                 conv_dim=(32,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4),
    "small": dict(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                  conv_dim=(256,) * 7, num_conv_pos_embeddings=64, num_conv_pos_embedding_groups=16),
    "base-plus": dict(),  # the transformers defaults are WavLM Base(+): 768-dim, 12 layers
}


def save_random_ssl(out_dir: str | Path, preset: str = "tiny", seed: int = 0, model_type: str = "wavlm",
                    **config) -> Path:
    """Build a random-weight self-supervised encoder (`model_type` wavlm, wav2vec2 or hubert) of a preset
    size, save it (config, weights, feature extractor); `config`: more of its config's fields."""
    import torch
    from transformers import AutoConfig, AutoModel, Wav2Vec2FeatureExtractor

    if preset not in PRESETS:
        raise ValueError(f"unknown WavLM preset {preset!r}; choose one of {sorted(PRESETS)}")
    torch.manual_seed(seed)
    # The Base(+) models normalize their conv front end per utterance with group norm ("group"), and
    # do not normalize the waveform; keep that so that padding effects show up in tests as for real.
    config = AutoConfig.for_model(model_type, **{"feat_extract_norm": "group", "do_stable_layer_norm": False,
                                                 **PRESETS[preset], **config})
    model = AutoModel.from_config(config).eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                             do_normalize=False, return_attention_mask=False).save_pretrained(out_dir)
    return out_dir


# Whisper's architectures (encoder and decoder alike); "tiny" is for tests, "base" is whisper-base's.
# "tiny-en" has the shape of the English-only models (*.en: no language or task tokens), "tiny-128"
# that of large-v3 and large-v3-turbo (128 mel bins), each as small as "tiny".
_TINY = dict(d_model=64, encoder_layers=3, encoder_attention_heads=2, encoder_ffn_dim=128,
             decoder_layers=1, decoder_attention_heads=2, decoder_ffn_dim=128, max_target_positions=64)
WHISPER_PRESETS = {
    "tiny": _TINY,
    "tiny-en": dict(_TINY, english_only=True),
    "tiny-128": dict(_TINY, num_mel_bins=128),
    "base": dict(d_model=512, encoder_layers=6, encoder_attention_heads=8, encoder_ffn_dim=2048,
                 decoder_layers=6, decoder_attention_heads=8, decoder_ffn_dim=2048),
}
_WHISPER_SPECIALS = ("<|endoftext|>", "<|startoftranscript|>", "<|en|>", "<|translate|>", "<|transcribe|>",
                     "<|startoflm|>", "<|startofprev|>", "<|nocaptions|>", "<|notimestamps|>")


def save_random_whisper(out_dir: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Build a random-weight Whisper of a preset size and save all that `generate` needs: config,
    weights, generation config (English, transcribe), feature extractor and a byte-level tokenizer
    (the 256 bytes and Whisper's special tokens, no merges)."""
    import json

    import torch
    from transformers import (GenerationConfig, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration, WhisperProcessor, WhisperTokenizer)
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    if preset not in WHISPER_PRESETS:
        raise ValueError(f"unknown Whisper preset {preset!r}; choose one of {sorted(WHISPER_PRESETS)}")
    shape = dict(WHISPER_PRESETS[preset])
    english_only = shape.pop("english_only", False)
    specials = [t for t in _WHISPER_SPECIALS if not (english_only and t in ("<|en|>", "<|translate|>", "<|transcribe|>"))]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    vocab = {c: i for i, c in enumerate(bytes_to_unicode().values())}
    vocab.update({t: len(vocab) + i for i, t in enumerate(specials)})
    (out_dir / "vocab.json").write_text(json.dumps(vocab), encoding="utf-8")
    (out_dir / "merges.txt").write_text("#version: 0.2\n", encoding="utf-8")
    eot, sot = vocab["<|endoftext|>"], vocab["<|startoftranscript|>"]
    tokenizer = WhisperTokenizer(str(out_dir / "vocab.json"), str(out_dir / "merges.txt"), unk_token=_WHISPER_SPECIALS[0],
                                 bos_token=_WHISPER_SPECIALS[0], eos_token=_WHISPER_SPECIALS[0],
                                 pad_token=_WHISPER_SPECIALS[0], additional_special_tokens=specials[1:])
    torch.manual_seed(seed)
    config = WhisperConfig(vocab_size=len(vocab), pad_token_id=eot, bos_token_id=eot, eos_token_id=eot,
                           decoder_start_token_id=sot, **shape)
    model = WhisperForConditionalGeneration(config).eval()
    languages = {} if english_only else dict(
        lang_to_id={"<|en|>": vocab["<|en|>"]},
        task_to_id={"transcribe": vocab["<|transcribe|>"], "translate": vocab["<|translate|>"]})
    model.generation_config = GenerationConfig(
        decoder_start_token_id=sot, eos_token_id=eot, pad_token_id=eot, bos_token_id=eot,
        is_multilingual=not english_only, no_timestamps_token_id=vocab["<|notimestamps|>"],
        max_length=config.max_target_positions, suppress_tokens=[], begin_suppress_tokens=[], **languages)
    model.save_pretrained(out_dir)
    WhisperProcessor(WhisperFeatureExtractor(feature_size=config.num_mel_bins), tokenizer).save_pretrained(out_dir)
    return out_dir
