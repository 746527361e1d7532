"""The pretrained encoder's top layers on its stored lower-layer states: at the start, exactly the
encoder's output on the audio, batched as one by one."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from asrkit.features.extractors import ExtractorSpec
from asrkit.nets.ssl_top import SSLTop
from conftest import load_trained_only, same_tensors, write_tone


def utterances(tmp_path, n=3):
    from asrkit.audio import load_audio

    return [load_audio(str(write_tone(tmp_path / f"u{i}.wav", seconds=0.6 + 0.45 * i, freq=170.0 + 60 * i,
                                      seed=i))) for i in range(n)]


def strong_position_bias(wavlm, out):
    """The tiny WavLM with a relative position bias large enough to matter (random init: 0.02 scale)."""
    from transformers import Wav2Vec2FeatureExtractor, WavLMModel

    model = WavLMModel.from_pretrained(str(wavlm))
    with torch.no_grad():
        model.encoder.layers[0].attention.rel_attn_embed.weight.normal_(0, 3.0)
    model.save_pretrained(out)
    Wav2Vec2FeatureExtractor.from_pretrained(str(wavlm)).save_pretrained(out)
    return out


def checkpoint_of(kind, tmp_path, tiny_wavlm, tiny_whisper):
    """A tiny random checkpoint of each kind the top supports."""
    from asrkit.random_models import save_random_ssl

    if kind == "wavlm":
        return strong_position_bias(tiny_wavlm, tmp_path / "wavlm")
    return tiny_whisper if kind == "whisper" else save_random_ssl(tmp_path / kind, model_type=kind)


@pytest.mark.parametrize("kind", ["wavlm", "whisper", "wav2vec2", "hubert"])
def test_the_top_on_stored_states_is_the_encoder_output(kind, tmp_path, tiny_wavlm, tiny_whisper):
    checkpoint = checkpoint_of(kind, tmp_path, tiny_wavlm, tiny_whisper)
    extra = {"whisper_input": "trimmed"} if kind == "whisper" else {}
    ext = ExtractorSpec("wavlm", str(checkpoint), "all", dtype="float32", compute_dtype="float32", **extra).build("cpu")
    wavs = utterances(tmp_path)
    stored = [ext([ext.prepare(w)])[0] for w in wavs]  # (layers, T, D) each, one by one
    last = len(stored[0]) - 1
    for k in range(last):
        top = SSLTop(str(checkpoint), k, stored[0].shape[-1]).eval()
        with torch.no_grad():
            ones = [top(torch.from_numpy(s[k])[None], torch.tensor([s.shape[1]]))[0].numpy() for s in stored]
            lens = torch.tensor([s.shape[1] for s in stored])
            batch = torch.zeros(len(stored), int(lens.max()), stored[0].shape[-1])
            for i, s in enumerate(stored):
                batch[i, :s.shape[1]] = torch.from_numpy(s[k])
            batched = top(batch, lens).numpy()
        for i, s in enumerate(stored):
            want = s[last]
            np.testing.assert_allclose(ones[i], want, atol=2e-4 * np.abs(want).max(), err_msg=f"{kind} from layer {k}")
            np.testing.assert_allclose(batched[i, :s.shape[1]], want, atol=2e-4 * np.abs(want).max())
    assert sum(p.numel() for p in SSLTop(str(checkpoint), last - 1, stored[0].shape[-1]).parameters()
               if p.requires_grad) > 0
    shell = SSLTop(str(checkpoint), k, stored[0].shape[-1], pretrained=False)  # the shapes alone, as for
    shell.load_state_dict(top.state_dict())                                 # a trained model's weights
    assert same_tensors(shell, top)


def test_a_wrong_layer_or_checkpoint_is_named(tiny_wavlm, tmp_path):
    from asrkit.random_models import save_random_ssl

    with pytest.raises(ValueError, match="from_layer 9"):
        SSLTop(str(tiny_wavlm), 9, 32)
    with pytest.raises(ValueError, match="not a HuggingFace model dir"):
        SSLTop(str(tmp_path / "nowhere"), 1, 32)
    other = save_random_ssl(tmp_path / "d2v", model_type="data2vec-audio")  # (its layers: not supported)
    with pytest.raises(ValueError, match="is a data2vec-audio: store its last layer instead"):
        SSLTop(str(other), 1, 64)


@pytest.mark.parametrize("kind", ["wavlm", "whisper", "hubert"])
def test_lora_starts_exact_and_its_adapters_are_in_the_path(kind, tmp_path, tiny_wavlm, tiny_whisper):
    from transformers import AutoConfig

    checkpoint = str(checkpoint_of(kind, tmp_path, tiny_wavlm, tiny_whisper))
    c = AutoConfig.from_pretrained(checkpoint)
    dim = c.d_model if kind == "whisper" else c.hidden_size
    full, lora = SSLTop(checkpoint, 1, dim).eval(), SSLTop(checkpoint, 1, dim, adapter="lora", lora_rank=2).eval()
    x, lens = torch.randn(2, 17, dim), torch.tensor([17, 11])
    with torch.no_grad():
        torch.testing.assert_close(lora(x, lens), full(x, lens))
        trainable = [n for n, p in lora.named_parameters() if p.requires_grad]
        assert trainable and all("lora_" in n for n in trainable)
        for n, p in lora.named_parameters():
            if "lora_B" in n:
                p.normal_()
        assert (lora(x, lens) - full(x, lens)).abs().max() > 1e-3


def test_layer_wise_decay_slows_the_lower_layers(tiny_whisper):
    """ssl_top.lr_decay: the top layer (and the final norm) at lr x lr_scale, each layer below at the one
    above's x lr_decay; every trainable parameter in one group, once."""
    from transformers import AutoConfig

    from asrkit.train.optim import build_optimizer

    with pytest.raises(ValueError, match="lr_decay"):
        SSLTop(str(tiny_whisper), 0, AutoConfig.from_pretrained(str(tiny_whisper)).d_model, lr_decay=0)
    model = torch.nn.ModuleDict({"ssl_top": SSLTop(str(tiny_whisper), 0, AutoConfig.from_pretrained(str(tiny_whisper)).d_model,
                                                   lr_scale=0.5, lr_decay=0.5), "head": torch.nn.Linear(3, 3)})
    groups = build_optimizer("adam", model, {"lr": 0.004}).param_groups
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    layers = model["ssl_top"].layers
    assert len(layers) >= 2 and len(lr_of) == sum(1 for _ in model.parameters())
    for depth, layer in enumerate(reversed(layers)):
        assert {lr_of[id(p)] for p in layer.parameters()} == {0.004 * 0.5 * 0.5 ** depth}
    assert {lr_of[id(p)] for p in model["ssl_top"].final_norm.parameters()} == {0.002}
    assert {lr_of[id(p)] for p in model["head"].parameters()} == {0.004}


