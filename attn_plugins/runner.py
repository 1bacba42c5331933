"""mmengine Runner set-up shared by tools/train.py and tools/test.py."""
from __future__ import annotations

import os
from typing import Sequence

from .checkpoint import allow_mmengine_checkpoints, convert_checkpoint_file
from .config import load_config


def build_runner(config: str, work_dir: str | None = None, cfg_options: Sequence[str] | dict | None = None,
                 launcher: str = 'none', resume: str | None = None, amp: bool = False, load_from: str | None = None,
                 progress_interval: int | None = None, trust_config: bool = False):
    """An mmengine Runner for `config` (YAML loaded safely), ready to train() or test().

    resume: None, 'auto' (latest checkpoint in the work dir) or a checkpoint path.
    load_from: weights to load before testing; mmseg DAHead/NLHead checkpoints are converted.
    progress_interval: print a progress line every this many iterations (ProgressHook).
    trust_config: lift load_config's YAML limits (.py bases, custom_imports, ...): the config may run code.
    """
    from mmengine.runner import Runner
    allow_mmengine_checkpoints()
    cfg = load_config(config, cfg_options, trust=trust_config)
    cfg.launcher = launcher
    name = os.path.splitext(os.path.basename(config))[0]
    cfg.work_dir = work_dir or cfg.get('work_dir') or os.path.join('work_dirs', name)
    if resume is not None:
        cfg.resume = True
        cfg.load_from = None if resume == 'auto' else resume
    if load_from is not None:
        cfg.load_from = convert_checkpoint_file(load_from, cfg.work_dir)
    hooks = list(cfg.get('custom_hooks') or [])
    for hook in ('SafeCheckpointHook', 'AuxiliaryLossHook'):   # safe checkpoints; blocks' auxiliary losses
        if not any(h.get('type') == hook for h in hooks):
            hooks.append(dict(type=hook))
    if progress_interval:
        hooks.append(dict(type='ProgressHook', interval=progress_interval))
    cfg.custom_hooks = hooks
    if amp:
        import torch
        if not torch.cuda.is_available():
            from .registry import ConfigError
            raise ConfigError("--amp: mmengine's AmpOptimWrapper trains on a GPU only (cuda/npu/mlu/musa); "
                              "on the CPU train in fp32")
        cfg.optim_wrapper = dict(cfg.optim_wrapper, type='AmpOptimWrapper', dtype='bfloat16')
    if launcher != 'none':
        _prepare_cpu_distributed(cfg)
    if str(cfg.filename).endswith(('.yaml', '.yml')):
        # The Runner dumps the resolved config into the work dir in the format of its name; a
        # YAML dump would hold `!!python/tuple` tags (OpenMMLab needs tuples), which no safe
        # loader reads back. Unnamed, it is dumped as <timestamp>.py, mmengine's own format.
        from mmengine.config import Config
        cfg.experiment_name = cfg.get('experiment_name') or name     # mmengine derives it from the filename
        cfg = Config(cfg.to_dict())
    return Runner.from_cfg(cfg)


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
