"""Transcribing new audio runs the model's own feature extractor: the same text as decoding stage 1's store."""
from __future__ import annotations

import json

import pytest
import torch

from asrkit.bin import decode, transcribe
from asrkit.decode import DecodeOptions
from asrkit.fileio import load_jsonl, write_jsonl
from asrkit.timing import attention_word_timings, clip_to_speech, ctc_word_timings, dtw, onsets
from conftest import load_trained_only, same_tensors, write_tone


ENCODERS = {
    "conformer": {},
    "bilstm": {"encoder": "bilstm", "encoder_conf": {"hidden_size": 8, "num_layers": 1, "output_size": 16}},
}


def make_exp(tmp_path, tiny_corpus, tiny_wavlm, feats_type: str, encoder: str):
    """A tiny random model (so to speak, trained) on one of stage 1's feature types, with its store."""
    from asrkit.features.dump import dump
    from asrkit.features.extractors import ExtractorSpec
    from asrkit.features.store import FeatureReader
    from asrkit.model_io import build_from_config, save_exp_files, save_weights
    from asrkit.tokenizer import Tokenizer, build_token_list
    from train_fixtures import TINY_MODEL

    data = tmp_path / "test.jsonl"
    write_jsonl(data, [dict(r, audio=str(tiny_corpus.parent / r["audio"])) for r in load_jsonl(tiny_corpus)[:3]])
    store = tmp_path / "test.h5"
    if feats_type == "fbank":
        dump(str(data), str(store), ExtractorSpec("fbank", n_mels=20), nj=0, progress=False)
    else:  # stacked layers 1-2 of a tiny WavLM
        dump(str(data), str(store), ExtractorSpec("wavlm", str(tiny_wavlm), "1,2", dtype="float32"), nj=0,
             progress=False)
    tok_dir = tmp_path / "tokens"
    build_token_list(["one two three four five six seven eight nine zero"], "char", tok_dir)
    tok = Tokenizer.load(tok_dir)
    attrs = FeatureReader(store).attrs
    config = {**TINY_MODEL, **ENCODERS[encoder], "input_dim": int(attrs["dim"]),
              "input_layers": int(attrs["num_layers"]), "vocab_size": tok.vocab_size}
    exp = tmp_path / "exp"
    save_exp_files(exp, config, tok_dir, attrs)
    torch.manual_seed(0)
    save_weights(build_from_config(config, attrs).state_dict(), exp / "model.avg.safetensors")
    return exp, data, store


@pytest.fixture
def wavlm_exp(tmp_path, tiny_corpus, tiny_wavlm):
    return make_exp(tmp_path, tiny_corpus, tiny_wavlm, "wavlm", "conformer")


@pytest.mark.parametrize("feats_type,encoder", [("fbank", "conformer"), ("fbank", "bilstm"),
                                                ("wavlm", "conformer"), ("wavlm", "bilstm")])
