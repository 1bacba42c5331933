"""mmengine Runner set-up shared by tools/train.py and tools/test.py."""
from __future__ import annotations

import os
import re
import sys
from typing import Sequence

from .checkpoint import (allow_mmengine_checkpoints, convert_checkpoint_file, load_checkpoint_file,
                         load_state_dict_file, state_dict_mismatch)
from .config import is_inject_attention, load_config
from .registry import ConfigError, RunFailed


def build_runner(config: str, work_dir: str | None = None, cfg_options: Sequence[str] | dict | None = None,
                 launcher: str = 'none', resume: str | None = None, amp: bool = False, load_from: str | None = None,
                 progress_interval: int | None = None, trust_config: bool = False,
                 allow_partial_checkpoint: bool = False,
                 check_data: Sequence[str] = ('train_dataloader', 'val_dataloader', 'test_dataloader')):
    """An mmengine Runner for `config` (YAML loaded safely), ready to train() or test().

    The task (segmentation, detection, ...) is the config's: its `default_scope` and registry names.
    resume: None, 'auto' (latest checkpoint in the work dir) or a checkpoint path.
    load_from: weights to load before testing; for segmentation configs (default_scope mmseg),
        mmseg DAHead/NLHead checkpoints are converted. Keys
        missing from it, unexpected or of another shape are a ConfigError unless
        allow_partial_checkpoint (then mmengine loads what fits and logs the rest).
    check_data: the dataloaders whose COCO / VOC annotation files are checked first
        (attn_plugins.datasets.det_check: a clear error where mmdet would be silent or fail late).
    progress_interval: print a progress line every this many iterations (ProgressHook).
    trust_config: lift load_config's YAML limits (.py bases, custom_imports, ...): the config may run code.
    """
    from mmengine.runner import Runner
    allow_mmengine_checkpoints()
    cfg = load_config(config, cfg_options, trust=trust_config)
    cfg.launcher = launcher
    name = os.path.splitext(os.path.basename(config))[0]
    cfg.work_dir = work_dir or cfg.get('work_dir') or os.path.join('work_dirs', name)
    if os.path.exists(cfg.work_dir) and not os.path.isdir(cfg.work_dir):
        raise ConfigError(f"work dir {cfg.work_dir!r} exists and is not a directory")
    if resume is not None:
        cfg.resume = True
        cfg.load_from = _resume_checkpoint(resume, cfg.work_dir)
    if load_from is not None:
        if cfg.get('default_scope') == 'mmseg':      # mmseg DAHead / NLHead keys -> ours
            cfg.load_from = convert_checkpoint_file(load_from, cfg.work_dir)
        else:
            load_state_dict_file(load_from)          # a clear error now, not one deep in the Runner
            cfg.load_from = load_from
    if check_data:
        from .datasets.det_check import check_detection_data
        check_detection_data(cfg, check_data)
        from .datasets.mpiifacegaze import check_person_folds
        check_person_folds(cfg, check_data)       # leave-one-person-out: no evaluated person trained on
    hooks = list(cfg.get('custom_hooks') or [])
    # safe checkpoints; blocks' auxiliary losses; stop on a NaN / inf loss; every injected block runs
    for hook in ('SafeCheckpointHook', 'AuxiliaryLossHook', 'FiniteLossHook', 'CheckBlocksHook'):
        if not any(h.get('type') == hook for h in hooks):
            hooks.append(dict(type=hook))
    if progress_interval:
        hooks.append(dict(type='ProgressHook', interval=progress_interval))
    cfg.custom_hooks = hooks
    if amp:
        import torch
        if not torch.cuda.is_available():
            raise ConfigError("--amp: mmengine's AmpOptimWrapper trains on a GPU only (cuda/npu/mlu/musa); "
                              "on the CPU train in fp32")
        cfg.optim_wrapper = dict(cfg.optim_wrapper, type='AmpOptimWrapper', dtype='bfloat16')
    if launcher != 'none':
        _prepare_cpu_distributed(cfg)
    if str(cfg.filename).endswith(('.yaml', '.yml')):
        # The Runner dumps the resolved config into the work dir in the format of its name; a
        # YAML dump would hold `!!python/tuple` tags (OpenMMLab needs tuples), which our loader
        # (attn_plugins.config) reads back but plain yaml.safe_load does not. Unnamed, it is dumped
        # as <timestamp>.py, mmengine's own format.
        from mmengine.config import Config
        # mmengine derives the name from the filename, as '<name>_<timestamp>'; it keys the Runner's
        # logger, MessageHub and Visualizer singletons, so two runs in one process must not share it
        # (a second run of a config would log its scalars into the first run's work dir).
        cfg.experiment_name = cfg.get('experiment_name') or _unique_experiment_name(name)
        if isinstance(cfg.get('visualizer'), dict):  # OpenMMLab bases name it 'visualizer': one per process
            cfg.visualizer['name'] = cfg.experiment_name
        cfg = Config(cfg.to_dict())
    from .plan import check_mmcv_plugins
    try:
        check_mmcv_plugins(cfg.get('model'))
    except ConfigError as err:
        raise ConfigError(f"{config}: {err}") from None
    model_cfg = cfg.get('model')
    if (isinstance(model_cfg, dict) and model_cfg.get('plugins') is not None
            and not str(model_cfg.get('type', '')).startswith('timm/') and not is_inject_attention(model_cfg)):
        # `model.plugins` (injector specs) on an mmengine model: built as `config.build_model` (and
        # so `attn-plugins plan`) builds it; the model class itself takes no `plugins` argument
        module = {k: v for k, v in model_cfg.items() if k != 'plugins'}
        if cfg.get('data_preprocessor') is not None:     # what the Runner would give the model itself
            module.setdefault('data_preprocessor', cfg.data_preprocessor)
            cfg.data_preprocessor = None
        cfg.model = dict(type='InjectAttention', module=module, plugins=model_cfg['plugins'])
    from .injector import config_keys
    try:
        with config_keys(model_cfg, 'model'):       # spec errors name their config key, as in `attn-plugins plan`
            runner = Runner.from_cfg(cfg)
    except TypeError as err:        # a config option the class does not take (mmengine names the class)
        if not re.search(r"unexpected keyword argument|required (keyword-only |positional )?argument", str(err)):
            raise
        raise ConfigError(f"{config}: {err}; check the config keys (and --cfg-options) of that class") from None
    except KeyError as err:         # a type no registry holds: name its config key, as `attn-plugins plan` does
        from .plan import registry_error
        converted = registry_error(err, model_cfg, cfg.get('default_scope'))   # the config's keys, not the wrapper's
        if converted is None:
            raise
        raise ConfigError(f"{config}: {converted}") from None
    from mmengine.model import is_model_wrapper
    from .injector import reattach_blocks
    model = runner.model.module if is_model_wrapper(runner.model) else runner.model
    # Runner.__init__ (wrap_model) reverts SyncBN (one process) or converts BN (cfg sync_bn): new
    # norm modules without the hooks that run blocks injected after / before them
    reattach_blocks(model)
    if load_from is not None and not allow_partial_checkpoint:
        mismatch = state_dict_mismatch(model, load_state_dict_file(cfg.load_from))
        if mismatch:
            raise ConfigError(f"checkpoint {load_from!r} does not fit the model of {config}: {mismatch}; "
                              "pass --allow-partial-checkpoint to load only what fits")
    return runner


