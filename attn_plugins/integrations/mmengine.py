"""Register the blocks into mmengine's MODELS, so OpenMMLab configs can build them.

Each block is registered twice: in the root `MODELS` under its plain name (so a mmdet or mmseg
config finds `type='CBAM'` through the registry's parent chain) and in a child registry with
scope 'attn_plugins' (so `type='attn_plugins.CBAM'` works from any scope). The registered
classes are thin subclasses that also accept OpenMMLab's `in_channels=` keyword (the plugin
builder of mmdet's/mmseg's ResNet passes it) and carry an `_abbr_` for layer names.
Blocks keep their own init through a host's `init_weights()`: see `restore_blocks_on_init`
(run by every `attn_plugins.inject`, hence `InjectAttention`, once this module is registered).
Also registered: the `InjectAttention` builder and `TimmBackbone` (MODELS), the
`SafeCheckpointHook`, `ProgressHook`, `AuxiliaryLossHook`, `FiniteLossHook` and `CheckBlocksHook` (HOOKS), and
`CPUDistributedDataParallel` (MODEL_WRAPPERS); for full-face gaze, `GazeEstimator` (MODELS),
`MPIIFaceGazeDataset` (DATASETS) and `MeanAngularError` (METRICS) (see `register_gaze`); for
Learn to Pay Attention on CIFAR, `AttentionClassifier`, `PayAttentionVGG` and `VGGBNDrop` (MODELS),
`CifarDataset` (DATASETS), `RandomCropWithPadding`, `RandomHorizontalFlip` and
`PackClassificationInputs` (TRANSFORMS) and `TopKAccuracy` (METRICS) (see `register_ltpa`).
"""
from __future__ import annotations

import inspect
import time

from mmengine.hooks import Hook
from mmengine.model import BaseModule, MMDistributedDataParallel
from mmengine.registry import HOOKS, MODEL_WRAPPERS, MODELS, Registry

from ..checkpoint import from_safe, rng_state, set_rng_state, to_safe
from ..modules import HostInit, reset_attention_blocks
from ..registry import BLOCKS, SCOPE, ConfigError, RunFailed, snake_name

_REGISTERED: dict[str, type] = {}


def openmmlab_class(name: str, cls: type) -> type:
    """A subclass of `cls` whose constructor also takes `in_channels` (OpenMMLab's keyword). A block
    with its own `in_channels` list (PyramidAttention: one width per input map) gets a list passed
    through; `channels` then defaults to the target map's width."""
    if name in _REGISTERED:
        return _REGISTERED[name]
    params = inspect.signature(cls.__init__).parameters

    def __init__(self, channels=None, *args, in_channels=None, **kwargs):
        if 'in_channels' in params and isinstance(in_channels, (list, tuple)):
            widths, in_channels = list(in_channels), None
            kwargs['in_channels'] = widths
            if channels is None and widths:
                index = kwargs.get('target_index', params['target_index'].default if 'target_index' in params else 0)
                channels = widths[index] if isinstance(index, int) and -len(widths) <= index < len(widths) else widths[0]
        if channels is None and in_channels is None:
            raise ConfigError(f"{name}: needs `channels` (or OpenMMLab's `in_channels`)")
        if channels is not None and in_channels is not None and channels != in_channels:
            raise ConfigError(f"{name}: channels={channels} disagrees with in_channels={in_channels} "
                              "passed by the host model; remove `channels` from the plugin cfg")
        cls.__init__(self, channels if channels is not None else in_channels, *args, **kwargs)

    # lives in this module under its own name, so instances pickle (torch.save(model), spawn)
    sub = type(name, (cls,), {'__init__': __init__, '_abbr_': snake_name(name), '__doc__': cls.__doc__,
                              '__module__': __name__, '__qualname__': name})
    globals()[name] = _REGISTERED[name] = sub
    return sub


def scoped_registry() -> Registry:
    """The child registry with scope 'attn_plugins' (a child Registry attaches itself to its parent)."""
    return MODELS.children.get(SCOPE) or Registry('model', parent=MODELS, scope=SCOPE)


def inject_attention(module: dict, plugins: list, example_input=None):
    """Registered as 'InjectAttention': build `module` (any registered backbone, neck or model)
    through mmengine's MODELS in the current scope, then inject `plugins` (injector specs).
    Serves backbones without a `plugins` argument (BasicBlock ResNets, ResNeXt, Swin, mmaction2's
    ResNet3d, ...). `example_input` is the probing input (see `inject`): a tensor, or in a config
    the shape of a zero input, e.g. [1, 3, 8, 64, 64] (B, C, T, H, W) for a video backbone."""
    from ..injector import inject
    if not isinstance(module, dict) or 'type' not in module:
        raise ConfigError("InjectAttention.module: expected a dict with 'type' (the model to build)")
    if isinstance(example_input, (list, tuple)):
        if not example_input or not all(isinstance(s, int) and not isinstance(s, bool) and s > 0
                                        for s in example_input):
            raise ConfigError("InjectAttention.example_input: expected the shape of the probing input as positive "
                              f"ints, e.g. [1, 3, 8, 64, 64], got {list(example_input)!r}")
        import torch
        example_input = torch.zeros(tuple(example_input))
    with MODELS.switch_scope_and_registry(None) as registry:
        built = registry.build(module)
    return restore_blocks_on_init(inject(built, plugins, example_input=example_input))


