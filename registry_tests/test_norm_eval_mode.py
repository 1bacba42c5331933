"""A block hooked on a norm (`after:bn2`, 'before' a BN) is that norm's child. OpenMMLab ResNets
with `norm_eval=True` put every BN, and so every child of it, in eval in `train()`: the block
follows the norm's owner instead (trains in a trainable stage, stays in eval in a frozen one), while
the norm itself stays frozen."""
import copy
import pickle

import pytest
import torch
import torch.nn as nn
from mmengine.registry import init_default_scope

import attn_plugins
from attn_plugins.injector import reattach_blocks

X = torch.randn(2, 3, 32, 32)


def _modes(model, *blocks, x=X):
    """For each block, the set of `.training` flags of its modules while it ran in one forward."""
    seen = {}

    def record(module, args, index):
        seen.setdefault(index, {m.training for m in module.modules()})

    handles = [b.register_forward_pre_hook(lambda m, args, i=i: record(m, args, i)) for i, b in enumerate(blocks)]
    try:
        model(x)
    finally:
        for h in handles:
            h.remove()
    return [seen.get(i) for i in range(len(blocks))]


def _mmdet_resnet(**options):
    from mmdet.models.backbones import ResNet
    return ResNet(depth=18, base_channels=8, stem_channels=8, norm_eval=True, **options)


def test_blocks_after_frozen_norms_train_with_their_stage_mmdet():
    model = attn_plugins.inject(_mmdet_resnet(), [
        dict(type='CBAM', where='layer3.0', position='after:bn2', reduction=2),
        dict(type='SE', where='layer2.1', position='after:bn1', reduction=2)])
    host, cbam, se = model.layer3[0].bn2, model.layer3[0].bn2.attn_cbam, model.layer2[1].bn1.attn_se
    spatial_bn = cbam.spatial_gate.bn
    model.train()
    assert not host.training                       # norm_eval still freezes the backbone's own norms
    host_mean, spatial_mean = host.running_mean.clone(), spatial_bn.running_mean.clone()
    assert _modes(model, cbam, se) == [{True}, {True}]
    assert cbam.training and se.training and spatial_bn.training
    assert not torch.equal(spatial_bn.running_mean, spatial_mean) and int(spatial_bn.num_batches_tracked) == 1
    assert torch.equal(host.running_mean, host_mean) and int(host.num_batches_tracked) == 0
    model.eval()
    spatial_mean = spatial_bn.running_mean.clone()
    assert _modes(model, cbam, se) == [{False}, {False}]
    assert torch.equal(spatial_bn.running_mean, spatial_mean)
    model.train()
    assert _modes(model, cbam, se) == [{True}, {True}]


def test_a_block_in_a_frozen_stage_follows_the_stage():
    model = attn_plugins.inject(_mmdet_resnet(frozen_stages=1), [
        dict(type='CBAM', where='layer1.0', position='after:bn2', reduction=2),
        dict(type='CBAM', where='layer3.1', position='after:bn1', reduction=2)])
    frozen, trained = model.layer1[0].bn2.attn_cbam, model.layer3[1].bn1.attn_cbam
    # built in training mode with stage 1 already frozen (mmdet's ResNet freezes it in __init__)
    assert _modes(model, frozen, trained) == [{False}, {True}]
    model.train()
    frozen_mean = frozen.spatial_gate.bn.running_mean.clone()
    trained_mean = trained.spatial_gate.bn.running_mean.clone()
    assert _modes(model, frozen, trained) == [{False}, {True}]
    assert torch.equal(frozen.spatial_gate.bn.running_mean, frozen_mean)
    assert not torch.equal(trained.spatial_gate.bn.running_mean, trained_mean)
    assert not any(p.requires_grad for p in frozen.parameters())   # the backbone freezes the stage's params
    assert all(p.requires_grad for p in trained.parameters())


@pytest.mark.parametrize('frozen_stages', [-1, 0])
def test_mmseg_resnetv1c_deep_stem_and_stage(frozen_stages):
    from mmseg.models.backbones import ResNetV1c
    model = ResNetV1c(depth=18, stem_channels=8, base_channels=8, norm_eval=True, frozen_stages=frozen_stages)
    attn_plugins.inject(model, [dict(type='SE', where='stem', position='after:1', reduction=2),   # stem.1: a BN
                                dict(type='CBAM', where='layer2.0', position='after:bn1', reduction=2)])
    stem_block, cbam = model.stem[1].attn_se, model.layer2[0].bn1.attn_cbam
    model.train()
    assert not model.stem[1].training and not model.layer2[0].bn1.training
    assert _modes(model, stem_block, cbam) == [{frozen_stages < 0}, {True}]
    model.eval()
    assert _modes(model, stem_block, cbam) == [{False}, {False}]