def _unique_experiment_name(name: str) -> str:
    """'<name>_<timestamp>' as mmengine names runs, with a counter if this process already has one."""
    import time
    from mmengine.visualization import Visualizer
    base = f"{name}_{time.strftime('%Y%m%d_%H%M%S', time.localtime())}"
    candidate, count = base, 1
    while Visualizer.check_instance_created(candidate):
        count += 1
        candidate = f'{base}_{count}'
    return candidate


def _resume_checkpoint(resume: str, work_dir: str) -> str:
    """The checkpoint to resume from: `resume` itself, or for 'auto' the latest in `work_dir`
    (mmengine's `last_checkpoint` record); nothing to resume is an error, not a fresh start."""
    if resume == 'auto':
        from mmengine.runner import find_latest_checkpoint
        latest = find_latest_checkpoint(work_dir) if os.path.isdir(work_dir) else None
        if not latest:
            raise ConfigError(f"--resume: no checkpoint to resume in {work_dir!r} (no last_checkpoint record); "
                              "pass a checkpoint path, or train without --resume to start from scratch")
        resume = latest
    load_checkpoint_file(resume)          # a clear error now, not one deep in the Runner
    return resume


USER_ERRORS = (ConfigError, OSError)
UNKNOWN_OPTION = re.compile(r"^\w+\.__init__\(\) got an unexpected keyword argument '\w+'$")


