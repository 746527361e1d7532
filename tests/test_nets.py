"""Models: shipped configs train, padding never leaks, cached decoding equals teacher forcing."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from asrkit.errors import DataError
from asrkit.nets import build_model
from asrkit.nets.model import LabelSmoothingLoss, add_sos_eos
from asrkit.nets.specaug import SpecAugment

CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
SHIPPED = sorted(p for p in CONF_DIR.rglob("*.yaml") if "encoder" in (yaml.safe_load(p.read_text()) or {}))
V = 12  # vocabulary: <blank>=0, <unk>=1, ..., <sos/eos>=11

DEC = dict(attention_heads=2, linear_units=32, num_blocks=2, dropout_rate=0.0, positional_dropout_rate=0.0)
TINY = {
    "conformer": dict(frontend_conf=dict(proj_dim=12, subsample="conv2d2"),
                      encoder="conformer", decoder_conf=DEC, model_conf=dict(ctc_weight=0.3, lsm_weight=0.1),
                      encoder_conf=dict(output_size=16, attention_heads=2, linear_units=32, num_blocks=2,
                                        cnn_module_kernel=5, dropout_rate=0.0, positional_dropout_rate=0.0)),
    "bilstm": dict(frontend_conf=dict(proj_dim=12, subsample="conv1d"),
                   encoder="bilstm", decoder_conf=dict(DEC, attention_dim=8), model_conf=dict(ctc_weight=0.3),
                   encoder_conf=dict(hidden_size=10, num_layers=2, output_size=16, dropout_rate=0.0)),
    "bilstmp": dict(frontend_conf=dict(subsample="conv2d"), encoder="bilstm", decoder_conf=DEC,
                    encoder_conf=dict(hidden_size=10, num_layers=3, output_size=16, use_projection=True)),
}


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny models: one thread is ~20x faster than two on a busy 2-core machine (OpenMP spinning)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(kind, **changes):
    conf = copy.deepcopy(TINY[kind])
    for key, value in changes.items():
        conf[key] = {**conf.get(key, {}), **value} if isinstance(value, dict) else value
    return conf


def batch(b=2, layers=1, dim=10, lens=(40, 29), ys=((3, 4, 5, 6), (7, 8)), seed=0):
    g = torch.Generator().manual_seed(seed)
    feats = torch.randn(b, layers, max(lens), dim, generator=g)
    lens = torch.tensor(lens)
    for i, n in enumerate(lens):
        feats[i, :, n:] = 0.0
    ys_pad = torch.full((b, max(map(len, ys))), -1)
    for i, y in enumerate(ys):
        ys_pad[i, : len(y)] = torch.tensor(y)
    feats = feats if layers > 1 else feats[:, 0]
    return feats, lens, ys_pad, torch.tensor([len(y) for y in ys])


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: str(p.relative_to(CONF_DIR)))
def test_shipped_config_builds_and_trains(path):
    assert len(SHIPPED) >= 2  # train_bilstm.yaml and train_conformer.yaml at least
    torch.manual_seed(0)
    model = build_model(yaml.safe_load(path.read_text()), input_dim=24, input_layers=3, vocab_size=V)
    feats, lens, ys, ys_lens = batch(layers=3, dim=24, lens=(50, 33))
    out = model(feats, lens, ys, ys_lens)
    assert set(out) >= {"loss", "loss_ctc", "loss_att", "acc"} and torch.isfinite(out["loss"])
    out["loss"].backward()
    # every parameter learns (an unused one would also break DDP)
    assert [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0] == []


@pytest.mark.parametrize("encoder", ["conformer", "bilstm", "bilstmp"])
@pytest.mark.parametrize("layers", [1, 3])
def test_padding_does_not_leak(encoder, layers):
    """An utterance's outputs and losses are the same alone and batched with a longer one."""
    torch.manual_seed(0)
    model = build_model(tiny(encoder), input_dim=10, input_layers=layers, vocab_size=V).eval()
    feats, lens, ys, ys_lens = batch(layers=layers, lens=(41, 23), ys=((3, 4, 5, 6, 7), (8, 9)))
    # garbage in the padding must not matter either
    feats[1, ..., 23:, :] = 100.0
    enc, enc_lens = model.encode(feats, lens)
    ys_in, _, ys_in_lens = add_sos_eos(ys, model.sos, model.eos)
    dec = model.decoder_forward(ys_in, ys_in_lens, enc, enc_lens)
    with torch.no_grad():
        both = model(feats, lens, ys, ys_lens)
        alone = [model(feats[i: i + 1, ..., : lens[i], :], lens[i: i + 1], ys[i: i + 1, : ys_lens[i]], ys_lens[i: i + 1])
                 for i in range(2)]
    for loss in ("loss_ctc", "loss_att"):  # sums over the batch / batch size
        assert torch.allclose(both[loss] * 2, alone[0][loss] + alone[1][loss], atol=1e-4)
    n = int(enc_lens[1])
    enc1, enc1_lens = model.encode(feats[1:, ..., :23, :], lens[1:])
    assert enc1.shape[1] == n == int(enc1_lens)
    torch.testing.assert_close(enc[1, :n], enc1[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(model.ctc_log_probs(enc)[1, :n], model.ctc_log_probs(enc1)[0], atol=1e-5, rtol=1e-4)
    dec1 = model.decoder_forward(ys_in[1:, :3], ys_in_lens[1:], enc1, enc1_lens)
    torch.testing.assert_close(dec[1, :3], dec1[0], atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("encoder", ["conformer", "bilstm"])
def test_cached_decoder_step_equals_teacher_forcing(encoder):
    torch.manual_seed(0)
    model = build_model(tiny(encoder), input_dim=10, input_layers=1, vocab_size=V).eval()
    feats, lens, _, _ = batch()
    enc, enc_lens = model.encode(feats, lens)
    ys_in = torch.tensor([[V - 1, 3, 4, 5, 6], [V - 1, 7, 2, 8, 8]])
    full = model.decoder_forward(ys_in, torch.tensor([5, 5]), enc, enc_lens)
    state = model.decoder_init(enc, enc_lens, 1)
    for length in range(1, 6):
        logp, state = model.decoder_step(ys_in[:, length - 1], state)
        torch.testing.assert_close(logp, full[:, length - 1], atol=1e-5, rtol=1e-4)
    # a search reorders hypotheses: rows of the cache follow index_select like those of ys_in; here
    # row 0 and 1 continue utterance 1's prefix, row 2 utterance 0's (one utterance, three rows)
    order = torch.tensor([1, 1, 0])
    nxt = torch.cat([ys_in.index_select(0, order), torch.tensor([[9], [3], [4]])], 1)
    ref = model.decoder_forward(nxt, torch.tensor([6, 6, 6]), enc[:1].expand(3, -1, -1), enc_lens[:1].expand(3))
    replay = model.decoder_init(enc[:1], enc_lens[:1], 3)
    for length in range(1, 6):
        _, replay = model.decoder_step(nxt[:, length - 1], replay)
    logp, replay = model.decoder_step(nxt[:, 5], replay)
    torch.testing.assert_close(logp, ref[:, -1], atol=1e-5, rtol=1e-4)
    reordered = state.select(order)
    assert all(k.size(0) == 3 and k.size(2) == 5 for c in reordered.cache for k in c.keys)
    with pytest.raises(ValueError, match="eval mode"):
        model.train().decoder_init(enc, enc_lens, 1)


def test_decoder_is_causal():
    torch.manual_seed(0)
    model = build_model(tiny("conformer"), input_dim=10, input_layers=1, vocab_size=V).eval()
    feats, lens, _, _ = batch()
    enc, enc_lens = model.encode(feats, lens)
    a = torch.tensor([[V - 1, 3, 4, 5, 6]] * 2)
    b = a.clone()
    b[:, 3:] = 9
    la, lb = (model.decoder_forward(y, torch.tensor([5, 5]), enc, enc_lens) for y in (a, b))
    torch.testing.assert_close(la[:, :3], lb[:, :3])
    assert not torch.allclose(la[:, 3:], lb[:, 3:])


def test_interface_attributes_and_ctc_head():
    model = build_model(tiny("conformer"), input_dim=10, input_layers=1, vocab_size=V)
    assert (model.blank, model.sos, model.eos, model.ignore_id, model.vocab_size) == (0, V - 1, V - 1, -1, V)
    assert model.subsampling == 2 and model.min_frames == 7  # conv2d2: (T - 1) // 2 - 2 frames
    feats, lens, _, _ = batch()
    enc, enc_lens = model.eval().encode(feats, lens)
    assert enc_lens.tolist() == [(n - 1) // 2 - 2 for n in lens.tolist()] and enc.shape[1] == int(enc_lens.max())
    logp = model.ctc_log_probs(enc)
    assert logp.shape == (2, enc.shape[1], V) and torch.allclose(logp.exp().sum(-1), torch.ones(2, enc.shape[1]))


def test_subsampling_factors_and_short_input():
    for sub, factor in [("none", 1), ("conv1d2", 2), ("conv1d", 4), ("conv2d2", 2), ("conv2d", 4)]:
        model = build_model(tiny("bilstm", frontend_conf=dict(subsample=sub)), 10, 1, V).eval()
        feats, lens, _, _ = batch(lens=(200, 101))
        enc, enc_lens = model.encode(feats, lens)
        assert model.subsampling == factor
        assert (enc_lens - lens // factor).abs().max() <= 3  # 50 -> 25 frames/s for x2
        short = model.min_frames
        assert int(model.encode(feats[:1, :short], torch.tensor([short]))[1]) == 1
        if short > 1:
            with pytest.raises(ValueError, match=f"skip those under {short} frames"):
                model.encode(feats[:1, : short - 1], torch.tensor([short - 1]))


def test_hybrid_loss_weights_and_branches():
    feats, lens, ys, ys_lens = batch()
    torch.manual_seed(0)
    model = build_model(tiny("conformer"), 10, 1, V).eval()
    out = model(feats, lens, ys, ys_lens)
    torch.testing.assert_close(out["loss"], 0.3 * out["loss_ctc"] + 0.7 * out["loss_att"])
    for w, missing in [(1.0, "decoder"), (0.0, "ctc")]:
        m = build_model(tiny("bilstm", model_conf=dict(ctc_weight=w)), 10, 1, V)
        assert getattr(m, missing) is None  # a branch with no weight is not built (DDP)
        m(feats, lens, ys, ys_lens)["loss"].backward()
        assert all(p.grad is not None for p in m.parameters())
    with pytest.raises(ValueError, match="no attention decoder"):
        build_model(tiny("bilstm", model_conf=dict(ctc_weight=1.0)), 10, 1, V).decoder_init(None, None, 1)


def test_label_smoothing_loss():
    g = torch.Generator().manual_seed(0)
    logits, target = torch.randn(2, 4, V, generator=g), torch.tensor([[3, 4, 5, -1], [6, -1, -1, -1]])
    valid = target != -1
    ce = F.cross_entropy(logits[valid], target[valid], reduction="sum")
    torch.testing.assert_close(LabelSmoothingLoss(V, 0.0)(logits, target), ce / 2)  # per utterance
    torch.testing.assert_close(LabelSmoothingLoss(V, 0.0, normalize_length=True)(logits, target), ce / 4)
    # smoothing: KL to (1 - s) on the target and s / (V - 1) elsewhere; padding is ignored
    s, logp = 0.1, logits[valid].log_softmax(-1)
    q = torch.full_like(logp, s / (V - 1)).scatter(1, target[valid][:, None], 1 - s)
    torch.testing.assert_close(LabelSmoothingLoss(V, s)(logits, target), (q * (q.log() - logp)).sum() / 2)
    logits2 = logits.clone()
    logits2[~valid] = 50.0
    torch.testing.assert_close(LabelSmoothingLoss(V, s)(logits2, target), LabelSmoothingLoss(V, s)(logits, target))


def test_add_sos_eos():
    ys_in, ys_out, lens = add_sos_eos(torch.tensor([[3, 4, 5], [6, -1, -1]]), sos=9, eos=9)
    assert ys_in.tolist() == [[9, 3, 4, 5], [9, 6, 9, 9]]
    assert ys_out.tolist() == [[3, 4, 5, 9], [6, 9, -1, -1]]
    assert lens.tolist() == [4, 2]


def test_specaug_only_in_training_and_within_length():
    conf = tiny("conformer", specaug="specaug", specaug_conf=dict(
        apply_time_warp=True, freq_mask_width_range=[2, 4], num_freq_mask=1,
        time_mask_width_range=[3, 6], num_time_mask=2))
    torch.manual_seed(0)
    model = build_model(conf, 10, 1, V)
    feats, lens, _, _ = batch()
    model.eval()
    assert torch.equal(model.encode(feats, lens)[0], model.encode(feats, lens)[0])
    model.train()
    assert not torch.allclose(model.encode(feats, lens)[0], model.eval().encode(feats, lens)[0])

    aug = SpecAugment(freq_mask_width_range=(2, 4), num_freq_mask=1, time_mask_width_range=(3, 6), num_time_mask=1)
    x = torch.rand(2, 40, 10) + 1.0  # no zeros of its own
    x[1, 29:] = 0.0
    for _ in range(20):
        y = aug(x, lens)
        assert torch.equal(y[1, 29:], x[1, 29:])  # padding stays padding
        for i, n in enumerate(lens.tolist()):  # one band of 2-4 features, one of 3-6 frames
            assert 2 <= (y[i, :n] == 0).all(0).sum() <= 4 and 3 <= (y[i, :n] == 0).all(1).sum() <= 6
    warp = SpecAugment(apply_time_warp=True, apply_freq_mask=False, apply_time_mask=False)
    y = warp(x, lens)
    assert y.shape == x.shape and torch.equal(y[1, 29:], x[1, 29:]) and not torch.equal(y, x)


def test_config_errors_name_the_section():
    with pytest.raises(DataError, match=r"encoder_conf: unknown option\(s\) \['num_blocs'\].*num_blocks"):
        build_model(tiny("conformer", encoder_conf=dict(num_blocs=2)), 10, 1, V)
    with pytest.raises(DataError, match="unknown encoder 'lstm'"):
        build_model(tiny("conformer", encoder="lstm"), 10, 1, V)
    with pytest.raises(DataError, match="frontend_conf: .*subsample"):
        build_model(tiny("conformer", frontend_conf=dict(subsample="conv3d")), 10, 1, V)
    with pytest.raises(DataError, match="specaug_conf: set exactly one"):
        build_model(tiny("conformer", specaug="specaug", specaug_conf={"time_mask_width_range": [0, 2],
                                                                       "time_mask_width_ratio_range": [0, .1]}), 10, 1, V)
    model = build_model(tiny("conformer"), 10, 2, V)
    with pytest.raises(ValueError, match=r"2 layer\(s\) of 10-dim features, got a batch of shape \(2, 40, 10\)"):
        model.encode(*batch()[:2])


@pytest.mark.parametrize("encoder", ["conformer", "bilstm"])
def test_learns_to_transcribe(encoder):
    """Overfits two utterances: attention accuracy reaches 1 and greedy CTC gives the labels."""
    torch.manual_seed(0)
    model = build_model(tiny(encoder, model_conf=dict(lsm_weight=0.0)), 10, 1, V)
    feats, lens, ys, ys_lens = batch()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(80):
        out = model(feats, lens, ys, ys_lens)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
    model.eval()
    out = model(feats, lens, ys, ys_lens)
    assert out["acc"] == 1.0
    enc, enc_lens = model.encode(feats, lens)
    best = model.ctc_log_probs(enc).argmax(-1)
    for i in range(2):
        hyp = torch.unique_consecutive(best[i, : enc_lens[i]])
        assert hyp[hyp != 0].tolist() == ys[i, : ys_lens[i]].tolist()


def test_amp_bfloat16_forward():
    model = build_model(tiny("conformer"), 10, 1, V)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(*batch())
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    out["loss"].backward()


def test_learned_layer_weights_are_reported_and_choose_layers(tmp_path):
    """The weighted sum's softmax weights, by stored layer: what training prints, RESULTS.md shows and
    slice_store --top picks from."""
    import json

    from asrkit.model_io import (format_layer_weights, heaviest_layers, layer_weights, save_config, save_weights,
                                 write_layer_weights)

    model = build_model(tiny("bilstm"), input_dim=10, input_layers=3, vocab_size=V)
    with torch.no_grad():
        model.frontend.layer_weights.copy_(torch.tensor([0.0, 2.0, 1.0]))
    save_weights(model.state_dict(), tmp_path / "model.avg.safetensors")
    (tmp_path / "feats_attrs.json").write_text(json.dumps({"layers": [3, 6, 9]}))
    pairs = layer_weights(tmp_path)
    assert [layer for layer, _ in pairs] == [3, 6, 9] and sum(w for _, w in pairs) == pytest.approx(1.0)
    assert pairs[1][1] > pairs[2][1] > pairs[0][1]
    assert heaviest_layers(tmp_path, 2) == [6, 9]  # in layer order
    table = format_layer_weights(pairs)
    assert "(heaviest)" in table[3] and table[3].startswith("|6|")
    assert write_layer_weights(tmp_path) == table  # what scoring copies into RESULTS.md, without torch
    assert (tmp_path / "layer_weights.md").read_text().splitlines() == table
    save_config(tmp_path, {})
    one = build_model(tiny("bilstm"), input_dim=10, input_layers=1, vocab_size=V)
    save_weights(one.state_dict(), tmp_path / "one.safetensors")
    assert layer_weights(tmp_path, "one.safetensors") == []


def test_a_ctc_head_beside_pretrained_layers_learns_at_its_own_rate():
    """model_conf.ctc_lr_scale: the CTC head's parameters are an optimizer group of their own at
    lr x it (a new head beside a pretrained decoder); every other parameter once, at lr."""
    from asrkit.train.optim import build_optimizer

    conf = {**tiny("bilstm"), "model_conf": {"ctc_weight": 0.3, "ctc_lr_scale": 50.0}}
    model = build_model(conf, input_dim=10, input_layers=1, vocab_size=V)
    groups = build_optimizer("adam", model, {"lr": 0.001}).param_groups
    assert [g["lr"] for g in groups] == [0.001, 0.05]
    assert {id(p) for p in groups[1]["params"]} == {id(p) for p in model.ctc.parameters()}
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))


def test_a_detached_ctc_head_leaves_the_encoder_to_the_attention_loss():
    """model_conf.ctc_detach: the CTC loss trains its head alone; the encoder's gradient is the attention
    loss's (1 - ctc_weight) share, as with ctc_weight 0."""
    torch.manual_seed(0)
    feats, lens = torch.randn(2, 40, 10), torch.tensor([40, 31])
    ys, ys_lens = torch.tensor([[3, 4, 5], [6, 7, -1]]), torch.tensor([3, 2])
    grads = {}
    for name, model_conf in (("detached", {"ctc_weight": 0.3, "ctc_detach": True}), ("attention", {"ctc_weight": 0.0})):
        torch.manual_seed(1)
        model = build_model({**tiny("bilstm"), "model_conf": {**model_conf, "lsm_weight": 0.0}}, 10, 1, V)
        model.eval()  # (no dropout: the two builds compute alike)
        out = model(feats, lens, ys, ys_lens)
        loss = out["loss"] if name == "attention" else out["loss"] / 0.7
        loss.backward()
        grads[name] = {k: p.grad.clone() for k, p in model.named_parameters() if k.startswith("encoder.") and p.grad is not None}
        if name == "detached":
            assert model.ctc.weight.grad.abs().sum() > 0  # the head learns
    assert grads["detached"].keys() == grads["attention"].keys()
    for k, g in grads["attention"].items():
        torch.testing.assert_close(grads["detached"][k], g, atol=1e-6, rtol=1e-5)


def test_a_ctc_head_over_the_training_tokens_scores_as_the_full_head_restricted_to_them(tmp_path):
    """model_conf.ctc_vocab N: the head scores N tokens (<blank>, <unk> and the training text's); its
    loss is that of a full head whose other tokens never win, the log-probabilities it gives the
    decoders are over every id (the others at CTC_FLOOR), and the ids travel with the weights."""
    from asrkit.model_io import save_weights
    from asrkit.nets.model import CTC_FLOOR
    from safetensors.torch import load_file

    torch.manual_seed(0)
    feats, lens = torch.randn(2, 40, 10), torch.tensor([40, 31])
    ys, ys_lens = torch.tensor([[3, 5, 5], [7, 3, -1]]), torch.tensor([3, 2])
    kept = [0, 1, 3, 5, 7]
    conf = {**tiny("bilstm"), "model_conf": {"ctc_weight": 1.0}}
    full = build_model(conf, 10, 1, V).eval()
    part = build_model({**conf, "model_conf": {"ctc_weight": 1.0, "ctc_vocab": len(kept)}}, 10, 1, V).eval()
    with pytest.raises(ValueError, match="scores 5 tokens, not 6"):
        part.set_ctc_tokens([3, 5, 7, 8])
    part.set_ctc_tokens([3, 5, 7])
    part.load_state_dict({**full.state_dict(), "ctc.weight": full.ctc.weight[kept], "ctc.bias": full.ctc.bias[kept],
                          "ctc_token_ids": part.ctc_token_ids})
    with torch.no_grad():
        full.ctc.bias[[i for i in range(V) if i not in kept]] = -1e4  # the full head never picks them
        enc, enc_lens = full.encode(feats, lens)
        torch.testing.assert_close(part(feats, lens, ys, ys_lens)["loss"], full(feats, lens, ys, ys_lens)["loss"])
        logp = part.ctc_log_probs(enc)
    assert logp.shape == (2, enc.size(1), V)
    torch.testing.assert_close(logp[..., kept], full.ctc_log_probs(enc)[..., kept])
    assert bool((logp[..., [2, 4, 6]] == CTC_FLOOR).all())
    save_weights(part.state_dict(), tmp_path / "w.safetensors")
    assert load_file(tmp_path / "w.safetensors")["ctc_token_ids"].tolist() == kept
    with pytest.raises(ValueError, match="ctc_vocab"):
        build_model({**conf, "model_conf": {"ctc_weight": 1.0, "ctc_vocab": "some"}}, 10, 1, V)


def test_ctc_vocab_train_is_resolved_to_the_training_texts_tokens(tmp_path):
    from asrkit.fileio import write_jsonl
    from asrkit.tokenizer import build_token_list
    from asrkit.train.experiment import ctc_tokens, model_config

    write_jsonl(tmp_path / "train.jsonl", [{"utt_id": "a", "text": "ab"}, {"utt_id": "b", "text": "b a"}])
    tok = build_token_list(["ab", "b a", "c d"], "char", tmp_path / "tokens")

    class Store:
        dim, num_layers = 10, 1

    sections = {"model_conf": {"ctc_vocab": "train"}}
    ids = ctc_tokens(sections, str(tmp_path / "train.jsonl"), tok)
    assert ids == {0, 1, tok.token2id["a"], tok.token2id["b"], tok.token2id["<space>"]}
    assert model_config(sections, Store(), tok, ids)["model_conf"]["ctc_vocab"] == len(ids) < tok.vocab_size
    assert ctc_tokens({"model_conf": {"ctc_vocab": "all"}}, str(tmp_path / "train.jsonl"), tok) is None
