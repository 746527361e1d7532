"""Training options: `TrainOptions`, typed, from the command line over the config YAML over the
defaults; the model sections of the YAML merged likewise into the model config."""
from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import yaml

from asrkit.errors import DataError
from asrkit.options import option

DICT_OPTIONS = ("optim_conf", "scheduler_conf")  # training options that are mappings, merged like model sections

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


IO, TRAIN, SAVE, DEVICES = "data and output", "training", "checkpoints and logs", "devices"


@dataclass(frozen=True)
class TrainOptions:
    """Every option of a training run (stage 3) but the model sections; config.yaml holds them beside
    the model config. bin/train.py's command line is made from these fields."""
    train_data: str = option(help="split list of training utterances (jsonl)", group=IO)
    train_feats: str = option(help="feature store of the training split (HDF5)", group=IO)
    valid_data: str = option(help="split list of validation utterances", group=IO)
    valid_feats: str = option(help="feature store of the validation split", group=IO)
    token_dir: str = option(help="token list dir (stage 2)", group=IO)
    exp_dir: str = option(help="experiment dir: config, checkpoints, logs", group=IO)
    max_epoch: int = option(30, group=TRAIN)
    max_steps: int = option(0, "stop after this many updates in all (0: no limit)", group=TRAIN)
    batch_bins: int = option(20000, "padded input frames per batch and process (batch size x longest utterance)",
                             group=TRAIN)
    valid_batch_bins: int = option(0, "for validation (0: --batch_bins)", group=TRAIN)
    accum_grad: int = option(1, "micro-batches per update", group=TRAIN)
    grad_clip: float = option(5.0, "max gradient norm (0: no clipping)", group=TRAIN)
    optim: str = option("adam", "adam, adamw or sgd", group=TRAIN)
    optim_conf: dict = option(factory=dict, help="optimizer options, e.g. {lr: 0.002}", type=parse_dict, group=TRAIN)
    scheduler: str = option("warmuplr", "warmuplr, warmup_cosine or constant", group=TRAIN)
    scheduler_conf: dict = option(factory=dict, help="e.g. {warmup_steps: 25000}", type=parse_dict, group=TRAIN)
    seed: int = option(0, group=TRAIN)
    amp: str = option("auto", "mixed precision on GPU: auto is bf16 where supported, else fp16 with loss scaling",
                      choices=("auto", "bf16", "fp16", "none"), group=TRAIN)
    num_workers: int = option(2, "DataLoader workers per process", group=TRAIN)
    ctc_head_epochs: int = option(0, "after training, the CTC head alone trains this many epochs more on the "
                                     "averaged model's encoder output, kept in memory (asrkit/train/ctc_head.py); "
                                     "for a head beside pretrained layers, with model_conf.ctc_detach", group=TRAIN)
    ctc_head_lr: float = option(1e-3, "its learning rate (Adam)", group=TRAIN)
    preflight_batches: int = option(2, "run the largest batches first, so an out-of-memory shows at once (0: off)",
                                    group=TRAIN)
    keep_nbest_models: int = option(10, "best epochs kept, averaged into model.avg.safetensors", group=SAVE)
    keep_last_models: int = option(1, "most recent epochs kept as well", group=SAVE)
    best_model_criterion: str = option("acc", "validation metric that ranks epochs (acc: higher is better; loss, "
                                              "cer: lower)", choices=("acc", "loss", "cer"), group=SAVE)
    patience: int = option(0, "stop when the criterion has not improved for this many epochs (0: never)", group=SAVE)
    save_interval_steps: int = option(500, "also checkpoint every this many updates, for mid-epoch resume (0: epoch "
                                           "ends only)", group=SAVE)
    log_interval: int = option(100, "updates between log lines", group=SAVE)
    tensorboard: bool = option(True, group=SAVE)
    resume: bool = option(True, "continue from exp_dir/checkpoint.pth", group=SAVE)
    ngpu: int | None = option(None, "0: CPU; >0: GPUs (one per process under torchrun); default: GPUs if any",
                              type=int, group=DEVICES)
    dist_backend: str = option("auto", choices=("auto", "nccl", "gloo"), group=DEVICES)
    ddp_find_unused_parameters: bool = option(False, group=DEVICES)


def merge(base: dict, override: dict) -> dict:
    """Recursive dict update: keys of `override` win, nested dicts are merged."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config(parser, argv=None) -> tuple:
    """(args, TrainOptions, model config): command line over YAML over defaults; every YAML key not a
    training option (the model sections) goes into the model config, with dict values merged rather
    than replaced. A dotted option sets one key of a section: --encoder_conf.num_blocks 2,
    --optim_conf.lr 1e-3. `args` keeps the command line's own (log_file, verbose)."""
    from asrkit.nets import MODEL_KEYS  # (here: nets imports torch, and `train --help` needs none of it)

    args, extra = parser.parse_known_args(argv)
    yaml_conf = {}
    if args.config:
        yaml_conf = yaml.safe_load(Path(args.config).read_text(encoding="utf-8")) or {}
        if not isinstance(yaml_conf, dict):
            raise DataError("a config file must be a YAML mapping", args.config)
    known = set(vars(args))
    model = {k: v for k, v in yaml_conf.items() if k not in known}
    dotted: dict = {}  # --optim_conf.lr 1e-3 and the like
    while extra:
        arg = extra.pop(0)
        key, eq, value = arg[2:].partition("=")
        if not arg.startswith("--") or (not eq and not extra):
            raise DataError(f"cannot parse {arg!r}", "command line", "give options as --name value")
        value = value if eq else extra.pop(0)
        top, *path = key.split(".")
        if top not in MODEL_KEYS and not (top in DICT_OPTIONS and path):
            raise DataError(f"unknown option --{key}", "command line",
                            f"see --help; model options are {', '.join(MODEL_KEYS)}")
        override = parse_value(value)
        for part in reversed(path):
            override = {part: override}
        if top in DICT_OPTIONS:
            dotted = merge(dotted, {top: override})
        else:
            model = merge(model, {top: override})
    for key in DICT_OPTIONS:  # merge a command-line dict, then dotted keys, into the config's
        setattr(args, key, merge(merge(parse_dict(yaml_conf.get(key)), getattr(args, key)), dotted.get(key, {})))
    unknown = [k for k in model if k not in MODEL_KEYS]
    if unknown:
        raise DataError(f"unknown key(s) {unknown}", args.config or "command line",
                        f"training options are in --help; model keys are {', '.join(MODEL_KEYS)}")
    from asrkit.options import options_from

    return args, options_from(TrainOptions, args), model