def run_tool(prog: str, fn, *args, **kwargs) -> int:
    """Run a tool's `fn`; a user error (bad config, missing or unreadable file, ...) prints one
    line on stderr and returns 2 instead of a traceback. Ends any distributed process group (after
    a failure without waiting for the other ranks: they may never get there)."""
    try:
        status = fn(*args, **kwargs)
    except (*USER_ERRORS, RunFailed) as err:   # RunFailed: diverged training, no metrics (status 1)
        _destroy_process_group()
        print(f"{prog}: error: {' '.join(str(err).split())}", file=sys.stderr)
        return 1 if isinstance(err, RunFailed) else 2
    except TypeError as err:        # a config key the class does not take, met when the Runner builds lazily
        if not UNKNOWN_OPTION.search(str(err)):          # (datasets, metrics, hooks at train/test time)
            _destroy_process_group()
            raise
        _destroy_process_group()
        print(f"{prog}: error: {err}; check the config keys (and --cfg-options) of that class", file=sys.stderr)
        return 2
    except ModuleNotFoundError as err:
        _destroy_process_group()
        if not (err.name or '').startswith(MMACTION_DRN):
            raise
        print(f"{prog}: error: {mmaction_drn_hint()}", file=sys.stderr)
        return 2
    except BaseException:
        _destroy_process_group()
        raise
    shutdown_distributed()
    return status


MMACTION_DRN = 'mmaction.models.localizers.drn'


def mmaction_drn_hint() -> str:
    """What to do when mmaction2 1.2.0 from PyPI cannot import its models (no localizers/drn)."""
    import importlib.util
    spec = importlib.util.find_spec('mmaction')
    folder = (os.path.join(os.path.dirname(spec.origin), 'models', 'localizers', 'drn') if spec and spec.origin
              else '<site-packages>/mmaction/models/localizers/drn')
    return (f"`import mmaction.models` fails: mmaction2 1.2.0's PyPI package lacks {MMACTION_DRN.replace('.', '/')}, "
            f"which its localizers import. Install attn_plugins' placeholder (a DRN that raises a clear error if "
            f"built; attn_plugins never uses DRN): mkdir -p {folder} && cp tools/mmaction_drn/__init__.py "
            f"tools/mmaction_drn/drn.py {folder}/ (tools/setup_env.sh does this), or install mmaction2 from its git "
            "sources")


def _destroy_process_group() -> None:
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def shutdown_distributed() -> None:
    """Wait for all ranks, then destroy the process group: a gloo group left alive at
    interpreter exit can abort a rank ('terminate called without an active exception')."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _prepare_cpu_distributed(cfg) -> None:
    """Distributed training without CUDA: mmengine's pytorch launcher calls
    torch.cuda.set_device, so start the gloo process group here (mmengine then skips its own)
    and wrap the model with a DDP that takes no device ids."""
    import torch
    import torch.distributed as dist
    if torch.cuda.is_available():
        return
    if not dist.is_initialized():
        dist.init_process_group(backend='gloo')      # rank/world size from torchrun's environment
    cfg.model_wrapper_cfg = dict(type='CPUDistributedDataParallel', broadcast_buffers=False,
                                 find_unused_parameters=cfg.get('find_unused_parameters', False))
