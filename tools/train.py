#!/usr/bin/env python
"""Train a model from a YAML (or OpenMMLab .py) config with mmengine's Runner (= `attn-plugins train`).

    python tools/train.py configs/seg/toy/cbam_danet_r50-d8_toy.yaml [--work-dir DIR]
        [--cfg-options KEY=VALUE ...] [--resume [CHECKPOINT]] [--amp] [--launcher pytorch]

Distributed (CPU, gloo): torchrun --nproc_per_node=2 tools/train.py CONFIG --launcher pytorch
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attn_plugins.cli import train_main  # noqa: E402  - the same code as `attn-plugins train`


def main(argv=None) -> int:
    """Exit status 0, or 2 with one line on stderr for a user error (see runner.run_tool)."""
    return train_main(argv, prog='train.py')


if __name__ == '__main__':
    sys.exit(main())
