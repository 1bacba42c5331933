#!/usr/bin/env python
"""Evaluate a checkpoint with the config's test dataloader and evaluator (= `attn-plugins test`).

    python tools/test.py CONFIG CHECKPOINT [--work-dir DIR] [--cfg-options KEY=VALUE ...]
        [--out metrics.json] [--allow-partial-checkpoint] [--launcher pytorch]

With a segmentation config, CHECKPOINT may also be an mmseg DAHead/NLHead checkpoint: its keys
are converted on load. COCO / VOC annotation files are checked first. A
checkpoint that does not fit the config's model (keys missing, unexpected or of another shape) is
an error unless --allow-partial-checkpoint. User errors exit with status 2 and one line on stderr.
"""
from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from attn_plugins.cli import test_main  # noqa: E402  - the same code as `attn-plugins test`


def main(argv=None) -> int:
    """Exit status 0, or 2 with one line on stderr for a user error (see runner.run_tool)."""
    return test_main(argv, prog='test.py')


if __name__ == '__main__':
    sys.exit(main())