def test_transcribe_matches_decoding_the_store_and_handles_new_and_bad_files(feats_type, encoder, tmp_path,
                                                                             tiny_corpus, tiny_wavlm, capsys):
    exp, data, store = make_exp(tmp_path, tiny_corpus, tiny_wavlm, feats_type, encoder)
    decode.main([f"--model_dir={exp}", f"--data={data}", f"--feats={store}", f"--out={tmp_path / 'dec'}", "--beam=3"])
    hyps = {r["utt_id"]: r for r in load_jsonl(tmp_path / "dec" / "hyp.jsonl")}
    capsys.readouterr()
    records = load_jsonl(data)
    # files never in any split, at other rates and channel counts than training's 16 kHz mono
    new = [write_tone(tmp_path / "never_seen.wav", seconds=1.3, freq=333.0, seed=99),
           write_tone(tmp_path / "phone_8k.wav", seconds=2.8, sr=8000, freq=260.0, seed=7),
           write_tone(tmp_path / "stereo_44k.flac", seconds=0.9, sr=44100, channels=2, freq=190.0, seed=8)]
    seconds = [1.3, 2.8, 0.9]
    args = ["--config=conf/decode.yaml", f"--model_dir={exp}", "--beam=3", "--batch_size=2",
            *(r["audio"] for r in records), *map(str, new), str(tmp_path / "missing.wav")]
    assert transcribe.main(args) == 1
    plain = capsys.readouterr().out.splitlines()
    code = transcribe.main([*args, "--json"])
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 1 and len(out) == len(records) + len(new) + 1 and len(plain) == len(records) + len(new)
    for r, o, line in zip(records, out, plain):
        assert o["text"] == hyps[r["utt_id"]]["text"] and line == f"{r['audio']}\t{o['text']}"
        assert o["score"] == pytest.approx(hyps[r["utt_id"]]["score"], abs=1e-3)
    for path, dur, fresh in zip(new, seconds, out[len(records):]):
        assert fresh["file"] == str(path) and "error" not in fresh, fresh
        ends = [w["end"] for w in fresh["words"]]
        assert [w["word"] for w in fresh["words"]] == fresh["text"].split()
        assert all(0 <= w["start"] < w["end"] <= dur + 1e-6 for w in fresh["words"]) and ends == sorted(ends)
    assert "missing.wav" in out[-1]["error"]


def test_transcribe_says_too_short_by_the_audio_length(tmp_path, tiny_corpus, tiny_wavlm):
    from asrkit.transcribe import Transcriber

    exp = make_exp(tmp_path, tiny_corpus, tiny_wavlm, "fbank", "conformer")[0]
    short = write_tone(tmp_path / "blip.wav", seconds=0.03)
    [rec] = Transcriber(exp, search=DecodeOptions(beam=2)).transcribe([short])
    assert rec["error"].startswith(f"{short}: too short (0.03 s)"), rec


def test_transcribe_refuses_a_different_extractor(wavlm_exp, tmp_path):
    from asrkit.errors import DataError

    exp = wavlm_exp[0]
    attrs = json.loads((exp / "feats_attrs.json").read_text())
    (exp / "feats_attrs.json").write_text(json.dumps({**attrs, "layers": [2]}))
    with pytest.raises(DataError, match="layers"):
        transcribe.main([f"--model_dir={exp}", str(tmp_path / "x.wav")])


def test_word_timings_from_forced_alignment():
    # frames: a a _ b _ <space> _ c c _ ; 40 ms per frame
    tokens = ["<blank>", "a", "b", "<space>", "c"]
    path = [1, 1, 0, 2, 0, 3, 0, 4, 4, 0]
    logp = torch.full((10, 5), -8.0)
    logp[torch.arange(10), torch.tensor(path)] = -0.01
    ids = [1, 2, 3, 4]
    words = ctc_word_timings(logp.log_softmax(-1), ids, [tokens[i] for i in ids], "char", 0.04)
    assert [w["word"] for w in words] == ["ab", "c"]
    assert [(w["start"], w["end"]) for w in words] == [(0.0, 0.16), (0.28, 0.36)]


def test_word_timings_of_whisper_tokens():
    """Byte-level BPE (token_type whisper): a piece starting with Ġ starts a word, pieces spell bytes."""
    # frames: "ĠThe" _ "Ġcaf" "Ã©" _ ; 20 ms per frame
    tokens = ["<blank>", "\u0120The", "\u0120caf", "\u00c3\u00a9"]
    path = [1, 0, 2, 3, 0]
    logp = torch.full((5, 4), -8.0)
    logp[torch.arange(5), torch.tensor(path)] = -0.01
    ids = [1, 2, 3]
    words = ctc_word_timings(logp.log_softmax(-1), ids, [tokens[i] for i in ids], "whisper", 0.02)
    assert [(w["word"], w["start"], w["end"]) for w in words] == [("The", 0.0, 0.02), ("café", 0.04, 0.08)]
    # more tokens than the frames can hold (a repeat needs a blank between): not aligned, no error
    assert ctc_word_timings(logp.log_softmax(-1), [1, 1, 2], [tokens[i] for i in [1, 1, 2]], "whisper", 0.02) is not None
    assert ctc_word_timings(logp.log_softmax(-1), [1, 1, 2, 2], [tokens[i] for i in [1, 1, 2, 2]], "whisper", 0.02) is None