class _InitThenResetBlocks:
    """`init_weights` for a plain nn.Module between a mmengine BaseModule and injected blocks: the
    module's own init_weights (if its class has one), then the blocks' own init. A module-level
    class holding the module, so the model still pickles and deep-copies."""

    def __init__(self, module):
        self.module = module

    def __call__(self, *args, **kwargs) -> None:
        own = getattr(type(self.module), 'init_weights', None)
        if callable(own):
            own(self.module, *args, **kwargs)
        reset_attention_blocks(self.module)


def restore_blocks_on_init(model):
    """Make `model.init_weights()` (mmengine) end with the injected blocks' own init, in
    mmengine's order: after the init_cfg of every BaseModule above a block, before their
    `Pretrained` init_cfg (a checkpoint holding block weights still wins).

    mmengine's `BaseModule.init_weights` applies its init_cfg to all submodules, then calls
    `init_weights()` of each child that has one. A block (see `HostInit`) whose ancestors are all
    BaseModules is reached that way. Below a plain nn.Module (a block `after:bn2` is a child of the
    BN; a timm model) the chain stops: that module, the first plain one under a BaseModule, gets
    an `init_weights` that also resets the blocks under it. Returns the model (idempotent)."""
    if isinstance(model, HostInit) or not isinstance(model, BaseModule):
        return model        # no mmengine init_cfg above the blocks
    from .timm import TimmBackbone
    for record in getattr(model, 'attn_plugins_report', []):
        ancestors, module = [], model
        for name in record.attr.split('.')[:-1]:
            module = getattr(module, name)
            ancestors.append(module)
        for module in ancestors:
            if isinstance(module, (HostInit, TimmBackbone)):
                break       # resets its blocks itself
            if not isinstance(module, BaseModule):
                if not isinstance(module.__dict__.get('init_weights'), _InitThenResetBlocks):
                    module.init_weights = _InitThenResetBlocks(module)
                break
    return model


class SafeCheckpointHook(Hook):
    """Write checkpoints that torch.load(weights_only=True) accepts, and read them back. Also
    stores torch's random state, which a resumed run restores (see `checkpoint.rng_state`)."""
    priority = 'VERY_LOW'
    _rng_state = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        for key in ('message_hub', 'meta'):
            if key in checkpoint:
                checkpoint[key] = to_safe(checkpoint[key])
        checkpoint['rng_state'] = rng_state()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if 'message_hub' in checkpoint:
            checkpoint['message_hub'] = from_safe(checkpoint['message_hub'])
        self._rng_state = checkpoint.get('rng_state')

    def before_train(self, runner) -> None:
        if self._rng_state is not None and runner.iter > 0:     # resumed, not just loaded weights
            from mmengine.runner import IterBasedTrainLoop       # replays the data: numpy/random follow
            set_rng_state(self._rng_state, data=not isinstance(runner.train_loop, IterBasedTrainLoop))
        self._rng_state = None


class ProgressHook(Hook):
    """One line per `interval` training iterations: progress, loss, elapsed and ETA (on rank 0;
    printed, so it shows whatever the log level)."""
    priority = 'LOW'

    def __init__(self, interval: int = 50):
        self.interval = max(int(interval), 1)
        self._start = None

    def before_train(self, runner) -> None:
        self._start = time.time()

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None) -> None:
        done, total = runner.iter + 1, runner.max_iters
        if runner.rank != 0 or (done % self.interval and done != total):
            return
        elapsed = time.time() - self._start
        eta = elapsed / done * (total - done)
        loss = runner.message_hub.get_scalar('train/loss').current()
        width = 30
        bar = '#' * int(width * done / total)
        print(f"[train] [{bar:<{width}}] {done}/{total} loss {loss:.3f} "
              f"elapsed {elapsed:.0f}s eta {eta:.0f}s", flush=True)


class AuxiliaryLossParser:
    """Stands in for a model's `parse_losses`: adds `auxiliary_losses(model)`, summed per loss
    name under 'plugins.<name>' (e.g. 'plugins.loss_pca'), to the loss dict, then parses it with
    the model class's own `parse_losses`. Every mmengine `train_step` (BaseModel's and the DDP
    and FSDP wrappers') parses the losses through the wrapped model's `parse_losses` before
    `update_params`, and sums the entries whose key contains 'loss': so the terms reach the
    optimiser and the logs. A module-level class, so a patched model still pickles."""

    def __init__(self, model):
        self.model = model

    def __call__(self, losses):
        from ..losses import auxiliary_losses
        losses = dict(losses)
        for key, value in auxiliary_losses(self.model).items():
            name = f"plugins.{key.rsplit('.', 1)[-1]}"
            losses[name] = losses[name] + value if name in losses else value
        return type(self.model).parse_losses(self.model, losses)


