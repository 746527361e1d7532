"""Stage 3: train a hybrid CTC/attention model on stored features (one process, or DDP under torchrun).

    torchrun --nproc_per_node N -m asrkit.bin.train --config conf/train_conformer.yaml \\
        --train_data data/train.jsonl --train_feats dump/<tag>/train.h5 \\
        --valid_data data/valid.jsonl --valid_feats dump/<tag>/valid.h5 \\
        --token_dir data/token_list/<unit> --exp_dir exp/<tag>

Model sections of the config (encoder, encoder_conf, ...) are overridden like any option; a dict
value is merged into the config's: --encoder_conf '{"num_blocks": 2}' or --encoder_conf.num_blocks 2.
Rerunning the same command resumes from exp_dir/checkpoint.pth.
"""
from __future__ import annotations

import ast
import logging
import random
from pathlib import Path

import numpy as np
import torch
import yaml

from asrkit.cli import make_parser, run_main, setup_logging, str2bool
from asrkit.errors import DataError
from asrkit.fileio import atomic_open

log = logging.getLogger("asrkit.train")


def parse_value(text):
    """A command-line or config value: YAML/JSON ('2', 'true', '{"a": 1}') or a Python literal."""
    if not isinstance(text, str):
        return text
    try:
        return ast.literal_eval(text)  # how configargparse passes a YAML dict: its Python repr
    except (ValueError, SyntaxError):
        return yaml.safe_load(text)


def parse_dict(text) -> dict:
    value = parse_value(text)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"expected a mapping like '{{\"lr\": 0.001}}', got {text!r}")
    return value


