#!/usr/bin/env python
"""Draw what each attention block of a config's model looks at, one PNG per block (= `attn-plugins viz`).

    python tools/visualize.py configs/seg/toy/cbam_danet_r50-d8_toy.yaml [--checkpoint CKPT]
        [--image PATH | --sample N] [--out DIR] [--queries X,Y ...] [--cfg-options KEY=VALUE ...]
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attn_plugins.cli import viz_main  # noqa: E402  - the same code as `attn-plugins viz`


def main(argv=None) -> int:
    """Exit status 0, or 2 with one line on stderr for a user error (see runner.run_tool)."""
    return viz_main(argv, prog='visualize.py')


if __name__ == '__main__':
    sys.exit(main())