def add_auxiliary_losses(model):
    """Make `model` (a mmengine BaseModel, or a model wrapper around one) add its blocks'
    auxiliary losses to the losses of every `train_step` (idempotent). Returns the model."""
    from mmengine.model import is_model_wrapper
    inner = model.module if is_model_wrapper(model) else model
    if not callable(getattr(type(inner), 'parse_losses', None)):
        raise ConfigError(f"AuxiliaryLossHook: {type(inner).__name__} has no parse_losses (not a mmengine "
                          "BaseModel); add sum(attn_plugins.auxiliary_losses(model).values()) to its loss instead")
    if not isinstance(inner.__dict__.get('parse_losses'), AuxiliaryLossParser):
        inner.parse_losses = AuxiliaryLossParser(inner)
    return model


class AuxiliaryLossHook(Hook):
    """Adds the auxiliary losses of the model's blocks (PyramidAttention's PCA loss, wherever the
    block sits: backbone plugin, `InjectAttention`, head) to the training loss of mmengine's
    Runner, through `add_auxiliary_losses`. `attn_plugins.runner.build_runner` adds it to every
    run; with mmseg's or mmdet's own tools/train.py, put `custom_hooks=[dict(type='AuxiliaryLossHook')]`
    in the config (a block whose loss is never collected warns)."""
    priority = 'VERY_HIGH'

    def before_train(self, runner) -> None:
        add_auxiliary_losses(runner.model)


class FiniteLossHook(Hook):
    """Stop training at the first iteration whose losses are not finite (NaN / inf), with the
    iteration and each loss named, instead of training on silently (mmengine does not check; a
    diverged detector then evaluates to no metrics at all). Under DDP every rank learns of a
    non-finite loss on any rank, so all stop together. `build_runner` adds it to every run."""
    priority = 'LOW'

    def after_train_iter(self, runner, batch_idx: int, data_batch=None, outputs=None) -> None:
        import math

        import torch
        import torch.distributed as dist
        values = {k: float(v) for k, v in (outputs or {}).items() if 'loss' in k}
        finite = torch.tensor(float(all(math.isfinite(v) for v in values.values())))
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if finite.item() < 1:
            bad = ', '.join(f"{k}={v:.4g}" for k, v in values.items() if not math.isfinite(v)) or 'on another rank'
            raise TrainingDiverged(
                f"training diverged at iteration {runner.iter + 1} (epoch {runner.epoch + 1}): non-finite loss "
                f"({bad}); lower the learning rate (optim_wrapper.optimizer.lr) or clip gradients "
                "(optim_wrapper.clip_grad=dict(max_norm=...))")


class TrainingDiverged(RunFailed):
    """A training run's loss became NaN / inf (see `FiniteLossHook`)."""


class CheckBlocksHook(Hook):
    """Before the run (before the model's init_weights) and each train / val / test loop: every
    injected block runs. A block whose host lost its hook (the host was replaced: SyncBN reverted
    by the Runner of OpenMMLab's own tools, converted in a hook or a custom model wrapper after
    `build_runner`) gets it back (`injector.reattach_blocks`, with a warning); one that cannot
    (its host or the block itself is gone) stops the run with its path (`BlocksDetached`), instead
    of training or evaluating without it. `build_runner` adds it to every run; with OpenMMLab's
    own tools put `custom_hooks=[dict(type='CheckBlocksHook')]`. Training also stops on
    `efficient_conv_bn_eval` over a norm that runs blocks (a ConfigError)."""
    priority = 'VERY_HIGH'

    def _check(self, runner) -> None:
        from ..injector import detached_blocks, reattach_blocks
        healed = reattach_blocks(runner.model)
        if healed:
            runner.logger.warning(f"attn_plugins: re-attached {len(healed)} injected block(s) whose host module "
                                  f"was replaced: {', '.join(healed)}")
        problems = detached_blocks(runner.model)
        if problems:
            raise BlocksDetached(f"{len(problems)} injected block(s) would not run: {'; '.join(problems)}")

    def before_run(self, runner) -> None:
        self._check(runner)

    def before_train(self, runner) -> None:
        self._check(runner)
        fused = runner.cfg.get('efficient_conv_bn_eval')
        if fused:       # the Runner has put conv+BN into one op for eval: a BN's hooks no longer run
            import torch.nn as nn
            from mmengine.model import is_model_wrapper
            from ..injector import hooked_blocks
            model = runner.model.module if is_model_wrapper(runner.model) else runner.model
            prefixes = [fused] if isinstance(fused, str) else list(fused)
            skipped = [block for block, host_path, host in hooked_blocks(model)
                       if isinstance(host, nn.modules.batchnorm._BatchNorm)
                       and any(host_path == p or host_path.startswith(p + '.') for p in prefixes)]
            if skipped:
                raise ConfigError(f"efficient_conv_bn_eval: {prefixes}: mmengine fuses each conv with the BN after "
                                  "it in eval mode, bypassing the BN's forward hooks, so these injected blocks would "
                                  f"be skipped in eval mode (every validation of this run): {', '.join(skipped)}; "
                                  "remove efficient_conv_bn_eval or inject the blocks elsewhere")

    def before_val(self, runner) -> None:
        self._check(runner)

    def before_test(self, runner) -> None:
        self._check(runner)