def merge(base: dict, override: dict) -> dict:
    """Recursive dict update: keys of `override` win, nested dicts are merged."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def get_parser():
    p = make_parser("Stage 3: train a hybrid CTC/attention model on stored features, in one process or "
                    "in several under torchrun (DDP); rerunning the same command resumes it. Model sections "
                    "come from the --config YAML (frontend, frontend_conf, specaug, specaug_conf, encoder, "
                    "encoder_conf, decoder, decoder_conf, model_conf) and are overridden like options; a dict "
                    "is merged into the config's: --encoder_conf '{\"num_blocks\": 2}' or --encoder_conf.num_blocks 2.")
    p._ignore_unknown_config_file_keys = True  # model sections are read from the YAML by resolve_config
    io = p.add_argument_group("data and output")
    io.add_argument("--train_data", required=True, help="split list of training utterances (jsonl)")
    io.add_argument("--train_feats", required=True, help="feature store of the training split (HDF5)")
    io.add_argument("--valid_data", required=True, help="split list of validation utterances")
    io.add_argument("--valid_feats", required=True, help="feature store of the validation split")
    io.add_argument("--token_dir", required=True, help="token list dir (stage 2)")
    io.add_argument("--exp_dir", required=True, help="experiment dir: config, checkpoints, logs")
    t = p.add_argument_group("training")
    t.add_argument("--max_epoch", type=int, default=30)
    t.add_argument("--max_steps", type=int, default=0, help="stop after this many updates in all (0: no limit)")
    t.add_argument("--batch_bins", type=int, default=20000,
                   help="padded input frames per batch and process (batch size x longest utterance)")
    t.add_argument("--valid_batch_bins", type=int, default=0, help="for validation (0: --batch_bins)")
    t.add_argument("--accum_grad", type=int, default=1, help="micro-batches per update")
    t.add_argument("--grad_clip", type=float, default=5.0, help="max gradient norm (0: no clipping)")
    t.add_argument("--optim", default="adam", help="adam, adamw or sgd")
    t.add_argument("--optim_conf", type=parse_dict, default={}, help="optimizer options, e.g. {lr: 0.002}")
    t.add_argument("--scheduler", default="warmuplr", help="warmuplr, warmup_cosine or constant")
    t.add_argument("--scheduler_conf", type=parse_dict, default={}, help="e.g. {warmup_steps: 25000}")
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--amp", choices=("auto", "bf16", "fp16", "none"), default="auto",
                   help="mixed precision on GPU: auto is bf16 where supported, else fp16 with loss scaling")
    t.add_argument("--num_workers", type=int, default=2, help="DataLoader workers per process")
    t.add_argument("--preflight_batches", type=int, default=2,
                   help="run the largest batches first, so an out-of-memory shows at once (0: off)")
    c = p.add_argument_group("checkpoints and logs")
    c.add_argument("--keep_nbest_models", type=int, default=10, help="best epochs kept, averaged into model.avg.pth")
    c.add_argument("--keep_last_models", type=int, default=1, help="most recent epochs kept as well")
    c.add_argument("--best_model_criterion", choices=("acc", "loss", "cer"), default="acc",
                   help="validation metric that ranks epochs (acc: higher is better; loss, cer: lower)")
    c.add_argument("--patience", type=int, default=0,
                   help="stop when the criterion has not improved for this many epochs (0: never)")
    c.add_argument("--save_interval_steps", type=int, default=500,
                   help="also checkpoint every this many updates, for mid-epoch resume (0: epoch ends only)")
    c.add_argument("--log_interval", type=int, default=100, help="updates between log lines")
    c.add_argument("--tensorboard", type=str2bool, default=True)
    c.add_argument("--resume", type=str2bool, default=True, help="continue from exp_dir/checkpoint.pth")
    d = p.add_argument_group("devices")
    d.add_argument("--ngpu", type=int, default=None,
                   help="0: CPU; >0: GPUs (one per process under torchrun); default: GPUs if any")
    d.add_argument("--dist_backend", choices=("auto", "nccl", "gloo"), default="auto")
    d.add_argument("--ddp_find_unused_parameters", type=str2bool, default=False)
    return p


def resolve_config(parser, argv=None) -> tuple:
    """(args, config): command line over YAML over defaults; every YAML key not a training option
    (the model sections) goes into config too, with dict values merged rather than replaced."""
    from asrkit.nets import MODEL_KEYS

    args, extra = parser.parse_known_args(argv)
    yaml_conf = {}
    if args.config:
        yaml_conf = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        if not isinstance(yaml_conf, dict):
            raise DataError("a config file must be a YAML mapping", args.config)
    known = set(vars(args))
    model = {k: v for k, v in yaml_conf.items() if k not in known}
    while extra:
        arg = extra.pop(0)
        key, eq, value = arg[2:].partition("=")
        if not arg.startswith("--") or (not eq and not extra):
            raise DataError(f"cannot parse {arg!r}", "command line", "give options as --name value")
        value = value if eq else extra.pop(0)
        top, *path = key.split(".")
        if top not in MODEL_KEYS:
            raise DataError(f"unknown option --{key}", "command line",
                            f"see --help; model options are {', '.join(MODEL_KEYS)}")
        override = parse_value(value)
        for part in reversed(path):
            override = {part: override}
        model = merge(model, {top: override})
    for key in ("optim_conf", "scheduler_conf"):  # merge a command-line dict into the config's
        setattr(args, key, merge(parse_dict(yaml_conf.get(key)), getattr(args, key)))
    unknown = [k for k in model if k not in MODEL_KEYS]
    if unknown:
        raise DataError(f"unknown key(s) {unknown}", args.config or "command line",
                        f"training options are in --help; model keys are {', '.join(MODEL_KEYS)}")
    config = {k: v for k, v in vars(args).items() if k not in ("config", "log_file", "verbose")}
    return args, {**config, **model}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def main(argv=None) -> int:
    from asrkit.data import SpeechDataset
    from asrkit.features.store import FeatureReader, check_compatible
    from asrkit.model_io import FEATS_ATTRS, build_from_config, load_feats_attrs, save_exp_files
    from asrkit.tokenizer import Tokenizer
    from asrkit.train.distributed import cleanup, init_distributed
    from asrkit.train.trainer import Trainer

    args, config = resolve_config(get_parser(), argv)
    dist = init_distributed(args.ngpu, args.dist_backend)
    exp_dir = Path(args.exp_dir)
    setup_logging(args.log_file or str(exp_dir / "train.log"), args.verbose, dist.rank)
    if (args.ngpu or 0) > 1 and dist.world_size == 1:
        log.warning("--ngpu %d but a single process: only one GPU is used; launch with "
                    "torchrun --nproc_per_node %d -m asrkit.bin.train ...", args.ngpu, args.ngpu)
    try:
        tokenizer = Tokenizer.load(args.token_dir)
        train_store, valid_store = FeatureReader(args.train_feats), FeatureReader(args.valid_feats)
        check_compatible(valid_store.attrs, train_store.attrs, args.valid_feats)
        if (exp_dir / FEATS_ATTRS).is_file():  # resuming: the features must be those trained on
            check_compatible(train_store.attrs, load_feats_attrs(exp_dir), args.train_feats)
        config.update(input_dim=train_store.dim, input_layers=train_store.num_layers,
                      vocab_size=tokenizer.vocab_size)
        seed_everything(args.seed)  # same initial weights on every rank
        model = build_from_config(config)
        min_frames = getattr(model, "min_frames", 1)
        train_set = SpeechDataset(args.train_data, args.train_feats, tokenizer, min_frames)
        valid_set = SpeechDataset(args.valid_data, args.valid_feats, tokenizer, min_frames)
        if dist.is_main:
            save_exp_files(exp_dir, config, args.token_dir, train_store.attrs)
            for name, ds in (("train", train_set), ("valid", valid_set)):
                if ds.skipped:
                    with atomic_open(exp_dir / f"skipped_{name}.txt") as f:
                        f.writelines(f"{u}\t{r}\n" for u, r in ds.skipped)
            n_params = sum(p.numel() for p in model.parameters())
            log.info("%s: %.2fM parameters; %d training and %d validation utterances; %d processes on %s",
                     config.get("encoder"), n_params / 1e6, len(train_set), len(valid_set), dist.world_size,
                     dist.device.type)
        seed_everything(args.seed + dist.rank)  # but other SpecAugment/dropout draws per rank
        Trainer(args, config, model, train_set, valid_set, tokenizer, dist).run()
    finally:
        cleanup()
    return 0


if __name__ == "__main__":
    run_main(main)
