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

from asrkit.cli import make_parser, run_main, str2bool
from asrkit.train.config import parse_dict, resolve_config


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
    c.add_argument("--keep_nbest_models", type=int, default=10, help="best epochs kept, averaged into model.avg.safetensors")
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


def main(argv=None) -> int:
    from asrkit.train.experiment import train

    train(*resolve_config(get_parser(), argv))
    return 0


if __name__ == "__main__":
    run_main(main)