class BlocksDetached(RunFailed):
    """An injected block would not run in the model's forward (see `CheckBlocksHook`)."""


class CPUDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper for CPU training (gloo): drops the `device_ids` the Runner
    always passes, which torch rejects for CPU modules."""

    def __init__(self, module, device_ids=None, **kwargs):
        super().__init__(module=module, device_ids=None, **kwargs)


def register_once(registry: Registry, name: str, obj) -> None:
    """Register `obj` as `name` once; a different object already there is a clash."""
    current = registry.module_dict.get(name)
    if current is obj:
        return
    if current is not None:
        raise ConfigError(f"attn_plugins: the name {name!r} is already registered in mmengine's "
                          f"{registry.scope} {registry.name} registry by {current.__module__}")
    registry.register_module(name=name, module=obj)


def register_blocks() -> None:
    """Register the blocks, builders, hooks and wrapper (idempotent); make every `inject` into a
    mmengine model keep the blocks' own init through its init_weights()."""
    from .. import injector
    from .timm import TimmBackbone
    if restore_blocks_on_init not in injector.AFTER_INJECT:
        injector.AFTER_INJECT.append(restore_blocks_on_init)
    models = {name: openmmlab_class(name, cls) for name, cls in BLOCKS.items()}
    models.update(InjectAttention=inject_attention, TimmBackbone=TimmBackbone)
    for registry in (MODELS, scoped_registry()):
        for name, obj in models.items():
            register_once(registry, name, obj)
    for hook in (SafeCheckpointHook, ProgressHook, AuxiliaryLossHook, FiniteLossHook, CheckBlocksHook):
        register_once(HOOKS, hook.__name__, hook)
    register_once(MODEL_WRAPPERS, CPUDistributedDataParallel.__name__, CPUDistributedDataParallel)
    register_gaze()
    register_ltpa()


# ---------------------------------------------------------------------------------------------
# Full-face gaze (Zhang et al. 2017) on MPIIFaceGaze: model, dataset and metric for the Runner.
# ---------------------------------------------------------------------------------------------
from mmengine.evaluator import BaseMetric  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from mmengine.registry import DATASETS, METRICS  # noqa: E402

IMAGENET_MEAN, IMAGENET_STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]   # RGB, 0-255
GAZE_LOSSES = ('l1', 'mse')


class GazeEstimator(BaseModel):
    """`FullFaceGaze` (attn_plugins.models.gaze) as a mmengine model, registered as 'GazeEstimator'.

    Args:
        loss: 'l1' (the paper's) or 'mse', on (pitch, yaw) in radians; logged as `loss_gaze`.
        data_preprocessor: default ImgDataPreprocessor with ImageNet's RGB mean/std (0-255 input).
        **model_kwargs: FullFaceGaze's options (backbone, input_size, pool, fc_channels, ...).

    forward(inputs, data_samples, mode): inputs (B, 3, H, W) normalised faces; data_samples dicts
    with 'gaze' (2,) (MPIIFaceGazeDataset's). 'loss' -> {'loss_gaze'}, 'predict' -> the data
    samples with 'pred_gaze' (2,) added, 'tensor' -> (B, 2). The network is `self.net`; its
    `spatial_weights` block is a plain submodule (`net.spatial_weights`) for forward hooks.
    """

    def __init__(self, loss: str = 'l1', data_preprocessor: dict | None = None, init_cfg: dict | None = None,
                 **model_kwargs):
        from ..models.gaze import FullFaceGaze
        from ..registry import did_you_mean
        if data_preprocessor is None:
            data_preprocessor = dict(type='ImgDataPreprocessor', mean=IMAGENET_MEAN, std=IMAGENET_STD)
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if loss not in GAZE_LOSSES:
            raise ConfigError(f"model.loss: expected one of {GAZE_LOSSES}, got {loss!r}{did_you_mean(loss, GAZE_LOSSES)}")
        options = [p for p in inspect.signature(FullFaceGaze.__init__).parameters if p != 'self']
        for key in model_kwargs:
            if key not in options:
                raise ConfigError(f"model.{key}: unknown option for GazeEstimator{did_you_mean(key, options)} "
                                  f"Options: loss, data_preprocessor, init_cfg, {', '.join(options)}")
        self.loss_name = loss
        self.net = FullFaceGaze(**model_kwargs)

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        import torch
        import torch.nn.functional as F
        if isinstance(inputs, (list, tuple)):
            inputs = torch.stack(list(inputs))
        pred = self.net(inputs)
        if mode == 'tensor':
            return pred
        data_samples = _per_sample(data_samples, len(pred))
        if mode == 'loss':
            if not data_samples or any(not isinstance(s, dict) or 'gaze' not in s for s in data_samples):
                raise ValueError("GazeEstimator: mode='loss' needs data_samples with a 'gaze' (pitch, yaw) each")
            target = torch.stack([torch.as_tensor(s['gaze']) for s in data_samples]).to(pred)
            loss = F.l1_loss(pred, target) if self.loss_name == 'l1' else F.mse_loss(pred, target)
            return dict(loss_gaze=loss)
        if mode == 'predict':
            samples = data_samples if data_samples is not None else [{} for _ in range(len(pred))]
            return [dict(sample, pred_gaze=p.detach()) for sample, p in zip(samples, pred)]
        raise ValueError(f"GazeEstimator.forward: mode {mode!r}: expected 'loss', 'predict' or 'tensor'")


