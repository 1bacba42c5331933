#!/usr/bin/env python
"""Train a model from a YAML (or OpenMMLab .py) config with mmengine's Runner.

    python tools/train.py configs/seg/toy/cbam_danet_r50-d8_toy.yaml [--work-dir DIR]
        [--cfg-options KEY=VALUE ...] [--resume [CHECKPOINT]] [--amp] [--launcher pytorch]

Distributed (CPU, gloo): torchrun --nproc_per_node=2 tools/train.py CONFIG --launcher pytorch
"""
from __future__ import annotations

import argparse
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')   # mmengine's import, not ours

from attn_plugins.runner import build_runner, run_tool  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from CHECKPOINT, or from the latest in the work dir when given alone '
                             '(an error if there is none)')
    parser.add_argument('--amp', action='store_true', help="mixed precision, bf16 (mmengine's AmpOptimWrapper: GPU only)")
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config keys, e.g. train_cfg.max_iters=100')
    parser.add_argument('--trust-config', action='store_true',
                        help='lift the safe YAML limits (.py or absolute _base_, any custom_imports and '
                             'registry names): only for a config you trust to run code')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args(argv)
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def train(args) -> int:
    runner = build_runner(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options,
                          launcher=args.launcher, resume=args.resume, amp=args.amp,
                          trust_config=args.trust_config)
    runner.train()
    return 0


def main(argv=None) -> int:
    """Exit status 0, or 2 with one line on stderr for a user error (see runner.run_tool)."""
    return run_tool('train.py', train, parse_args(argv))


if __name__ == '__main__':
    sys.exit(main())
