"""The Whisper decoder (decoder: whisper) starts as the checkpoint's own: the same logits as
transformers' WhisperForConditionalGeneration on the same encoder states, the same greedy search."""
from __future__ import annotations

import pytest
import torch

from asrkit.decode.beam import beam_search
from asrkit.decode.search import DecodeOptions
from asrkit.nets import build_model
from asrkit.tokenizer import build_token_list

TEXTS = ["the cat sat on the mat", "one two three four", "we went"]


@pytest.fixture(scope="module", params=["tiny", "tiny-en", "tiny-128"])
def pair(request, tmp_path_factory):
    """(our model, transformers' Whisper, tokenizer) from a tiny random Whisper checkpoint of each shape:
    multilingual, English-only (*.en: a prompt without language and task), 128 mel bins (large-v3)."""
    from transformers import WhisperForConditionalGeneration

    from asrkit.random_models import save_random_whisper

    whisper = save_random_whisper(tmp_path_factory.mktemp("whisper") / request.param, preset=request.param)
    tok = build_token_list(TEXTS, "whisper", tmp_path_factory.mktemp("tok") / "whisper", ssl_model=str(whisper))
    hf = WhisperForConditionalGeneration.from_pretrained(str(whisper)).eval()
    conf = {"frontend_conf": {"layer_norm": False}, "encoder": "identity", "decoder": "whisper",
            "decoder_conf": {"dropout_rate": 0.0}, "model_conf": {"ctc_weight": 0.0}}
    model = build_model(conf, hf.config.d_model, 1, tok.vocab_size, ssl_model=str(whisper)).eval()
    return model, hf, tok


def hf_prompt(hf) -> list[int]:
    g = hf.generation_config
    if not g.is_multilingual:
        return [g.decoder_start_token_id, g.no_timestamps_token_id]
    return [g.decoder_start_token_id, g.lang_to_id["<|en|>"], g.task_to_id["transcribe"], g.no_timestamps_token_id]


def hf_logits(hf, tokens: list[int], memory: torch.Tensor) -> torch.Tensor:
    """transformers' logits after the prompt and our tokens, over Whisper's ids."""
    prompt = hf_prompt(hf)
    ids = torch.tensor([prompt + [t - 2 for t in tokens]])
    with torch.no_grad():
        return hf(encoder_outputs=(memory[None],), decoder_input_ids=ids).logits[0, len(prompt) - 1:]


def test_teacher_forcing_gives_whispers_logits_batched_as_one_by_one(pair):
    model, hf, tok = pair
    torch.manual_seed(0)
    lens = torch.tensor([30, 17, 24])
    memory = torch.randn(3, 30, hf.config.d_model)
    ys = [tok.encode(t) for t in TEXTS]
    width = max(map(len, ys)) + 1
    ys_in = torch.tensor([[tok.sos] + y + [tok.eos] * (width - 1 - len(y)) for y in ys])
    with torch.no_grad():
        ours = model.decoder(ys_in, torch.tensor([len(y) + 1 for y in ys]), memory, lens)
    eot = hf.config.eos_token_id
    for b, y in enumerate(ys):
        theirs = hf_logits(hf, y, memory[b, : lens[b]])  # one utterance, no padding
        mine = ours[b, : len(y) + 1]
        torch.testing.assert_close(mine[:, 2:], theirs[:, : eot + 1], atol=1e-4, rtol=1e-4)  # text tokens, <eos>
        assert bool((mine[:, :2] < -1e3).all())  # <blank>, <unk>: never


def test_the_search_follows_whispers_greedy_path(pair):
    model, hf, tok = pair
    torch.manual_seed(1)
    memory, eot = torch.randn(2, 25, hf.config.d_model), hf.config.eos_token_id
    lens = torch.tensor([25, 19])
    hyps = beam_search(model, memory, lens, DecodeOptions(mode="attention", beam=1, ctc_weight=0.0, maxlenratio=-8))
    for b in range(2):
        path = []  # transformers' greedy choice among the text tokens and <|endoftext|>
        while len(path) < 8:
            nxt = int(hf_logits(hf, path, memory[b, : lens[b]])[-1, : eot + 1].argmax())
            if nxt == eot:
                break
            path.append(nxt + 2)
        assert hyps[b][0].tokens == path and path


def test_a_wrong_token_list_or_checkpoint_is_named(pair, tiny_whisper, tmp_path):
    model, hf, tok = pair
    conf = {"encoder": "identity", "decoder": "whisper", "model_conf": {"ctc_weight": 0.0}}
    from asrkit.errors import DataError

    with pytest.raises(DataError, match="token-type whisper|--token_type whisper"):
        build_model(conf, hf.config.d_model, 1, 40, ssl_model=str(tiny_whisper))
    with pytest.raises(DataError, match="not a HuggingFace model dir"):
        build_model(conf, hf.config.d_model, 1, tok.vocab_size, ssl_model=str(tmp_path))
    # a model dir written before the checkpoint came from the features: its decoder_conf names it
    legacy = {**conf, "decoder_conf": {"pretrained": str(tiny_whisper)}}
    assert build_model(legacy, hf.config.d_model, 1, tok.vocab_size).decoder.prompt.numel() > 0


def test_a_frozen_embedding_leaves_the_tied_output_layer_whispers(pair, tmp_path):
    """decoder_conf.freeze_embed: the token embedding and the output layer tied to it are not trained
    (no gradient, so the optimizer leaves them); the layers are."""
    model, hf, tok = pair
    conf = {"frontend_conf": {"layer_norm": False}, "encoder": "identity", "decoder": "whisper",
            "decoder_conf": {"freeze_embed": True}, "model_conf": {"ctc_weight": 0.0}}
    whisper = hf.name_or_path
    frozen = build_model(conf, hf.config.d_model, 1, tok.vocab_size, ssl_model=whisper)
    assert frozen.decoder.output_layer.weight is frozen.decoder.embed.weight
    ys = torch.tensor([tok.encode(TEXTS[0]) + [tok.eos]])
    out = frozen(torch.randn(1, 20, hf.config.d_model), torch.tensor([20]), ys, torch.tensor([ys.size(1)]))
    out["loss"].backward()
    assert frozen.decoder.embed.weight.grad is None
    assert frozen.decoder.decoders[0].feed_forward[0].weight.grad.abs().sum() > 0
    trained = sum(p.numel() for p in frozen.parameters() if p.requires_grad)
    assert trained == sum(p.numel() for p in model.parameters() if p.requires_grad) - frozen.decoder.embed.weight.numel()