def _per_sample(data_samples, batch_size: int):
    """A list of per-sample dicts: mmengine's collate functions turn the dataset's per-sample
    dicts into one dict of lists (pseudo_collate) or of stacked tensors (default_collate)."""
    if isinstance(data_samples, dict):
        return [{key: value[i] for key, value in data_samples.items()} for i in range(batch_size)]
    return data_samples


class MPIIFaceGazeDataset:
    """An MPIIFaceGaze HDF5 file (`attn_plugins.datasets.mpiifacegaze`) for the Runner, registered
    as 'MPIIFaceGazeDataset'; one leave-one-person-out fold.

    Args:
        data_file: the HDF5 file (pXX/image, pXX/gaze, pXX/pose).
        test_person: the person left out (the paper: each of p00 ... p14 in turn).
        split: 'train' (every other person), 'test' (test_person) or 'all' (every person; no
            test_person: giving one is an error). Persons are the file's pNN groups (others ignored).
        persons: an explicit list of persons instead of test_person/split.
        img_size: resize faces to img_size x img_size (antialiased bilinear) when stored otherwise.
        channel_order: 'rgb' (default; the file's BGR reversed) or 'bgr'.

    Item: dict(inputs=(3, S, S) uint8 tensor, data_samples=dict(gaze, pose, person, index)).
    """

    def __init__(self, data_file: str, test_person: str | None = None, split: str = 'all', persons=None,
                 img_size: int | None = None, channel_order: str = 'rgb'):
        from ..datasets.mpiifacegaze import MPIIFaceGaze
        if img_size is not None and (not isinstance(img_size, int) or isinstance(img_size, bool) or img_size < 1):
            raise ConfigError(f"dataset.img_size: expected a positive int or null, got {img_size!r}")
        self.reader = MPIIFaceGaze(data_file, persons=persons, test_person=test_person, split=split,
                                   channel_order=channel_order)
        self.img_size = img_size
        self.metainfo = dict(dataset='MPIIFaceGaze', persons=list(self.reader.persons), test_person=test_person,
                             split=split)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, index: int) -> dict:
        import torch
        import torch.nn.functional as F
        item = self.reader[index]
        image = item['image']
        if self.img_size is not None and tuple(image.shape[-2:]) != (self.img_size, self.img_size):
            resized = F.interpolate(image[None].float(), size=(self.img_size, self.img_size), mode='bilinear',
                                    align_corners=False, antialias=True)[0]
            image = resized.round().clamp(0, 255).to(torch.uint8)
        return dict(inputs=image, data_samples={k: item[k] for k in ('gaze', 'pose', 'person', 'index')})


class MeanAngularError(BaseMetric):
    """Mean angle in degrees between predicted and true 3D gaze vectors (from (pitch, yaw) with
    MPIIFaceGaze's convention, `attn_plugins.models.gaze.gaze_vector`), registered as
    'MeanAngularError'. Reads 'pred_gaze' and 'gaze' of each predicted sample.
    Metrics: 'mean_angular_error' (and 'angular_error/<person>' when samples name persons)."""

    def process(self, data_batch, data_samples) -> None:
        import numpy as np
        for sample in data_samples:
            if 'pred_gaze' not in sample or 'gaze' not in sample:
                raise ValueError("MeanAngularError: each predicted sample needs 'pred_gaze' and 'gaze' "
                                 f"(pitch, yaw); got keys {sorted(sample)}")
            pred, true = (np.asarray(_to_numpy(sample[key]), np.float64) for key in ('pred_gaze', 'gaze'))
            if pred.shape != (2,) or true.shape != (2,):
                raise ValueError(f"MeanAngularError: 'pred_gaze' and 'gaze' must be (pitch, yaw) of shape (2,) each; "
                                 f"got {pred.shape} and {true.shape}")
            self.results.append((pred, true, sample.get('person')))

    def compute_metrics(self, results: list) -> dict:
        import numpy as np
        import torch

        from ..models.gaze import angular_error
        pred = torch.from_numpy(np.stack([r[0] for r in results]).reshape(-1, 2))
        true = torch.from_numpy(np.stack([r[1] for r in results]).reshape(-1, 2))
        errors = angular_error(pred, true)
        metrics = {'mean_angular_error': float(errors.mean())}
        persons = [r[2] for r in results]
        if all(isinstance(p, str) for p in persons):
            for person in sorted(set(persons)):
                mask = torch.tensor([p == person for p in persons])
                metrics[f'angular_error/{person}'] = float(errors[mask].mean())
        return metrics


