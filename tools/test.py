#!/usr/bin/env python
"""Evaluate a checkpoint with the config's test dataloader and evaluator (mmengine Runner).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options KEY=VALUE ...]
        [--out metrics.json] [--allow-partial-checkpoint] [--launcher pytorch]

CHECKPOINT may also be an mmseg DAHead/NLHead checkpoint: its keys are converted on load. A
checkpoint that does not fit the config's model (keys missing, unexpected or of another shape) is
an error unless --allow-partial-checkpoint. User errors exit with status 2 and one line on stderr.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
warnings.filterwarnings('ignore', message='pkg_resources is deprecated')   # mmengine's import, not ours

from attn_plugins.runner import build_runner, run_tool  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--work-dir')
    parser.add_argument('--out', help='write the metrics as JSON here')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE')
    parser.add_argument('--trust-config', action='store_true',
                        help='lift the safe YAML limits (.py or absolute _base_, any custom_imports and '
                             'registry names): only for a config you trust to run code')
    parser.add_argument('--allow-partial-checkpoint', action='store_true',
                        help='evaluate even if the checkpoint lacks some of the model\'s weights or has others '
                             '(by default that is an error: the metrics would be of a partly random model)')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    return run_tool('test.py', evaluate, parser.parse_args(argv))


def evaluate(args) -> int:
    runner = build_runner(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options,
                          launcher=args.launcher, load_from=args.checkpoint,
                          trust_config=args.trust_config, allow_partial_checkpoint=args.allow_partial_checkpoint)
    metrics = {k: float(v) for k, v in runner.test().items()}
    print(json.dumps(metrics, indent=2))
    if args.out:
        with open(args.out, 'w') as f:
            json.dump(metrics, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