def test_dtw_finds_the_cheapest_monotonic_path():
    """The row-at-once recurrence against the plain cell-by-cell one, on random costs."""
    import numpy as np

    rng = np.random.default_rng(0)
    for n, t in [(1, 5), (4, 4), (5, 30), (9, 40)]:
        cost = rng.normal(size=(n, t))
        rows, frames = dtw(cost)
        steps = set(zip(np.diff(rows), np.diff(frames)))
        assert (rows[0], frames[0], rows[-1], frames[-1]) == (0, 0, n - 1, t - 1) and steps <= {(0, 1), (1, 0), (1, 1)}
        best = np.full((n, t), np.inf)
        for i in range(n):
            for j in range(t):
                before = [best[a, b] for a, b in ((i - 1, j - 1), (i - 1, j), (i, j - 1)) if a >= 0 and b >= 0]
                best[i, j] = cost[i, j] + (min(before) if before else 0.0)
        assert cost[rows, frames].sum() == pytest.approx(best[-1, -1])


def test_each_token_starts_at_the_onset_its_row_looks_at():
    """Rows that look most at frames 5, 20, 35, 50 (broadly): the path changes rows midway, the onsets
    are the peaks."""
    import numpy as np

    frames = np.arange(60)
    weights = np.stack([np.exp(-((frames - p) / 6.0) ** 2) for p in (5, 20, 35, 50)])
    assert onsets(weights).tolist() == [5, 20, 35, 50]


def test_word_timings_from_a_decoders_cross_attention():
    """Whisper pieces (Ġ starts a word; a bare Ġ is the space before one) timed by where the alignment
    heads look: a word runs from its first token's onset to the next word's; the confidence is the
    decoder's probability of the tokens."""
    from types import SimpleNamespace

    tokens = ["\u0120The", "\u0120", "caf", "\u00c3\u00a9", "\u0120ok"]  # The | café | ok, then <eos>
    att = torch.full((6, 100), 0.01)
    for row, onset in enumerate([10, 30, 40, 50, 70, 90]):  # each row looks at 6 frames from its onset
        att[row, onset: onset + 6] = 1.0
    att = (att / att.sum(-1, keepdim=True))[None, None, None].expand(2, 1, 2, -1, -1)  # (B, layers, heads, rows, T)
    logits = torch.zeros(2, 6, 10)
    logits[0, torch.arange(5), torch.arange(2, 7)] = 5.0  # token i+2 at row i
    decoder = SimpleNamespace(alignment_heads=((0, 0), (0, 1)), cross_attention=lambda *a: (logits, att))
    model = SimpleNamespace(sos=9, eos=9, decoder=decoder)
    words, none = attention_word_timings(model, [torch.zeros(100, 4), torch.zeros(50, 4)], [[2, 3, 4, 5, 6], []],
                                         [tokens, []], "whisper", 0.02)
    assert none == []
    p = float(logits[0, 0].softmax(-1)[2])
    assert [(w["word"], w["start"], w["end"]) for w in words] == [("The", 0.2, 0.6), ("café", 0.8, 1.4), ("ok", 1.4, 1.8)]
    assert words[0]["confidence"] == pytest.approx(p, abs=1e-4)