def _to_numpy(value):
    return value.detach().cpu().numpy() if hasattr(value, 'detach') else value


def register_gaze() -> None:
    """Register the gaze model, dataset and metric into mmengine's root registries (idempotent)."""
    for registry in (MODELS, scoped_registry()):
        register_once(registry, 'GazeEstimator', GazeEstimator)
    register_once(DATASETS, 'MPIIFaceGazeDataset', MPIIFaceGazeDataset)
    register_once(METRICS, 'MeanAngularError', MeanAngularError)


# ---------------------------------------------------------------------------------------------
# Learn to Pay Attention (Jetley et al. 2018) on CIFAR: classifier, dataset, transforms, metric.
# ---------------------------------------------------------------------------------------------
from mmengine.dataset import BaseDataset  # noqa: E402
from mmengine.evaluator import BaseMetric  # noqa: E402
from mmengine.model import BaseModel  # noqa: E402
from mmengine.registry import DATASETS, METRICS, TRANSFORMS  # noqa: E402

CLASSIFIER_BACKBONES = ('PayAttentionVGG', 'VGGBNDrop')


class AttentionClassifier(BaseModel):
    """An image classifier around a whole paper model (`PayAttentionVGG`: VGG-att3 of Learn to Pay
    Attention, or its baseline `VGGBNDrop`), registered as 'AttentionClassifier'.

    Args:
        backbone: the network's config, `type` one of CLASSIFIER_BACKBONES plus its options
            (num_classes, aggregation, compatibility, width_multiplier, ...).
        data_preprocessor: e.g. ImgDataPreprocessor with the dataset's RGB mean/std (0-255 input).

    forward(inputs, data_samples, mode): inputs (B, 3, H, W); data_samples BaseDataElements with
    `gt_label` (PackClassificationInputs'). 'loss' -> {'loss_cls': cross-entropy}; 'predict' -> per
    image a copy of its data sample with `pred_score` (softmax), `pred_label` and, for a model with
    attention, `attention_maps` (one (1, H_s, W_s) map per attended layer: 32, 16 and 8 on CIFAR);
    'tensor' -> logits. The network is
    `self.backbone`; its attention blocks stay plain submodules (`backbone.attention.<i>`) for hooks.
    """

    def __init__(self, backbone: dict, data_preprocessor: dict | None = None, init_cfg: dict | None = None):
        from ..registry import did_you_mean
        super().__init__(data_preprocessor=data_preprocessor, init_cfg=init_cfg)
        if not isinstance(backbone, dict) or 'type' not in backbone:
            raise ConfigError(f"model.backbone: expected a dict with 'type' (one of {CLASSIFIER_BACKBONES})")
        options = dict(backbone)
        kind = options.pop('type')
        if kind not in CLASSIFIER_BACKBONES:
            raise ConfigError(f"model.backbone.type: expected one of {CLASSIFIER_BACKBONES}, got {kind!r}"
                              f"{did_you_mean(str(kind), CLASSIFIER_BACKBONES)}")
        from .. import models
        cls = getattr(models, kind)
        known = [p for p in inspect.signature(cls.__init__).parameters if p not in ('self', 'kwargs')]
        for key in options:
            if key not in known:
                raise ConfigError(f"model.backbone.{key}: unknown option for {kind}{did_you_mean(key, known)} "
                                  f"Options: {', '.join(known)}")
        try:
            self.backbone = cls(**options)
        except ValueError as err:       # a bad option value (aggregation, compatibility, ...): name the key
            raise ConfigError(f"model.backbone ({kind}): {err}") from None

    def forward(self, inputs, data_samples=None, mode: str = 'tensor'):
        import torch
        import torch.nn.functional as F
        if isinstance(inputs, (list, tuple)):
            inputs = torch.stack(list(inputs))
        if mode == 'tensor':
            return self.backbone(inputs)
        if mode == 'loss':
            if not data_samples or any('gt_label' not in s for s in data_samples):
                raise ValueError("AttentionClassifier: mode='loss' needs data_samples with a gt_label each")
            labels = torch.as_tensor([int(s.gt_label) for s in data_samples], device=inputs.device)
            return dict(loss_cls=F.cross_entropy(self.backbone(inputs), labels))
        if mode == 'predict':
            maps = []
            if hasattr(self.backbone, 'forward_attention'):
                vectors, maps = self.backbone.forward_attention(inputs)
                logits = self.backbone.forward_head(torch.cat(vectors, 1)[:, :, None, None])
            else:
                logits = self.backbone(inputs)
            scores = logits.detach().float().softmax(1)
            from mmengine.structures import BaseDataElement
            samples = data_samples if data_samples is not None else [BaseDataElement() for _ in scores]
            results = []
            for i, (sample, score) in enumerate(zip(samples, scores)):
                result = sample.clone()
                result.set_data(dict(pred_score=score, pred_label=int(score.argmax())))
                if maps:
                    result.attention_maps = [m[i].detach() for m in maps]
                results.append(result)
            return results
        raise ValueError(f"AttentionClassifier.forward: mode {mode!r}: expected 'loss', 'predict' or 'tensor'")