@pytest.mark.parametrize("kind", ["wavlm", "whisper"])
def test_dropout_in_the_top_while_training_only(kind, tmp_path, tiny_wavlm, tiny_whisper):
    """ssl_top.dropout: two training passes differ, eval is the checkpoint's encoder as without it."""
    from transformers import AutoConfig

    checkpoint = str(checkpoint_of(kind, tmp_path, tiny_wavlm, tiny_whisper))
    c = AutoConfig.from_pretrained(checkpoint)
    dim = c.d_model if kind == "whisper" else c.hidden_size
    plain, dropped = SSLTop(checkpoint, 0, dim, dropout=0.0), SSLTop(checkpoint, 0, dim, dropout=0.3)
    x, lens = torch.randn(2, 17, dim), torch.tensor([17, 11])
    with torch.no_grad():
        torch.testing.assert_close(plain.train()(x, lens), plain(x, lens))
        assert (dropped.train()(x, lens) - dropped(x, lens)).abs().max() > 1e-3
        torch.testing.assert_close(dropped.eval()(x, lens), plain.eval()(x, lens))
    with pytest.raises(ValueError, match="dropout"):
        SSLTop(checkpoint, 0, dim, dropout=1.0)


def test_a_model_with_the_top_trains_and_transcribes(tmp_path, tiny_corpus, tiny_whisper, capsys, monkeypatch):
    """Stage 3 with ssl_top on a tiny Whisper's stored layer 1 (trimmed): the exp dir records the
    checkpoint and the split point, the top learns at lr x lr_scale, and transcribe (stored layer's
    extractor, the trained top, the light model) gives stage 4's text."""
    import json

    import yaml

    from asrkit.bin import decode, train, transcribe
    from asrkit.features.dump import dump
    from asrkit.fileio import load_jsonl, write_jsonl
    from asrkit.model_io import model_state
    from asrkit.tokenizer import build_token_list
    from train_fixtures import TINY_MODEL, TINY_TRAIN

    records = [dict(r, audio=str(tiny_corpus.parent / r["audio"])) for r in load_jsonl(tiny_corpus)]
    spec = ExtractorSpec("wavlm", str(tiny_whisper), "1", dtype="float32", whisper_input="trimmed")
    paths = {}
    for split, part in (("train", records[:18]), ("valid", records[18:])):
        write_jsonl(tmp_path / f"{split}.jsonl", part)
        dump(str(tmp_path / f"{split}.jsonl"), str(tmp_path / f"{split}.h5"), spec, nj=0, progress=False)
        paths |= {f"{split}_data": tmp_path / f"{split}.jsonl", f"{split}_feats": tmp_path / f"{split}.h5"}
    build_token_list([r["text"] for r in records], "char", tmp_path / "tokens")
    conf = tmp_path / "conf.yaml"
    conf.write_text(yaml.safe_dump({**TINY_MODEL, **TINY_TRAIN, "ssl_top": {"lr_scale": 0.5}}))
    exp = tmp_path / "exp"
    train.main([f"--config={conf}", *(f"--{k}={v}" for k, v in paths.items()), f"--token_dir={tmp_path / 'tokens'}",
                f"--exp_dir={exp}", "--ngpu=0"])
    config = yaml.safe_load((exp / "config.yaml").read_text())
    assert config["ssl_top"] == {"lr_scale": 0.5}  # the checkpoint and its layer: the features' extractor
    spec = ExtractorSpec.from_attrs(json.loads((exp / "feats_attrs.json").read_text()))
    assert (spec.ssl_model, spec.stored_layer, spec.whisper_input) == (str(tiny_whisper), 1, "trimmed")
    state = model_state(exp / "model.avg.safetensors")
    pretrained = SSLTop(str(tiny_whisper), 1, state["ssl_top.final_norm.weight"].numel()).state_dict()
    assert any(not torch.equal(state[f"ssl_top.{k}"], v) for k, v in pretrained.items())  # the top learned

    from asrkit.model_io import build_from_config
    from asrkit.train.optim import build_optimizer

    model = load_trained_only(exp, monkeypatch)  # the top's shapes from the checkpoint's config, no weights read
    reference = build_from_config(config, json.loads((exp / "feats_attrs.json").read_text()))
    reference.load_state_dict(state)
    assert same_tensors(model, reference.eval())
    lrs = [g["lr"] for g in build_optimizer("adam", model, {"lr": 0.002}).param_groups]
    assert lrs == [0.002, 0.001]
    out = tmp_path / "dec"
    decode.main([f"--model_dir={exp}", f"--data={paths['valid_data']}", f"--feats={paths['valid_feats']}",
                 f"--out={out}", "--beam=2", "--maxlenratio=-4"])
    hyps = {r["utt_id"]: r["text"] for r in load_jsonl(out / "hyp.jsonl")}
    capsys.readouterr()
    assert transcribe.main([f"--model_dir={exp}", "--beam=2", "--maxlenratio=-4", "--progress=false",
                            *(r["audio"] for r in records[18:])]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines == [f"{r['audio']}\t{hyps[r['utt_id']]}" for r in records[18:]] and any(hyps.values())
    other = tmp_path / "other.h5"  # stored at another split point: refused
    dump(str(paths["valid_data"]), str(other), ExtractorSpec("wavlm", str(tiny_whisper), "2", dtype="float32",
                                                             whisper_input="trimmed"), nj=0, progress=False)
    from asrkit.errors import DataError

    with pytest.raises(DataError, match="layers: store has \\[2\\], model expects \\[1\\]"):
        decode.main([f"--model_dir={exp}", f"--data={paths['valid_data']}", f"--feats={other}",
                     f"--out={tmp_path / 'dec2'}", "--beam=2"])