def test_cross_attention_is_the_decoders_own():
    """The probabilities kept are those the decoder used: rows sum to 1 over an utterance's frames, none
    past its end, and keeping them changes nothing of the output."""
    from asrkit.nets.decoder import TransformerDecoder

    torch.manual_seed(0)
    dec = TransformerDecoder(12, 16, attention_heads=2, linear_units=32, num_blocks=3).eval()
    memory, memory_lens = torch.randn(2, 9, 16), torch.tensor([9, 6])
    ys, ys_lens = torch.randint(1, 11, (2, 4)), torch.tensor([4, 3])
    logits, att = dec.cross_attention(ys, ys_lens, memory, memory_lens)
    assert att.shape == (2, 3, 2, 4, 9) and dec.alignment_heads == ((1, 0), (1, 1), (2, 0), (2, 1))
    assert torch.allclose(logits, dec(ys, ys_lens, memory, memory_lens))
    assert torch.allclose(att.sum(-1), torch.ones(2, 3, 2, 4)) and float(att[1, ..., 6:].abs().max()) == 0.0


def test_word_edges_on_silence_move_to_the_speech():
    probs = [0.1] * 10 + [0.9] * 10 + [0.1] * 5 + [0.9] * 5  # 32 ms chunks: speech 0.32-0.64 s, 0.8-0.96 s
    words = [{"word": "a", "start": 0.1, "end": 0.7}, {"word": "b", "start": 0.7, "end": 0.9},
             {"word": "c", "start": 0.65, "end": 0.75}]
    out = clip_to_speech(words, probs, 0.032)
    assert [(w["start"], w["end"]) for w in out] == [(0.32, 0.64), (0.8, 0.9), (0.65, 0.75)]
    assert clip_to_speech(words, None, 0.032) == words


def test_subtitle_cues_break_at_pauses_and_line_length():
    from asrkit.subtitles import cues, render

    words = [{"word": w, "start": a, "end": b} for w, a, b in
             [("the", 0.0, 0.2), ("magnet", 0.3, 0.8), ("sticks", 0.9, 1.4),  # a pause of 2.1 s follows
              ("to", 3.5, 3.6), ("the", 3.7, 3.8), ("fridge", 3.9, 4.4)]]
    assert cues(words) == [(0.0, 1.4, "the magnet sticks"), (3.5, 4.4, "to the fridge")]
    assert [c[2] for c in cues(words, max_chars=10)] == ["the magnet", "sticks", "to the", "fridge"]
    rec = {"file": "x.wav", "text": "the magnet sticks to the fridge", "words": words}
    assert render(rec, "srt") == ("1\n00:00:00,000 --> 00:00:01,400\nthe magnet sticks\n\n"
                                  "2\n00:00:03,500 --> 00:00:04,400\nto the fridge\n")
    assert render(rec, "vtt").startswith("WEBVTT\n\n00:00:00.000 --> 00:00:01.400\nthe magnet sticks\n\n")
    assert render({**rec, "words": [{"word": "x", "start": 3725.5, "end": 3726.0}]}, "srt").split("\n")[1] == \
        "01:02:05,500 --> 01:02:06,000"