class CifarDataset(BaseDataset):
    """CIFAR-10 / CIFAR-100 in the original python format (`attn_plugins.datasets.cifar`, read with a
    restricted unpickler), registered as 'CifarDataset'.

    Args:
        data_root: the folder holding cifar-10-batches-py / cifar-100-python (or that folder).
        dataset: 'cifar10' or 'cifar100'.  split: 'train' or 'test'.
        label_type: CIFAR-100 'fine' (100 classes) or 'coarse' (20); CIFAR-10 'fine' only.
        pipeline: transforms (e.g. RandomCropWithPadding, RandomHorizontalFlip, PackClassificationInputs).
        indices: use only the first N images (int) or these indices (BaseDataset's).

    Before the pipeline an item is dict(img=(32, 32, 3) uint8 RGB, gt_label, image_index, sample_idx);
    metainfo['classes'] are the names from the meta file.
    """
    METAINFO: dict = dict(classes=())
    channel_order = 'rgb'       # of 'img' (OpenMMLab's image loading gives BGR): `attn-plugins viz` shows it as is

    def __init__(self, data_root: str, dataset: str = 'cifar10', split: str = 'train', label_type: str = 'fine',
                 pipeline=(), indices=None, test_mode: bool = False, lazy_init: bool = False, max_refetch: int = 1000):
        from ..datasets.cifar import LAYOUTS, SPLITS
        if dataset not in LAYOUTS:
            raise ConfigError(f"CifarDataset.dataset: expected one of {sorted(LAYOUTS)}, got {dataset!r}")
        if split not in SPLITS:
            raise ConfigError(f"CifarDataset.split: expected one of {list(SPLITS)}, got {split!r}")
        if label_type not in LAYOUTS[dataset]['labels']:
            raise ConfigError(f"CifarDataset.label_type: {dataset} has {sorted(LAYOUTS[dataset]['labels'])} labels, "
                              f"got {label_type!r}")
        self.dataset, self.split, self.label_type = dataset, split, label_type
        self._images = None
        super().__init__(data_root=data_root, pipeline=list(pipeline), indices=indices, test_mode=test_mode,
                         lazy_init=lazy_init, max_refetch=max_refetch, serialize_data=False)

    def load_data_list(self) -> list:
        from ..datasets.cifar import read_cifar
        split = read_cifar(self.data_root, self.dataset, self.split, self.label_type)
        self._images = split.images
        self._metainfo['classes'] = split.classes
        return [dict(image_index=i, gt_label=int(label)) for i, label in enumerate(split.labels)]

    def get_data_info(self, idx: int) -> dict:
        info = super().get_data_info(idx)
        info['img'] = self._images[info['image_index']]
        return info

    @staticmethod
    def image_item(path: str) -> dict:
        """An image file as an item of this dataset, before the pipeline (`attn-plugins viz --image`):
        RGB, turned upright by its EXIF orientation (as mmcv's loader), resized to CIFAR's 32x32 (PIL
        bilinear), no label."""
        import numpy as np
        from PIL import Image, ImageOps

        from ..datasets.cifar import IMAGE_SIZE
        with Image.open(path) as image:
            rgb = ImageOps.exif_transpose(image).convert('RGB').resize((IMAGE_SIZE, IMAGE_SIZE), Image.BILINEAR)
        return dict(img=np.array(rgb, dtype=np.uint8), img_path=path)     # a writable copy


class RandomCropWithPadding:
    """Pad an 'img' (H, W, C) by `padding` pixels of `fill` on every side, then crop a random
    `size` x `size` window (the standard CIFAR augmentation: size 32, padding 4, zero fill).
    Registered as 'RandomCropWithPadding'. Draws from torch's RNG (seeded by the Runner's
    `randomness`, stored in checkpoints by SafeCheckpointHook)."""

    def __init__(self, size: int = 32, padding: int = 4, fill: int = 0):
        if not isinstance(size, int) or size <= 0 or not isinstance(padding, int) or padding < 0:
            raise ConfigError(f"RandomCropWithPadding: size must be a positive int and padding a non-negative int, "
                              f"got size={size!r}, padding={padding!r}")
        self.size, self.padding, self.fill = size, padding, fill

    def __call__(self, results: dict) -> dict:
        import numpy as np
        img = results['img']
        pad = self.padding
        padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), constant_values=self.fill)
        height, width = padded.shape[:2]
        if height < self.size or width < self.size:
            raise ValueError(f"RandomCropWithPadding: padded image {height}x{width} is smaller than {self.size}")
        import torch
        top = int(torch.randint(height - self.size + 1, ()))
        left = int(torch.randint(width - self.size + 1, ()))
        results['img'] = np.ascontiguousarray(padded[top:top + self.size, left:left + self.size])
        return results

    def __repr__(self) -> str:
        return f"RandomCropWithPadding(size={self.size}, padding={self.padding}, fill={self.fill})"


