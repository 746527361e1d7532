"""Stage 3 as a whole: the model, data and experiment dir a training run needs, then the Trainer."""
from __future__ import annotations

import logging
import random
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from asrkit.cli import setup_logging
from asrkit.data import SpeechDataset
from asrkit.distributed import cleanup, init_distributed
from asrkit.features.store import FeatureReader, check_compatible
from asrkit.fileio import load_jsonl, resolve_audio_path, write_skipped
from asrkit.model_io import FEATS_ATTRS, build_from_config, load_feats_attrs, save_exp_files
from asrkit.segment import SHAPE, measure_utterances
from asrkit.tokenizer import Tokenizer
from asrkit.train.config import TrainOptions
from asrkit.train.trainer import Trainer

log = logging.getLogger("asrkit.train")


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def record_utterance_shape(exp_dir: Path, train_data: str, store: FeatureReader) -> None:
    """The training utterances' durations and edge silences into exp_dir/utterances.json, which
    transcribe cuts long recordings' segments like (asrkit/segment.py); kept when resuming."""
    if (exp_dir / SHAPE).is_file():
        return
    frame_rate = float(store.attrs.get("frame_rate", 50.0))
    records = [dict(r, audio=resolve_audio_path(r["audio"], train_data),
                    duration=r.get("duration") or store.num_frames(r["utt_id"]) / frame_rate)
               for r in load_jsonl(train_data) if r.get("utt_id") in store and r.get("audio")]
    shape = measure_utterances(records)
    if shape is None:
        log.warning("could not measure the training utterances' edges (no readable audio with speech): long "
                    "recordings will be cut with the default segment options")
        return
    shape.write(exp_dir)
    log.info("training utterances: %.2f-%.2f s (the shortest to the 99th percentile), %.2f s of silence before the speech and "
             "%.2f s after (medians of %d): long recordings are cut alike", shape.shortest, shape.longest,
             shape.lead, shape.trail, shape.measured)


def model_config(model: dict, train_store: FeatureReader, tokenizer: Tokenizer,
                 ctc_ids: set[int] | None = None) -> dict:
    """The model sections completed from the data: the input and vocabulary sizes, and for
    model_conf.ctc_vocab train the number of CTC tokens `ctc_ids` (ctc_tokens). (The checkpoint of a
    Whisper decoder or of the encoder's top layers is the features' own: model_io.build_from_config.)"""
    config = {**model, "input_dim": train_store.dim, "input_layers": train_store.num_layers,
              "vocab_size": tokenizer.vocab_size}
    if ctc_ids is not None:
        config["model_conf"] = {**model["model_conf"], "ctc_vocab": len(ctc_ids)}
    return config


def ctc_tokens(model: dict, train_data: str, tokenizer: Tokenizer) -> set[int] | None:
    """For model_conf.ctc_vocab train, the token ids of the training text with <blank> and <unk>: what
    the CTC head scores; otherwise None."""
    if (model.get("model_conf") or {}).get("ctc_vocab") != "train":
        return None
    return {0, 1} | {i for rec in load_jsonl(train_data) for i in tokenizer.encode(str(rec.get("text") or ""))}


def train(opts: TrainOptions, model_sections: dict, log_file: str | None = None, verbose: bool = False) -> None:
    """Train (or resume) the experiment in opts.exp_dir, in this process or as one rank under torchrun.
    config.yaml holds the options and the model config."""
    dist = init_distributed(opts.ngpu, opts.dist_backend)
    exp_dir = Path(opts.exp_dir)
    setup_logging(log_file or str(exp_dir / "train.log"), verbose, dist.rank)
    if (opts.ngpu or 0) > 1 and dist.world_size == 1:
        log.warning("--ngpu %d but a single process: only one GPU is used; launch with "
                    "torchrun --nproc_per_node %d -m asrkit.bin.train ...", opts.ngpu, opts.ngpu)
    try:
        tokenizer = Tokenizer.load(opts.token_dir)
        train_store, valid_store = FeatureReader(opts.train_feats), FeatureReader(opts.valid_feats)
        check_compatible(valid_store.attrs, train_store.attrs, opts.valid_feats)
        if (exp_dir / FEATS_ATTRS).is_file():  # resuming: the features must be those trained on
            check_compatible(train_store.attrs, load_feats_attrs(exp_dir), opts.train_feats)
        ctc_ids = ctc_tokens(model_sections, opts.train_data, tokenizer)
        config = model_config(model_sections, train_store, tokenizer, ctc_ids)
        seed_everything(opts.seed)  # same initial weights on every rank
        model = build_from_config(config, train_store.attrs)
        if ctc_ids is not None:
            model.set_ctc_tokens(ctc_ids)
        min_frames = getattr(model, "min_frames", 1)
        train_set = SpeechDataset(opts.train_data, opts.train_feats, tokenizer, min_frames)
        valid_set = SpeechDataset(opts.valid_data, opts.valid_feats, tokenizer, min_frames)
        if dist.is_main:
            save_exp_files(exp_dir, {**asdict(opts), **config}, opts.token_dir, train_store.attrs)
            record_utterance_shape(exp_dir, opts.train_data, train_store)
            for name, ds in (("train", train_set), ("valid", valid_set)):
                if ds.skipped:
                    write_skipped(exp_dir / f"skipped_{name}.txt", ds.skipped)
            n_params = sum(p.numel() for p in model.parameters())
            trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
            log.info("%s: %.2fM parameters (%.2fM trained); %d training and %d validation utterances; %d processes "
                     "on %s", config.get("encoder"), n_params / 1e6, trained / 1e6, len(train_set), len(valid_set),
                     dist.world_size, dist.device.type)
        seed_everything(opts.seed + dist.rank)  # but other SpecAugment/dropout draws per rank
        Trainer(opts, model, train_set, valid_set, tokenizer, dist).run()
    finally:
        cleanup()