def test_transcribe_writes_a_file_per_input(tmp_path, tiny_corpus, tiny_wavlm, capsys):
    exp = make_exp(tmp_path, tiny_corpus, tiny_wavlm, "fbank", "conformer")[0]
    wavs = [write_tone(tmp_path / "in" / f"child{i}.wav", seconds=1.0 + i, freq=200.0 + 50 * i, seed=i)
            for i in range(2)]
    out = tmp_path / "subs"
    assert transcribe.main([f"--model_dir={exp}", "--beam=2", *map(str, wavs), f"--output_dir={out}",
                            "--output_format=txt,srt,vtt,json"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert sorted(p.name for p in out.iterdir()) == sorted(f"child{i}.{f}" for i in range(2)
                                                           for f in ("txt", "srt", "vtt", "json"))
    for wav, line in zip(wavs, lines):
        rec = json.loads((out / f"{wav.stem}.json").read_text())
        assert line == f"{wav}\t{rec['text']}" and (out / f"{wav.stem}.txt").read_text() == rec["text"] + "\n"
        srt = (out / f"{wav.stem}.srt").read_text()
        assert " ".join(b.split("\n", 2)[2].strip() for b in srt.strip().split("\n\n") if b) == rec["text"]
    with pytest.raises(SystemExit):
        transcribe.main([f"--model_dir={exp}", str(wavs[0]), f"--output_dir={out}", "--output_format=docx"])
    with pytest.raises(SystemExit):  # two inputs named alike would overwrite each other's files
        transcribe.main([f"--model_dir={exp}", str(wavs[0]), str(write_tone(tmp_path / "b" / "child0.wav")),
                         f"--output_dir={out}"])
    assert "child0" in capsys.readouterr().err


@pytest.mark.parametrize("ctc_weight", [0.0, 0.3])
def test_a_whisper_decoder_model_transcribes_like_stage_4(ctc_weight, tmp_path, tiny_corpus, tiny_whisper, capsys,
                                                          monkeypatch):
    """egs/child's model for a Whisper front end (decoder whisper). Without a CTC head the default joint
    search is its attention search, in stage 4 and in transcribe alike; with a CTC head on Whisper's
    tokens, joint decoding. Either way a timing for each word, from the decoder's cross-attention.
    Loading the model dir reads none of the checkpoint's weights, and gives the model that was saved."""
    from asrkit.features.dump import dump
    from asrkit.features.extractors import ExtractorSpec
    from asrkit.features.store import FeatureReader
    from asrkit.model_io import build_from_config, save_exp_files, save_weights
    from asrkit.tokenizer import build_token_list

    data = tmp_path / "test.jsonl"
    write_jsonl(data, [dict(r, audio=str(tiny_corpus.parent / r["audio"])) for r in load_jsonl(tiny_corpus)[:2]])
    store = tmp_path / "test.h5"
    dump(str(data), str(store), ExtractorSpec("wavlm", str(tiny_whisper), "last", dtype="float32"), nj=0,
         progress=False)
    tok = build_token_list(["one two three"], "whisper", tmp_path / "tokens", ssl_model=str(tiny_whisper))
    attrs = FeatureReader(store).attrs
    config = {"frontend_conf": {"layer_norm": False}, "encoder": "identity", "decoder": "whisper",
              "model_conf": {"ctc_weight": ctc_weight},
              "input_dim": int(attrs["dim"]), "input_layers": 1, "vocab_size": tok.vocab_size}
    exp = tmp_path / "exp"
    save_exp_files(exp, config, tmp_path / "tokens", attrs)
    torch.manual_seed(0)
    saved = build_from_config(config, attrs)
    save_weights(saved.state_dict(), exp / "model.avg.safetensors")
    assert same_tensors(load_trained_only(exp, monkeypatch), saved)
    decode.main([f"--model_dir={exp}", f"--data={data}", f"--feats={store}", f"--out={tmp_path / 'dec'}",
                 "--beam=2", "--maxlenratio=-6"])
    info = json.loads((tmp_path / "dec" / "decode_info.json").read_text())
    assert (info["mode"], info["ctc_weight"]) == ("joint", 0.3 if ctc_weight else 0.0)
    hyps = {r["utt_id"]: r["text"] for r in load_jsonl(tmp_path / "dec" / "hyp.jsonl")}
    capsys.readouterr()
    records = load_jsonl(data)
    assert transcribe.main([f"--model_dir={exp}", "--beam=2", "--maxlenratio=-6", "--json",
                            *(r["audio"] for r in records)]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [o["text"] for o in out] == [hyps[r["utt_id"]] for r in records] and any(o["text"] for o in out)
    from asrkit.audio import audio_info

    for r, o in zip(records, out):  # with or without a CTC head, each word its own span from the decoder's
        sr, frames, _ = audio_info(r["audio"])  # cross-attention: in order, within the file, spelling the text
        words = o["words"]
        assert "".join(w["word"] for w in words) == o["text"].replace(" ", "")
        assert all(0 <= a["start"] <= a["end"] <= b["start"] <= frames / sr + 0.05 for a, b in zip(words, words[1:]))
        assert all(w["confidence"] is not None for w in words)
