"""Training options: the command line over the config YAML over the defaults, model sections merged."""
from __future__ import annotations

import ast
from pathlib import Path

import yaml

from asrkit.errors import DataError

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


def merge(base: dict, override: dict) -> dict:
    """Recursive dict update: keys of `override` win, nested dicts are merged."""
    out = dict(base)
    for k, v in override.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def resolve_config(parser, argv=None) -> tuple:
    """(args, config): command line over YAML over defaults; every YAML key not a training option
    (the model sections) goes into config too, with dict values merged rather than replaced. A dotted
    option sets one key of a section: --encoder_conf.num_blocks 2, --optim_conf.lr 1e-3."""
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
    config = {k: v for k, v in vars(args).items() if k not in ("config", "log_file", "verbose")}
    return args, {**config, **model}
