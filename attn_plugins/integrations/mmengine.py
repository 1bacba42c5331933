"""Register the blocks into mmengine's MODELS, so OpenMMLab configs can build them.

Each block is registered twice: in the root `MODELS` under its plain name (so a mmdet or mmseg
config finds `type='CBAM'` through the registry's parent chain) and in a child registry with
scope 'attn_plugins' (so `type='attn_plugins.CBAM'` works from any scope). The registered
classes are thin subclasses that also accept OpenMMLab's `in_channels=` keyword (the plugin
builder of mmdet's/mmseg's ResNet passes it) and carry an `_abbr_` for layer names.
Blocks keep their own init through a host's `init_weights()`: see `restore_blocks_on_init`
(run by every `attn_plugins.inject`, hence `InjectAttention`, once this module is registered).
Also registered: the `InjectAttention` builder and `TimmBackbone` (MODELS), the
`SafeCheckpointHook`, `ProgressHook` and `AuxiliaryLossHook` (HOOKS), and
`CPUDistributedDataParallel` (MODEL_WRAPPERS).
"""
from __future__ import annotations

import inspect
import time

from mmengine.hooks import Hook
from mmengine.model import BaseModule, MMDistributedDataParallel
from mmengine.registry import HOOKS, MODEL_WRAPPERS, MODELS, Registry

from ..checkpoint import from_safe, rng_state, set_rng_state, to_safe
from ..modules import HostInit, reset_attention_blocks
from ..registry import BLOCKS, SCOPE, ConfigError, snake_name

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
    Serves backbones without a `plugins` argument (BasicBlock ResNets, ResNeXt, Swin, ...)."""
    from ..injector import inject
    if not isinstance(module, dict) or 'type' not in module:
        raise ConfigError("InjectAttention.module: expected a dict with 'type' (the model to build)")
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
            set_rng_state(self._rng_state)
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
    for hook in (SafeCheckpointHook, ProgressHook, AuxiliaryLossHook):
        register_once(HOOKS, hook.__name__, hook)
    register_once(MODEL_WRAPPERS, CPUDistributedDataParallel.__name__, CPUDistributedDataParallel)
