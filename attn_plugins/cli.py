"""`attn-plugins` command line: env, list, train, test, plan, viz, bench.

    attn-plugins train CONFIG [--work-dir DIR] [--resume [CKPT]] [--cfg-options K=V ...] [--launcher pytorch]
    attn-plugins test CONFIG CHECKPOINT [--out PREDICTIONS] [--metrics-json PATH] [--allow-partial-checkpoint] ...
    attn-plugins plan CONFIG [--input-shape H,W] [--json PATH] [--cfg-options K=V ...]
    attn-plugins viz CONFIG [--checkpoint CKPT] [--image PATH | --sample N] [--out DIR] [--queries X,Y[,T] ...]
    attn-plugins bench [--suite blocks|seg|train|models] [--paper] [--quick] [--json PATH] [--readme JSON]

train and test need the `seg` (or `det`) extra; tools/train.py and tools/test.py run the same code.
"""
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
    rows += [(m, _version(m)) for m in ('mmdet', 'mmseg', 'mmaction')]
    import torch
    rows.append(('cuda available', str(torch.cuda.is_available())))
    rows.append(('attn_plugins', attn_plugins.__version__))
    rows.append(('registered blocks', f"{len(attn_plugins.BLOCKS)} ({', '.join(sorted(attn_plugins.BLOCKS))})"))
    rows.append(('registered plugins', str(len(attn_plugins.list_plugins()))))
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    return 0


TRAIN_HELP = "train a model from a YAML (or OpenMMLab .py) config with mmengine's Runner"
TEST_HELP = "evaluate a checkpoint with the config's test dataloader and evaluator"
TRAIN_EPILOG = "Distributed (CPU, gloo): torchrun --nproc_per_node=2 -m attn_plugins.cli train CONFIG --launcher pytorch"
TEST_EPILOG = ("With a segmentation config, CHECKPOINT may also be an mmseg DAHead/NLHead checkpoint: its keys are "
               "converted on load. A checkpoint that does not fit the config's model (keys missing, unexpected or of "
               "another shape) is an error unless --allow-partial-checkpoint. COCO / VOC annotation files are checked "
               "first. User errors exit with status 2 and one line on stderr.")


def _common_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                        help='override config keys, e.g. train_cfg.max_iters=100')
    parser.add_argument('--trust-config', action='store_true',
                        help='lift the safe YAML limits (.py or absolute _base_, any custom_imports and '
                             'registry names): only for a config you trust to run code')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'], default='none')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)


def add_train_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of `attn-plugins train` (and tools/train.py)."""
    parser.add_argument('config')
    parser.add_argument('--work-dir', help='where logs and checkpoints go (default work_dirs/<config name>)')
    parser.add_argument('--resume', nargs='?', const='auto', default=None,
                        help='resume from CHECKPOINT, or from the latest in the work dir when given alone '
                             '(an error if there is none)')
    parser.add_argument('--amp', action='store_true', help="mixed precision, bf16 (mmengine's AmpOptimWrapper: GPU only)")
    _common_arguments(parser)
    return parser


def add_test_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of `attn-plugins test` (and tools/test.py)."""
    parser.add_argument('config')
    parser.add_argument('checkpoint')
    parser.add_argument('--work-dir')
    parser.add_argument('--out', metavar='PREDICTIONS',
                        help="dump the predictions, as the task's OpenMMLab tools/test.py --out does: segmentation: "
                             "a directory of predicted label PNGs, one per image (mmseg's IoUMetric output_dir); "
                             "detection: a .pkl of every image's results (mmdet's DumpDetResults); other tasks: "
                             "a .pkl of the model's outputs (mmengine's DumpResults, as mmaction2's --dump)")
    parser.add_argument('--metrics-json', metavar='PATH', help='also write the metrics printed as JSON here')
    parser.add_argument('--allow-partial-checkpoint', action='store_true',
                        help="evaluate even if the checkpoint lacks some of the model's weights or has others "
                             '(by default that is an error: the metrics would be of a partly random model)')
    _common_arguments(parser)
    return parser


def train(args: argparse.Namespace) -> int:
    from .runner import build_runner
    runner = build_runner(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options,
                          launcher=args.launcher, resume=args.resume, amp=args.amp,
                          trust_config=args.trust_config, check_data=('train_dataloader', 'val_dataloader'))
    runner.train()
    return 0