class RandomHorizontalFlip:
    """Mirror 'img' (H, W, C) left-right with probability `prob` (torch's RNG, as
    RandomCropWithPadding); registered as 'RandomHorizontalFlip'."""

    def __init__(self, prob: float = 0.5):
        if not isinstance(prob, (int, float)) or not 0 <= prob <= 1:
            raise ConfigError(f"RandomHorizontalFlip.prob: expected a probability in [0, 1], got {prob!r}")
        self.prob = prob

    def __call__(self, results: dict) -> dict:
        import numpy as np
        import torch
        if float(torch.rand(())) < self.prob:
            results['img'] = np.ascontiguousarray(results['img'][:, ::-1])
        return results

    def __repr__(self) -> str:
        return f"RandomHorizontalFlip(prob={self.prob})"


class PackClassificationInputs:
    """dict(img (H, W, C) uint8, gt_label, ...) -> dict(inputs=(C, H, W) uint8 tensor,
    data_samples=BaseDataElement(gt_label, metainfo sample_idx)) for ImgDataPreprocessor and
    AttentionClassifier; registered as 'PackClassificationInputs'. An unlabelled image (viz) has no
    gt_label field."""

    def __call__(self, results: dict) -> dict:
        import torch
        from mmengine.structures import BaseDataElement
        img = torch.from_numpy(results['img']).permute(2, 0, 1).contiguous()
        label = {} if results.get('gt_label') is None else dict(gt_label=int(results['gt_label']))
        sample = BaseDataElement(metainfo=dict(sample_idx=results.get('sample_idx')), **label)
        return dict(inputs=img, data_samples=sample)

    def __repr__(self) -> str:
        return "PackClassificationInputs()"


class TopKAccuracy(BaseMetric):
    """Top-k accuracy and top-1 error in percent (the paper's measure), registered as 'TopKAccuracy'.
    An image counts as a top-k hit when its 'gt_label' is among the k highest 'pred_score' entries
    (torch.topk), top-1 when it is 'pred_label' (argmax). Metrics: top1_error, top{k}_acc per k."""
    default_prefix = None

    def __init__(self, topk=(1, 5), collect_device: str = 'cpu', prefix: str | None = None):
        super().__init__(collect_device=collect_device, prefix=prefix)
        topk = (topk,) if isinstance(topk, int) else tuple(topk)
        if not topk or any(not isinstance(k, int) or isinstance(k, bool) or k < 1 for k in topk):
            raise ConfigError(f"TopKAccuracy.topk: expected positive ints, got {topk!r}")
        self.topk = tuple(sorted(set(topk) | {1}))

    def process(self, data_batch, data_samples) -> None:
        import torch
        from mmengine.structures import BaseDataElement
        for sample in data_samples:
            if isinstance(sample, BaseDataElement):
                sample = sample.to_dict()
            if not isinstance(sample, dict) or not {'pred_score', 'gt_label'} <= set(sample):
                raise ValueError("TopKAccuracy: each prediction needs 'pred_score' and 'gt_label' "
                                 f"(AttentionClassifier's predict output); got {type(sample).__name__}")
            score = torch.as_tensor(sample['pred_score']).detach().cpu().flatten()
            label = int(sample['gt_label'])
            if max(self.topk) > score.numel():
                raise ValueError(f"TopKAccuracy: topk={max(self.topk)} but the scores have {score.numel()} classes")
            top = score.topk(max(self.topk)).indices.tolist()
            pred = int(sample.get('pred_label', score.argmax()))
            self.results.append(tuple([pred == label] + [label in top[:k] for k in self.topk[1:]]))

    def compute_metrics(self, results: list) -> dict:
        if not results:
            raise ValueError("TopKAccuracy: no predictions to evaluate")
        hits = [100.0 * sum(r[i] for r in results) / len(results) for i in range(len(self.topk))]
        metrics = {'top1_error': 100.0 - hits[0]}
        metrics.update({f'top{k}_acc': h for k, h in zip(self.topk, hits)})
        return metrics


def register_ltpa() -> None:
    """Register the CIFAR classifier, its backbones, dataset, transforms and metric (idempotent)."""
    from ..models import PayAttentionVGG, VGGBNDrop
    for registry in (MODELS, scoped_registry()):
        register_once(registry, 'AttentionClassifier', AttentionClassifier)
        register_once(registry, 'PayAttentionVGG', PayAttentionVGG)
        register_once(registry, 'VGGBNDrop', VGGBNDrop)
    register_once(DATASETS, 'CifarDataset', CifarDataset)
    for transform in (RandomCropWithPadding, RandomHorizontalFlip, PackClassificationInputs):
        register_once(TRANSFORMS, transform.__name__, transform)
    register_once(METRICS, 'TopKAccuracy', TopKAccuracy)