def test_inject_attention_config_after_syncbn_revert_deepcopy_and_pickle():
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    from mmengine.model.utils import revert_sync_batchnorm
    model = MODELS.build(dict(
        type='InjectAttention',
        module=dict(type='ResNet', depth=18, base_channels=8, stem_channels=8, norm_cfg=dict(type='SyncBN'),
                    norm_eval=True, frozen_stages=1),
        plugins=[dict(type='CBAM', where='layer[1,3].0', position='after:bn2', reduction=2)]))
    model = revert_sync_batchnorm(model)          # what mmengine's Runner does in a one-process run
    assert reattach_blocks(model) == ['layer1.0.bn2.attn_cbam', 'layer3.0.bn2.attn_cbam']
    for copied in (model, copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        copied.train()
        blocks = copied.layer1[0].bn2.attn_cbam, copied.layer3[0].bn2.attn_cbam
        assert _modes(copied, *blocks) == [{False}, {True}]
    assert sorted(model.state_dict()) == sorted(copied.state_dict())


class _Owner(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.drop = nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.Dropout(0.5)

    def forward(self, x):
        return self.drop(self.bn(self.conv(x)))


class _FrozenNormNet(nn.Module):
    """A plain model that freezes its norm in train(), as norm_eval does."""

    def __init__(self, freeze=True):
        super().__init__()
        self.freeze = freeze
        self.body = _Owner()

    def forward(self, x):
        return self.body(x)

    def train(self, mode=True):
        super().train(mode)
        if self.freeze:
            self.body.bn.eval()
        return self


def test_plain_model_after_and_before_a_frozen_norm_keeps_script_fx_and_pickle():
    x = torch.randn(2, 3, 8, 8)
    model = attn_plugins.inject(_FrozenNormNet(), [
        dict(type='CBAM', where='body', position='after:bn', reduction=2),
        dict(type='SE', where='body.bn', position='before', reduction=2)], example_input=x)
    blocks = model.body.bn.attn_cbam, model.body.bn.attn_se
    model.train()
    assert _modes(model, *blocks, x=x) == [{True}, {True}] and not model.body.bn.training
    model.eval()
    expected = model(x)
    torch.testing.assert_close(torch.jit.script(model)(x), expected)
    torch.testing.assert_close(torch.fx.symbolic_trace(model)(x), expected)
    restored = pickle.loads(pickle.dumps(model)).train()
    assert _modes(restored, *(restored.body.bn.attn_cbam, restored.body.bn.attn_se), x=x) == [{True}, {True}]
    model.body._forward_pre_hooks.clear()          # e.g. a tool rebuilt the owner: reattach_blocks heals it
    assert reattach_blocks(model) == ['body.bn.attn_cbam', 'body.bn.attn_se'] and reattach_blocks(model) == []
    assert _modes(model.train(), *blocks, x=x) == [{True}, {True}]
    # a norm that follows its owner: a block the user put in eval stays in eval
    model = attn_plugins.inject(_FrozenNormNet(freeze=False), [
        dict(type='CBAM', where='body', position='after:bn', reduction=2)], example_input=x).train()
    model.body.bn.attn_cbam.eval()
    assert _modes(model, model.body.bn.attn_cbam, x=x) == [{False}]


class _TwoInputOwner(nn.Module):
    """An owner whose forward takes two inputs (as a timm ViT block's x, attn_mask), a BN inside."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return self.bn(self.conv(x)) * scale


class _Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.block = _TwoInputOwner()
        self.norms = nn.ModuleDict({'bn-a': nn.BatchNorm2d(8)})
        self.ln = nn.GroupNorm(2, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ln(self.norms['bn-a'](self.block(x)))


def test_follow_hook_only_where_torchscript_can_type_it():
    """No mode pre-hook where it would break TorchScript or cannot be named: an owner whose forward
    takes two inputs, a norm named 'bn-a' (a ModuleDict key), and none for a group norm (same in train
    and eval, never frozen): all inject, script and run as eager."""
    model = _Net().eval()
    attn_plugins.inject(model, [dict(type='SE', where='block.bn', position='after', reduction=2),
                                dict(type='SE', where='norms.bn-a', position='after', reduction=2),
                                dict(type='SE', where='ln', position='after', reduction=2)])
    assert not model.block._forward_pre_hooks and not model.norms._forward_pre_hooks and not model._forward_pre_hooks
    x = torch.randn(2, 3, 8, 8)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))