def evaluate(args: argparse.Namespace) -> int:
    import json

    from .runner import build_runner
    runner = build_runner(args.config, work_dir=args.work_dir, cfg_options=args.cfg_options,
                          launcher=args.launcher, load_from=args.checkpoint,
                          trust_config=args.trust_config, allow_partial_checkpoint=args.allow_partial_checkpoint,
                          check_data=('test_dataloader',))
    if args.out:
        dump_predictions(runner, args.out)
    metrics = {k: float(v) for k, v in runner.test().items()}
    if not metrics:
        from .registry import RunFailed
        raise RunFailed(f"the test evaluator gave no metrics for {args.checkpoint} (mmdet's CocoMetric gives none, "
                        "only a log line, when the model predicts nothing, e.g. after a diverged training run)")
    print(json.dumps(metrics, indent=2))
    if args.metrics_json:
        with open(args.metrics_json, 'w') as f:
            json.dump(metrics, f, indent=2)
    return 0


def dump_predictions(runner, out: str) -> None:
    """Make `runner.test()` also write its predictions to `out`, as the task's OpenMMLab test tool
    does with --out (see add_test_arguments); a path of the wrong kind is a ConfigError."""
    import os

    from .registry import ConfigError
    metrics = runner.test_evaluator.metrics
    try:
        from mmseg.evaluation import IoUMetric
    except ImportError:           # the seg extra is not installed: no mmseg evaluator either
        IoUMetric = ()
    seg = [m for m in metrics if isinstance(m, IoUMetric)]
    if seg:
        if out.endswith(('.json', '.pkl', '.pickle')) or os.path.isfile(out):
            raise ConfigError(f"--out {out}: for segmentation --out is the directory the predicted label PNGs go "
                              "to (as mmseg's tools/test.py --out); metrics as JSON: --metrics-json PATH")
        os.makedirs(out, exist_ok=True)
        for metric in seg:
            metric.output_dir = out
        return
    if not out.endswith(('.pkl', '.pickle')):
        raise ConfigError(f"--out {out}: the predictions are dumped as a pickle (as mmdet's and mmpretrain's tools/test.py --out); "
                          "name a .pkl file (metrics as JSON: --metrics-json PATH)")
    if any(type(m).__module__.startswith('mmdet.') for m in metrics):
        from mmdet.evaluation import DumpDetResults
        metrics.append(DumpDetResults(out_file_path=out))
    else:
        from mmengine.evaluator import DumpResults
        metrics.append(DumpResults(out_file_path=out))


def run_command(prog: str, command, args: argparse.Namespace) -> int:
    """Run `train` or `evaluate`: exit status 0, or 2 with one line on stderr for a user error
    (a bad config, a missing or unreadable file; see runner.run_tool)."""
    import os
    import warnings
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated')   # mmengine's import, not ours
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    from .runner import run_tool
    return run_tool(prog, command, args)


def train_main(argv=None, prog: str = 'attn-plugins train') -> int:
    """`attn-plugins train ...` as a function (tools/train.py calls it with prog='train.py')."""
    parser = argparse.ArgumentParser(prog=prog, description=TRAIN_HELP, epilog=TRAIN_EPILOG)
    return run_command(prog, train, add_train_arguments(parser).parse_args(argv))


def test_main(argv=None, prog: str = 'attn-plugins test') -> int:
    """`attn-plugins test ...` as a function (tools/test.py calls it with prog='test.py')."""
    parser = argparse.ArgumentParser(prog=prog, description=TEST_HELP, epilog=TEST_EPILOG)
    return run_command(prog, evaluate, add_test_arguments(parser).parse_args(argv))


test_main.__test__ = False   # not a pytest test


PLAN_HELP = "show every attention block a config puts in its model, with the params and FLOPs each adds"
PLAN_EPILOG = ("Builds the model only (no data, no training, no weight downloads) and runs one forward on a random "
               "input. 'without blocks' is the same model with every attention block taken out. User errors "
               "(unknown or unmatched specs, ...) exit with status 2 and one line on stderr.")
VIZ_HELP = "draw what each attention block of a model looks at (one PNG per block)"
VIZ_EPILOG = ("Input: --image PATH (through the config's test pipeline, or resized and normalised for a timm model) "
              "or --sample N of the config's test (else val) dataset. Queries are x,y pixels of the model's input "
              "image. User errors exit with status 2 and one line on stderr.")


