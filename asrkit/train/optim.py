"""Optimizers and learning-rate schedules by name, with their options from the config (ESPnet style)."""
from __future__ import annotations

import math

import torch

OPTIMIZERS = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW, "sgd": torch.optim.SGD}


def build_optimizer(name: str, model: torch.nn.Module, conf: dict) -> torch.optim.Optimizer:
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optim {name!r}; choose one of {sorted(OPTIMIZERS)}")
    return OPTIMIZERS[name](param_groups(model, conf.get("lr", 1e-3)), **conf)


def param_groups(model: torch.nn.Module, lr: float) -> list[dict]:
    """The trainable parameters: those of a submodule with an `lr_scale` (the pretrained top layers,
    model.ssl_top, and each of its layers under ssl_top.lr_decay; a CTC head over a pretrained decoder's
    tokens, model_conf.ctc_lr_scale) at lr x it, the innermost such module's, the rest at lr. (The schedule
    scales every group alike: they warm up together.)"""
    scale_of = {}  # id(param) -> scale; modules() lists a parent before its children: the innermost wins
    for module in model.modules():
        scale = getattr(module, "lr_scale", None)
        if module is not model and scale is not None:
            scale_of.update({id(p): scale for p in module.parameters()})
    rest = [p for p in model.parameters() if id(p) not in scale_of]  # (frozen ones too: the optimizer skips them)
    groups: dict[float, list] = {}
    for p in model.parameters():
        if id(p) in scale_of and p.requires_grad:
            groups.setdefault(scale_of[id(p)], []).append(p)
    return [{"params": rest}] + [{"params": params, "lr": lr * scale} for scale, params in groups.items()]


def warmuplr(warmup_steps: int = 25000):
    """ESPnet's WarmupLR (Noam without the model-size factor): reaches the base lr at warmup_steps,
    then decays as 1/sqrt(step)."""
    def factor(step: int) -> float:
        step += 1
        return warmup_steps ** 0.5 * min(step ** -0.5, step * warmup_steps ** -1.5)
    return factor


def warmup_cosine(warmup_steps: int = 1000, total_steps: int = 1, min_ratio: float = 0.0):
    """Linear warmup to the base lr, then a cosine down to min_ratio x base at total_steps."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        t = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * t))
    return factor


def constant(warmup_steps: int = 0):
    """The base lr, after an optional linear warmup."""
    return lambda step: min(1.0, (step + 1) / warmup_steps) if warmup_steps else 1.0


SCHEDULERS = {"warmuplr": warmuplr, "warmup_cosine": warmup_cosine, "constant": constant}


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, conf: dict, total_steps: int):
    """A per-optimizer-step LambdaLR; `total_steps` is filled in for schedules that need it."""
    if name not in SCHEDULERS:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}")
    conf = dict(conf)
    if name == "warmup_cosine":
        conf.setdefault("total_steps", total_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, SCHEDULERS[name](**conf))
