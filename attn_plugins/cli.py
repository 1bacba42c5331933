"""`attn-plugins` command line: env, list, train, test."""
from __future__ import annotations

import argparse
import importlib
import platform
import sys


def _version(module: str) -> str:
    try:
        return importlib.import_module(module).__version__
    except Exception as err:  # noqa: BLE001 - report any import failure
        return f"not installed ({type(err).__name__})"


def env() -> int:
    import attn_plugins
    rows = [('python', platform.python_version())]
    rows += [(m, _version(m)) for m in ('torch', 'torchvision', 'timm', 'mmengine', 'mmcv')]
    try:
        from mmcv.ops import nms  # noqa: F401  - a compiled op
        from mmcv.ops import get_compiler_version, get_compiling_cuda_version
        ops = f"yes (compiler {get_compiler_version()}, cuda {get_compiling_cuda_version()})"
    except Exception as err:  # noqa: BLE001
        ops = f"no ({type(err).__name__}: {err})"
    rows.append(('mmcv compiled ops', ops))
    rows += [(m, _version(m)) for m in ('mmdet', 'mmseg')]
    import torch
    rows.append(('cuda available', str(torch.cuda.is_available())))
    rows.append(('attn_plugins', attn_plugins.__version__))
    rows.append(('registered blocks', f"{len(attn_plugins.BLOCKS)} ({', '.join(sorted(attn_plugins.BLOCKS))})"))
    rows.append(('registered plugins', str(len(attn_plugins.list_plugins()))))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog='attn-plugins', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('env', help='print versions of the stack and what is registered')
    sub.add_parser('list', help='list registered blocks and heads')
    args = parser.parse_args(argv)
    if args.command == 'env':
        return env()
    if args.command == 'list':
        import attn_plugins
        print('\n'.join(attn_plugins.list_plugins()))
        return 0
    return 1


if __name__ == '__main__':
    sys.exit(main())
