"""Self-supervised speech encoders through HuggingFace `transformers` (WavLM, wav2vec2, HuBERT).

Users load pretrained checkpoints by id or local dir (`microsoft/wavlm-base-plus`). Tests, benchmarks
and the offline demo build random-weight models from a config and save them to a local dir, so that
they are loaded back through the very same `from_pretrained` path.
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


def save_random_wavlm(out_dir: str | Path, preset: str = "tiny", seed: int = 0) -> Path:
    """Build a random-weight WavLM of a preset size, save it (config, weights, feature extractor)."""
    import torch
    from transformers import Wav2Vec2FeatureExtractor, WavLMConfig, WavLMModel

    if preset not in PRESETS:
        raise ValueError(f"unknown WavLM preset {preset!r}; choose one of {sorted(PRESETS)}")
    torch.manual_seed(seed)
    # WavLM Base(+) normalizes its conv front end per utterance with group norm ("group"), and does
    # not normalize the waveform; keep that so that padding effects show up in tests as for real.
    config = WavLMConfig(feat_extract_norm="group", do_stable_layer_norm=False, **PRESETS[preset])
    model = WavLMModel(config).eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    Wav2Vec2FeatureExtractor(feature_size=1, sampling_rate=16000, padding_value=0.0,
                             do_normalize=False, return_attention_mask=False).save_pretrained(out_dir)
    return out_dir
