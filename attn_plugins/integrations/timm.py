"""timm integration: blocks as `attn_layer` values, `create_model` with injection, and model
entrypoints for the paper models (registered when timm is imported after `import attn_plugins`,
at once if it already is). Each entrypoint takes timm's model options, its block's options,
`plugins=[...]` and `features_only`; the blocks are torch.fx leaves in timm's tracer.

Entrypoints (all start with 'ap_' so they never shadow timm's own names):
    ap_seresnet50            SE (r=16, paper rounding, biases) in every bottleneck
    ap_cbam_resnet50         CBAM (authors' layout) in every bottleneck
    ap_danet_resnet50d8      dilated ResNet-50-C (output stride 8) + DualAttention after layer4
    ap_nonlocal_resnet50     5 embedded-gaussian non-local blocks: every other block of res3/res4
    ap_gaze_resnet50         full-face gaze: spatial weights after layer4, 2 outputs (yaw, pitch)
    ap_vgg16_att3_{concat,indep}_{pc,dp}   Learn to Pay Attention VGG-16
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from typing import Any, Mapping, Sequence

import timm
import torch
from timm.models import build_model_with_cfg, register_model
from timm.models.resnet import BasicBlock, Bottleneck, ResNet

from ..injector import NATIVE_SLOTS, inject
from ..modules import HostInit, reset_attention_blocks
from ..registry import BLOCKS, ConfigError, block_options, check_options, did_you_mean, get_block

NO_NETWORK = "attn_plugins: pretrained=True would download weights; load a local checkpoint instead"


def attn_layer(spec: str | Mapping[str, Any]):
    """A timm `attn_layer` value from a block name or dict(type=..., **options)."""
    if isinstance(spec, str):
        return get_block(spec, 'attn_layer')
    if isinstance(spec, Mapping):
        options = dict(spec)
        cls = get_block(options.pop('type', None), 'attn_layer.type')
        check_options(cls, options, 'attn_layer')
        return functools.partial(cls, **options)
    return spec


def _resolve_block_args(kwargs: dict) -> dict:
    block_args = kwargs.get('block_args')
    if isinstance(block_args, Mapping) and 'attn_layer' in block_args:
        layer = block_args['attn_layer']
        plain = layer.split('.')[-1] if isinstance(layer, str) else None
        if isinstance(layer, Mapping) or (plain in BLOCKS):
            kwargs = {**kwargs, 'block_args': {**block_args, 'attn_layer': attn_layer(layer)}}
    return kwargs


def create_model(name: str, plugins: Sequence[Mapping[str, Any]] | None = None, example_input=None,
                 **timm_kwargs) -> Any:
    """`timm.create_model(name, **timm_kwargs)`, then `inject(model, plugins)`.

    `block_args.attn_layer` may name a block ('CBAM') or be dict(type='CBAM', reduction=8).
    Works with `features_only=True`: module paths are those of the full model.
    Blocks keep their own init: timm's model init (e.g. ResNet's kaiming on every conv) is undone
    for them before `checkpoint_path` (timm's keyword) is loaded.
    """
    if timm_kwargs.get('pretrained'):
        raise ConfigError(NO_NETWORK)
    checkpoint_path = timm_kwargs.pop('checkpoint_path', None)
    try:
        model = timm.create_model(name, **_resolve_block_args(timm_kwargs))
    except RuntimeError as err:
        if 'Unknown model' in str(err):
            from ..registry import did_you_mean
            raise ConfigError(f"model.type: unknown timm model {name!r}"
                              f"{did_you_mean(name, timm.list_models())}") from err
        raise
    reset_attention_blocks(model)
    if checkpoint_path:
        timm.models.load_checkpoint(model, checkpoint_path)
    if plugins:
        inject(model, plugins, example_input=example_input)
    return model


class TimmBackbone(torch.nn.Module):
    """Any timm model as an OpenMMLab backbone (registered in mmengine's MODELS), as mmpretrain's
    TIMMBackbone, plus attention injection: a `features_only` model returning a tuple of maps.

    Args:
        model_name: timm model name (ours included, e.g. 'ap_cbam_resnet50').
        out_indices: feature levels to return.
        plugins: injector specs (paths as in the features model, see its attn_plugins_report).
        checkpoint: optional local weights file of the timm model, e.g. saved from
            `timm.create_model(model_name).state_dict()` (timm's loader, weights_only=True; the
            features model's renamed keys are mapped back). Only plugin weights may be missing
            (they keep their init); the classifier's and other unused weights are reported.
        **timm_kwargs: passed to timm.create_model (never `pretrained=True`: no downloads).

    `init_weights()` (called by a mmengine host after its `init_cfg`) gives the blocks their own
    init back, then reloads `checkpoint`.
    """

    def __init__(self, model_name: str, out_indices: Sequence[int] = (0, 1, 2, 3),
                 plugins: Sequence[Mapping[str, Any]] | None = None, checkpoint: str | None = None,
                 in_channels: int = 3, **timm_kwargs):
        super().__init__()
        self.model_name, self.checkpoint = model_name, checkpoint
        # the plain timm model's arguments (its key names check a checkpoint)
        self._plain_kwargs = {k: v for k, v in timm_kwargs.items() if k not in ('feature_cls', 'checkpoint_path')}
        self._plain_kwargs['in_chans'] = in_channels
        self.timm_model = create_model(model_name, plugins=plugins, features_only=True,
                                       out_indices=tuple(out_indices), in_chans=in_channels, **timm_kwargs)
        self.checkpoint_report: dict[str, list[str]] = {}
        if checkpoint:
            self.load_timm_checkpoint(checkpoint)
        self.out_channels = self.timm_model.feature_info.channels()

    def load_timm_checkpoint(self, path: str) -> dict[str, list[str]]:
        """Load a checkpoint of the plain timm model (or of this features model). Returns and keeps
        in `checkpoint_report`: 'missing' (plugin weights, left as they are) and 'unused'
        (checkpoint weights the features model has no place for: classifier, later stages)."""
        from timm.models import load_state_dict

        from ..checkpoint import allow_mmengine_checkpoints, rename_slot_keys
        allow_mmengine_checkpoints()
        try:
            state = load_state_dict(path, weights_only=True)
        except FileNotFoundError:
            raise ConfigError(f"backbone.checkpoint: no such file {path!r}") from None
        state = rename_slot_keys(state, self.timm_model)     # saved when slot blocks sat under their norm
        plugin_prefixes = tuple(f'{name}.' for name, module in self.timm_model.named_modules()
                                if name and isinstance(module, HostInit))
        sources, missing = {}, []
        for key, value in self.timm_model.state_dict().items():
            source = next((name for name in _checkpoint_names(key) if name in state), None)
            if source is None:
                missing.append(key)
            elif tuple(state[source].shape) != tuple(value.shape):
                raise ConfigError(f"backbone.checkpoint: {source!r} in {path} has shape {tuple(state[source].shape)}, "
                                  f"{self.model_name} needs {tuple(value.shape)} for {key!r}")
            else:
                sources[key] = source
        lacking = [k for k in missing if not k.startswith(plugin_prefixes) and not k.endswith('num_batches_tracked')]
        used = set(sources.values())
        # unused keys must still belong to the plain model (its classifier, stages after the last output)
        with torch.device('meta'):
            plain_keys = set(create_model(self.model_name, **self._plain_kwargs).state_dict())
        foreign = [k for k in state if k not in used and k not in plain_keys]
        if lacking or foreign:
            raise ConfigError(f"backbone.checkpoint: {path} is not a checkpoint of {self.model_name}: "
                              f"{len(lacking)} of its weights are missing {lacking[:3]}, "
                              f"{len(foreign)} weights belong to another model {foreign[:3]}")
        self.timm_model.load_state_dict({key: state[source] for key, source in sources.items()}, strict=False)
        self.checkpoint_report = dict(missing=[k for k in missing if k.startswith(plugin_prefixes)],
                                      unused=[k for k in state if k not in used])
        _log(f"TimmBackbone: loaded {path} into {self.model_name}: "
             f"{len(self.checkpoint_report['missing'])} plugin weights keep their init "
             f"{self.checkpoint_report['missing'][:3]}; {len(self.checkpoint_report['unused'])} checkpoint "
             f"weights unused (classifier, stages after the last output) {self.checkpoint_report['unused'][:3]}")
        return self.checkpoint_report

    def init_weights(self) -> None:
        """mmengine hook (after the host's init_cfg): the blocks' own init, then `checkpoint`."""
        reset_attention_blocks(self)
        if self.checkpoint:
            self.load_timm_checkpoint(self.checkpoint)

    def forward(self, x):
        return tuple(self.timm_model(x))


def _checkpoint_names(key: str):
    """Names a features-model key may have in a plain timm checkpoint: itself; without the 'model.'
    prefix of timm's FeatureGetterNet; with a first segment flattened by timm's features wrappers
    ('stages_0' for 'stages.0') split back at one of its underscores."""
    yield key
    if key.startswith('model.'):
        yield key[len('model.'):]
    head, dot, rest = key.partition('.')
    for i, char in enumerate(head):
        if char == '_':
            yield f'{head[:i]}.{head[i + 1:]}{dot}{rest}'


def _log(message: str) -> None:
    """To mmengine's current logger (the runner's log) when mmengine is there."""
    try:
        from mmengine.logging import print_log
    except ImportError:
        import logging
        logging.getLogger(__name__).info(message)
        return
    print_log(message, logger='current')


# ---------------------------------------------------------------- paper models
class UnknownOptionError(ConfigError, TypeError):
    """An unknown keyword for an `ap_*` entrypoint: a ConfigError, and the TypeError that timm (and
    Python) raise for an unexpected keyword argument."""


# keywords of timm's model factory (`build_model_with_cfg` and its features wrapper)
_FACTORY_KEYS = ('pretrained_cfg', 'pretrained_cfg_overlay', 'cache_dir', 'feature_cfg', 'pretrained_strict',
                 'kwargs_filter', 'features_only', 'out_indices', 'feature_cls', 'pruned')
# timm.create_model's own keywords (handled before the entrypoint), for did-you-mean only
_CREATE_KEYS = ('pretrained', 'checkpoint_path', 'scriptable', 'exportable', 'no_jit')


def _arguments(fn) -> list[str]:
    return [p for p in inspect.signature(fn).parameters if p not in ('self', 'args', 'kwargs')]


def _split_options(variant: str, kwargs: dict, host_keys, block_cls: type | None) -> tuple[dict, dict]:
    """(host kwargs, block options) from an entrypoint's kwargs. A name both take (`act_layer`,
    `device`, `dtype`) goes to the host; `attn_cfg=dict(...)` sets block options explicitly."""
    block_keys = [k for k in block_options(block_cls) if k not in host_keys] if block_cls else []
    host, block = {}, dict(kwargs.pop('attn_cfg', None) or {})
    for key, value in kwargs.items():
        if key in host_keys:
            host[key] = value
        elif key in block_keys:
            block[key] = value
        else:
            known = sorted({*host_keys, *block_keys, *_FACTORY_KEYS, *_CREATE_KEYS, 'plugins',
                            *(['attn_cfg'] if block_cls else [])})
            blocks = f" and its {block_cls.__name__} options ({', '.join(block_keys)})" if block_keys else ''
            raise UnknownOptionError(f"{variant}: unknown option {key!r}{did_you_mean(key, known) or '.'} "
                                     f"It takes the host model's options{blocks}, plugins=[...] and timm's "
                                     "factory options (features_only, out_indices, ...)")
    if block_cls is not None:
        check_options(block_cls, block, f'{variant}.attn_cfg')
    return host, block


def _no_pretrained(pretrained: bool) -> None:
    if pretrained:
        raise ConfigError(NO_NETWORK)


def _with_plugins(build):
    """A timm `model_cls` that builds the model, gives its blocks their own init back (the host's
    init covers them too) and injects `plugins`: before timm's features wrapper, so plugin paths
    are those of the full model."""
    def model_cls(plugins=None, device=None, dtype=None, **kwargs):
        model = build(device=device, dtype=dtype, **kwargs)
        reset_attention_blocks(model)
        if plugins:
            inject(model, plugins, example_input=None)
        return model
    return model_cls


_build_resnet = _with_plugins(ResNet)
_RESNET_KEYS = frozenset(_arguments(ResNet.__init__)) | frozenset(_FACTORY_KEYS)


def _ap_resnet(variant: str, pretrained: bool, kwargs: dict, arch: dict, block: str, attn_layer: bool = False,
               specs: Sequence[dict] = ()):
    """A ResNet entrypoint. `block`'s options (e.g. reduction=8) go to the block: timm's
    `attn_layer` in every bottleneck (`attn_layer=True`) or each injected spec in `specs`.
    `plugins=[...]` adds injector specs after the model's own blocks."""
    _no_pretrained(pretrained)
    plugins = list(kwargs.pop('plugins', None) or [])
    host, options = _split_options(variant, kwargs, _RESNET_KEYS, BLOCKS[block])
    args = {**arch, **host}
    if attn_layer:
        layer = functools.partial(BLOCKS[block], **options) if options else BLOCKS[block]
        args['block_args'] = {'attn_layer': layer, **(host.get('block_args') or {})}
    specs = [{**spec, **options} for spec in specs]
    return build_model_with_cfg(_build_resnet, variant, False, plugins=specs + plugins or None, **args)


def _build_vgg(device=None, dtype=None, **kwargs):
    from ..models import PayAttentionVGG
    with torch.device(device) if device is not None else contextlib.nullcontext():
        model = PayAttentionVGG(**kwargs)
    return model.to(dtype=dtype) if dtype is not None else model


_build_vgg_with_plugins = _with_plugins(_build_vgg)


def _ap_vgg_att3(variant: str, pretrained: bool, kwargs: dict, aggregation: str, compatibility: str):
    from ..models import PayAttentionVGG
    _no_pretrained(pretrained)
    plugins = kwargs.pop('plugins', None)
    for fixed in ('aggregation', 'compatibility'):
        if fixed in kwargs:
            raise UnknownOptionError(f"{variant}: {fixed} is set by the model name (ap_vgg16_att3_<aggregation>_"
                                     "<compatibility>, e.g. ap_vgg16_att3_indep_dp)")
    keys = frozenset(_arguments(PayAttentionVGG.__init__)) | {'device', 'dtype'} | frozenset(_FACTORY_KEYS)
    host, _ = _split_options(variant, kwargs, keys - {'aggregation', 'compatibility'}, None)
    feature_cfg = {'out_indices': (0, 1, 2, 3), 'flatten_sequential': True, **(host.pop('feature_cfg', None) or {})}
    return build_model_with_cfg(_build_vgg_with_plugins, variant, False, feature_cfg=feature_cfg, plugins=plugins,
                                aggregation=aggregation, compatibility=compatibility, **host)


R50 = dict(block=Bottleneck, layers=(3, 4, 6, 3))
default_cfgs: dict[str, dict] = {}   # read by timm's register_model


def register_fx_leaves() -> None:
    """Make every block a leaf of torch.fx tracing in timm (`timm.layers.register_notrace_module`,
    as timm does for its own layers with data-dependent control flow): timm's FX feature
    extraction and `features_only=True, feature_cls='fx'` keep each block as one call, so its
    run-time behaviour (chunked, memory-bounded attention; input checks) is kept in the graph."""
    from timm.layers import register_notrace_module
    for cls in BLOCKS.values():
        register_notrace_module(cls)


def register_slots() -> None:
    """timm's ResNet blocks run `self.se` (None without attention) right after their last norm:
    a block injected 'after:bn3' of a Bottleneck ('after:bn2' of a BasicBlock) goes there, as
    timm's own SE / CBAM do (`injector.NATIVE_SLOTS`); its path is then `layer1.0.se`."""
    NATIVE_SLOTS.setdefault(Bottleneck, {})['bn3'] = 'se'
    NATIVE_SLOTS.setdefault(BasicBlock, {})['bn2'] = 'se'


def register_models() -> None:
    """Register the entrypoints (idempotent: timm's registry keeps the first) and ResNet's block slots."""
    register_slots()        # first: where a block goes (its state-dict keys) must not hang on the rest
    register_fx_leaves()
    if 'ap_seresnet50' in timm.list_models('ap_*'):
        return
    from timm.models import _registry

    def reg(fn, **cfg):
        fn.__module__ = __name__
        default_cfgs.setdefault(fn.__name__, dict(dict(
            url='', num_classes=1000, input_size=(3, 224, 224), pool_size=(7, 7), crop_pct=0.875,
            interpolation='bilinear', mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225),
            first_conv='conv1', classifier='fc', license='apache-2.0'), **cfg))
        if fn.__name__ not in _registry._model_entrypoints:
            register_model(fn)
        return fn

    @reg
    def ap_seresnet50(pretrained=False, **kwargs):
        """SE-ResNet-50 as in the paper: r=16 without channel rounding, biased 1x1 convs. Takes SE's
        options (reduction=8, ...) and plugins=[...]."""
        return _ap_resnet('ap_seresnet50', pretrained, kwargs, R50, 'SE', attn_layer=True)

    @reg
    def ap_cbam_resnet50(pretrained=False, **kwargs):
        """ResNet-50 with CBAM (authors' layout) in every bottleneck, before the residual add. Takes
        CBAM's options (reduction=8, ...) and plugins=[...]."""
        return _ap_resnet('ap_cbam_resnet50', pretrained, kwargs, R50, 'CBAM', attn_layer=True)

    def ap_danet_resnet50d8(pretrained=False, **kwargs):
        """DANet trunk: ResNet-50-C, dilated to output stride 8, DualAttention after layer4. Takes
        DualAttention's options (reduction, qk_channels, chunk_elements) and plugins=[...]."""
        arch = dict(R50, stem_width=32, stem_type='deep', output_stride=8)
        return _ap_resnet('ap_danet_resnet50d8', pretrained, kwargs, arch, 'DualAttention',
                          specs=[dict(type='DualAttention', where='layer4')])
    reg(ap_danet_resnet50d8, pool_size=(28, 28), first_conv='conv1.0')   # output stride 8: 224 / 8; deep stem

    @reg
    def ap_nonlocal_resnet50(pretrained=False, **kwargs):
        """Non-local ResNet-50: 5 blocks, after every other residual block of res3 (2) and res4 (3).
        Takes NonLocal's options (mode, reduction, sub_sample, ...) and plugins=[...]."""
        specs = [dict(type='NonLocal', where='layer2.[1,3]', position='after'),
                 dict(type='NonLocal', where='layer3.[1,3,5]', position='after')]
        return _ap_resnet('ap_nonlocal_resnet50', pretrained, kwargs, R50, 'NonLocal', specs=specs)

    def ap_gaze_resnet50(pretrained=False, **kwargs):
        """Full-face gaze ResNet-50: spatial weights after layer4, regressing (yaw, pitch). Takes
        SpatialWeights' options (hidden_channels, init_bias) and plugins=[...]."""
        return _ap_resnet('ap_gaze_resnet50', pretrained, kwargs, R50, 'SpatialWeights',
                          specs=[dict(type='SpatialWeights', where='layer4')])
    reg(ap_gaze_resnet50, num_classes=2)

    for aggregation in ('concat', 'indep'):
        for compat in ('pc', 'dp'):
            name = f'ap_vgg16_att3_{aggregation}_{compat}'

            def entry(pretrained=False, _name=name, _a=aggregation, _c=compat, **kwargs):
                return _ap_vgg_att3(_name, pretrained, kwargs, _a, _c)
            entry.__name__ = entry.__qualname__ = name
            entry.__doc__ = (f"VGG-16 with Learn-to-Pay-Attention at layers 7/10/13 ({aggregation}, {compat}); "
                             "CIFAR-100 defaults (100 classes, 32x32) as in the paper. Takes PayAttentionVGG's "
                             "options (normalize, global_channels, drop_rate, ...) and plugins=[...].")
            classifier = 'head' if aggregation == 'concat' else ('head.0', 'head.1', 'head.2')
            reg(entry, num_classes=100, input_size=(3, 32, 32), pool_size=(1, 1), crop_pct=1.0,
                first_conv='stages.0.0', classifier=classifier)
