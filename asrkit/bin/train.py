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

from asrkit.cli import make_parser, run_main
from asrkit.options import add_options
from asrkit.train.config import TrainOptions, resolve_config


def get_parser():
    p = make_parser("Stage 3: train a hybrid CTC/attention model on stored features, in one process or "
                    "in several under torchrun (DDP); rerunning the same command resumes it. Model sections "
                    "come from the --config YAML (frontend, frontend_conf, specaug, specaug_conf, encoder, "
                    "encoder_conf, decoder, decoder_conf, model_conf) and are overridden like options; a dict "
                    "is merged into the config's: --encoder_conf '{\"num_blocks\": 2}' or --encoder_conf.num_blocks 2.")
    p._ignore_unknown_config_file_keys = True  # model sections are read from the YAML by resolve_config
    add_options(p, TrainOptions)
    return p


def main(argv=None) -> int:
    from asrkit.train.experiment import train

    args, opts, model = resolve_config(get_parser(), argv)
    train(opts, model, log_file=args.log_file, verbose=args.verbose)
    return 0


if __name__ == "__main__":
    run_main(main)