def add_plan_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of `attn-plugins plan`."""
    parser.add_argument('config')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE', help='override config keys')
    parser.add_argument('--input-shape', nargs='+', metavar='SIZE',
                        help='H,W or C,H,W (or a full shape without batch) of the counting forward; default: '
                             "model.data_preprocessor.size, the test pipeline's resize scale, timm's input_size")
    parser.add_argument('--json', metavar='PATH', help='also write the plan as JSON here')
    parser.add_argument('--trust-config', action='store_true', help='lift the safe YAML limits (see train)')
    return parser


def add_viz_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The arguments of `attn-plugins viz` (and tools/visualize.py)."""
    parser.add_argument('config')
    parser.add_argument('--checkpoint', help='model weights (default: the untrained model, with a warning)')
    source = parser.add_mutually_exclusive_group()
    source.add_argument('--image', help='an image file')
    source.add_argument('--sample', type=int, metavar='N', help="sample N of the config's test (else val) dataset")
    parser.add_argument('--out', help='output folder (default work_dirs/viz/<config name>)')
    parser.add_argument('--queries', nargs='+', metavar='X,Y[,T]',
                        help='query pixels for position / non-local attention (default: centre and two more); '
                             'video: X,Y,T with T an input frame (default: the centre of the middle frame)')
    parser.add_argument('--input-shape', nargs='+', metavar='SIZE',
                        help='H,W an --image is resized to for a model without a test pipeline (timm)')
    parser.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE', help='override config keys')
    parser.add_argument('--trust-config', action='store_true', help='lift the safe YAML limits (see train)')
    return parser


def run_analysis(prog: str, command_name: str, args: argparse.Namespace) -> int:
    """Run `plan` or `viz`: exit status 0, or 2 with one line on stderr for a user error."""
    import warnings
    warnings.filterwarnings('ignore', message='pkg_resources is deprecated')   # mmengine's import, not ours
    from .runner import run_tool
    if command_name == 'plan':
        from .plan import plan_command
        return run_tool(prog, plan_command, args)
    from .visualize import viz_command
    return run_tool(prog, viz_command, args)


def plan_main(argv=None, prog: str = 'attn-plugins plan') -> int:
    """`attn-plugins plan ...` as a function."""
    parser = argparse.ArgumentParser(prog=prog, description=PLAN_HELP, epilog=PLAN_EPILOG)
    return run_analysis(prog, 'plan', add_plan_arguments(parser).parse_args(argv))


def viz_main(argv=None, prog: str = 'attn-plugins viz') -> int:
    """`attn-plugins viz ...` as a function (tools/visualize.py calls it with prog='visualize.py')."""
    parser = argparse.ArgumentParser(prog=prog, description=VIZ_HELP, epilog=VIZ_EPILOG)
    return run_analysis(prog, 'viz', add_viz_arguments(parser).parse_args(argv))


BENCH_HELP = "benchmark blocks and whole models against their peers, and the papers' tables (= tools/benchmark.py)"


def bench_main(argv=None, prog: str = 'attn-plugins bench') -> int:
    """`attn-plugins bench ...`: tools/benchmark.py of this source checkout (the benchmark and its
    configs live in the repository, not in an installed wheel)."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools', 'benchmark.py')
    if not os.path.isfile(path):
        print(f"{prog}: error: {path} not found: the benchmark runs from a source checkout of attn_plugins "
              "(its tools/ folder), not from an installed wheel", file=sys.stderr)
        return 2
    spec = importlib.util.spec_from_file_location('attn_plugins_benchmark', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main(argv, prog=prog)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ['bench']:              # its own parser: every option of tools/benchmark.py
        return bench_main(argv[1:])
    parser = argparse.ArgumentParser(prog='attn-plugins', description=__doc__)
    sub = parser.add_subparsers(dest='command', required=True)
    sub.add_parser('env', help='print versions of the stack and what is registered')
    sub.add_parser('list', help='list registered blocks and heads')
    add_train_arguments(sub.add_parser('train', help=TRAIN_HELP, description=TRAIN_HELP, epilog=TRAIN_EPILOG))
    add_test_arguments(sub.add_parser('test', help=TEST_HELP, description=TEST_HELP, epilog=TEST_EPILOG))
    add_plan_arguments(sub.add_parser('plan', help=PLAN_HELP, description=PLAN_HELP, epilog=PLAN_EPILOG))
    add_viz_arguments(sub.add_parser('viz', help=VIZ_HELP, description=VIZ_HELP, epilog=VIZ_EPILOG))
    sub.add_parser('bench', help=BENCH_HELP, add_help=False)
    args = parser.parse_args(argv)
    if args.command == 'env':
        return env()
    if args.command == 'list':
        import attn_plugins
        print('\n'.join(attn_plugins.list_plugins()))
        return 0
    if args.command in ('plan', 'viz'):
        return run_analysis(f'attn-plugins {args.command}', args.command, args)
    if args.command == 'train':
        return run_command('attn-plugins train', train, args)
    return run_command('attn-plugins test', evaluate, args)


if __name__ == '__main__':
    sys.exit(main())
