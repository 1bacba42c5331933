"""timm integration: blocks as `attn_layer` values, `create_model` with injection, and model
entrypoints for the paper models (registered on `import attn_plugins`).

Entrypoints (all start with 'ap_' so they never shadow timm's own names):
    ap_seresnet50            SE (r=16, paper rounding, biases) in every bottleneck
    ap_cbam_resnet50         CBAM (authors' layout) in every bottleneck
    ap_danet_resnet50d8      dilated ResNet-50-C (output stride 8) + DualAttention after layer4
    ap_nonlocal_resnet50     5 embedded-gaussian non-local blocks: every other block of res3/res4
    ap_gaze_resnet50         full-face gaze: spatial weights after layer4, 2 outputs (yaw, pitch)
    ap_vgg16_att3_{concat,indep}_{pc,dp}   Learn to Pay Attention VGG-16
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import timm
import torch
from timm.models import build_model_with_cfg, register_model
from timm.models.resnet import Bottleneck, ResNet

from ..injector import inject
from ..registry import BLOCKS, ConfigError, check_options, get_block

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
    """
    if timm_kwargs.get('pretrained'):
        raise ConfigError(NO_NETWORK)
    try:
        model = timm.create_model(name, **_resolve_block_args(timm_kwargs))
    except RuntimeError as err:
        if 'Unknown model' in str(err):
            from ..registry import did_you_mean
            raise ConfigError(f"model.type: unknown timm model {name!r}"
                              f"{did_you_mean(name, timm.list_models())}") from err
        raise
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
        checkpoint: optional local weights file for the timm model (loaded with weights_only=True).
        **timm_kwargs: passed to timm.create_model (never `pretrained=True`: no downloads).
    """

    def __init__(self, model_name: str, out_indices: Sequence[int] = (0, 1, 2, 3),
                 plugins: Sequence[Mapping[str, Any]] | None = None, checkpoint: str | None = None,
                 in_channels: int = 3, **timm_kwargs):
        super().__init__()
        self.timm_model = create_model(model_name, plugins=plugins, features_only=True,
                                       out_indices=tuple(out_indices), in_chans=in_channels, **timm_kwargs)
        if checkpoint:
            from ..checkpoint import load_state_dict_file
            missing, unexpected = self.timm_model.load_state_dict(load_state_dict_file(checkpoint), strict=False)
            if unexpected:
                raise ConfigError(f"backbone.checkpoint: {len(unexpected)} keys do not belong to {model_name}, "
                                  f"e.g. {unexpected[:3]}")
        self.out_channels = self.timm_model.feature_info.channels()

    def forward(self, x):
        return tuple(self.timm_model(x))


# ---------------------------------------------------------------- paper models
def _resnet(variant: str, pretrained: bool, plugins=None, **kwargs):
    if pretrained:
        raise ConfigError(NO_NETWORK)
    features_only = kwargs.pop('features_only', False)
    out_indices = kwargs.pop('out_indices', None)
    if features_only:
        kwargs.setdefault('num_classes', 0)
    model = build_model_with_cfg(ResNet, variant, False, **kwargs)
    if plugins:
        inject(model, plugins, example_input=None)
    if features_only:
        from timm.models._features import FeatureListNet
        model = FeatureListNet(model, out_indices=out_indices or (0, 1, 2, 3, 4))
    return model


R50 = dict(block=Bottleneck, layers=(3, 4, 6, 3))
default_cfgs: dict[str, dict] = {}   # read by timm's register_model


def register_models() -> None:
    """Register the entrypoints (idempotent: timm's registry keeps the first)."""
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
        """SE-ResNet-50 as in the paper: r=16 without channel rounding, biased 1x1 convs."""
        return _resnet('ap_seresnet50', pretrained, **dict(R50, block_args=dict(attn_layer=BLOCKS['SE'])), **kwargs)

    @reg
    def ap_cbam_resnet50(pretrained=False, **kwargs):
        """ResNet-50 with CBAM (authors' layout) in every bottleneck, before the residual add."""
        return _resnet('ap_cbam_resnet50', pretrained, **dict(R50, block_args=dict(attn_layer=BLOCKS['CBAM'])), **kwargs)

    @reg
    def ap_danet_resnet50d8(pretrained=False, **kwargs):
        """DANet trunk: ResNet-50-C, dilated to output stride 8, DualAttention after layer4."""
        args = dict(R50, stem_width=32, stem_type='deep', output_stride=8)
        return _resnet('ap_danet_resnet50d8', pretrained, plugins=[dict(type='DualAttention', where='layer4')],
                       **args, **kwargs)

    @reg
    def ap_nonlocal_resnet50(pretrained=False, **kwargs):
        """Non-local ResNet-50: 5 blocks, after every other residual block of res3 (2) and res4 (3)."""
        plugins = [dict(type='NonLocal', where='layer2.[1,3]', position='after'),
                   dict(type='NonLocal', where='layer3.[1,3,5]', position='after')]
        return _resnet('ap_nonlocal_resnet50', pretrained, plugins=plugins, **R50, **kwargs)

    @reg
    def ap_gaze_resnet50(pretrained=False, **kwargs):
        """Full-face gaze ResNet-50: spatial weights after layer4, regressing (yaw, pitch)."""
        kwargs.setdefault('num_classes', 2)
        return _resnet('ap_gaze_resnet50', pretrained, plugins=[dict(type='SpatialWeights', where='layer4')],
                       **R50, **kwargs)

    from ..models import PayAttentionVGG
    for aggregation in ('concat', 'indep'):
        for compat in ('pc', 'dp'):
            def entry(pretrained=False, _a=aggregation, _c=compat, **kwargs):
                if pretrained:
                    raise ConfigError(NO_NETWORK)
                if kwargs.pop('features_only', False):
                    raise ConfigError("ap_vgg16_att3_*: features_only is not supported; use forward_attention()")
                for key in ('cache_dir', 'pretrained_cfg', 'pretrained_cfg_overlay'):
                    kwargs.pop(key, None)
                return PayAttentionVGG(aggregation=_a, compatibility=_c, **kwargs)
            entry.__name__ = entry.__qualname__ = f'ap_vgg16_att3_{aggregation}_{compat}'
            entry.__doc__ = (f"VGG-16 with Learn-to-Pay-Attention at layers 7/10/13 ({aggregation}, {compat}); "
                             "CIFAR-100 defaults (100 classes, 32x32) as in the paper.")
            reg(entry, num_classes=100, input_size=(3, 32, 32), pool_size=None, first_conv='stages.0.0',
                classifier='head')
