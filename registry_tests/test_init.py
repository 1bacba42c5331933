"""Blocks keep their own (paper) init in every host: timm models (whose init runs after the blocks
are built), OpenMMLab ResNet plugins and init_cfg, InjectAttention / build_model, TimmBackbone.

A block "has its own init" when its parameters look like those of a newly built block: constant
ones (γ = 0, a zero-init BN weight, SpatialWeights' last bias) equal, random ones with about the
same spread (a host's Kaiming init changes it by 3x-1000x)."""
import copy
import pickle

import pytest
import timm
import torch
import torch.nn as nn
from mmengine.registry import init_default_scope

import attn_plugins
from attn_plugins import BLOCKS
from blocks_zoo import NAMES, make
from conftest import randomize

# Blocks with convs or norms a host can re-initialise (ChannelAttention has only γ, which no
# host init touches).
HOST_INIT_BLOCKS = ['SE', 'CBAM', 'SpatialWeights', 'NonLocal', 'PositionAttention', 'DualAttention', 'PyramidAttention']
IDENTITY_AT_INIT = ('NonLocal', 'PositionAttention', 'DualAttention')


def blocks_in(model: nn.Module) -> list[nn.Module]:
    """Outermost attention blocks of a model, in module order."""
    out = []

    def visit(module):
        if isinstance(module, tuple(BLOCKS.values())):
            out.append(module)
        else:
            for child in module.children():
                visit(child)
    visit(model)
    return out


def assert_like_new(block: nn.Module, build_new, where: str = '') -> None:
    """`block`'s parameters look like those of new blocks of the same config (`build_new()`):
    equal where two new blocks agree (constant init), about the same spread elsewhere."""
    first, second = dict(build_new().named_parameters()), dict(build_new().named_parameters())
    params = dict(block.named_parameters())
    assert params.keys() == first.keys()
    for name, p in params.items():
        q, p = first[name].detach().float(), p.detach().float()
        label = f'{where}{type(block).__name__}.{name}'
        if torch.equal(q, second[name].detach().float()):
            assert torch.equal(p, q), f'{label}: {p.flatten()[:4].tolist()} instead of {q.flatten()[:4].tolist()}'
        elif q.numel() >= 8:
            ratio = (p.std() / q.std()).item()
            low, high = (0.7, 1.4) if q.numel() >= 64 else (0.4, 2.5)
            assert low < ratio < high, f'{label}: std {p.std().item():.3g}, a new block has {q.std().item():.3g}'


def new_like(block: nn.Module):
    """Builds a block of the same config with its own init (`reset_parameters` is checked against
    construction by test_reset_parameters_restores_construction_init)."""
    def build():
        new = copy.deepcopy(block)
        new.reset_parameters()
        return new
    return build


# ---------------------------------------------------------------- the blocks themselves
def make_configured(name: str) -> nn.Module:
    """The zoo's blocks at 64 channels; SpatialWeights with a non-default init option."""
    if name == 'SpatialWeights':
        return attn_plugins.SpatialWeights(64, hidden_channels=16, init_bias=0.5)
    return make(name, 64)


@pytest.mark.parametrize('name', NAMES)
@pytest.mark.parametrize('hook', ['reset_parameters', 'init_weights', 'zero_init_last', 'reset_attention_blocks'])
def test_reset_parameters_restores_construction_init(name, hook):
    model = randomize(make_configured(name))
    if hook == 'reset_attention_blocks':
        assert attn_plugins.reset_attention_blocks(model) == 1
    else:
        for block in blocks_in(model):
            getattr(block, hook)()
    blocks = blocks_in(model)
    assert len(blocks) == 1
    assert_like_new(blocks[0], lambda: blocks_in(make_configured(name))[0])


# ---------------------------------------------------------------- timm
@pytest.mark.parametrize('block', HOST_INIT_BLOCKS[:-1])        # PyramidAttention takes a list, not an attn_layer
@pytest.mark.parametrize('build', ['timm.create_model', 'attn_plugins.create_model'])
def test_timm_resnet_attn_layer_keeps_block_init(block, build):
    if build == 'timm.create_model':      # timm's ResNet init calls the blocks' zero_init_last()
        model = timm.create_model('resnet18', block_args=dict(attn_layer=BLOCKS[block]))
    else:                                 # no timm hook: create_model resets the blocks itself
        model = attn_plugins.create_model('resnet18', block_args=dict(attn_layer=block), zero_init_last=False)
    blocks = blocks_in(model)
    assert len(blocks) == 8
    for found in blocks:
        assert_like_new(found, lambda: BLOCKS[block](found.channels))


@pytest.mark.parametrize('build', ['timm.create_model', 'attn_plugins.create_model'])
def test_spatial_weights_maps_start_near_one_in_a_timm_resnet(build):
    if build == 'timm.create_model':
        model = timm.create_model('resnet18', block_args=dict(attn_layer=attn_plugins.SpatialWeights))
    else:
        model = attn_plugins.create_model('resnet18', block_args=dict(attn_layer='SpatialWeights'), zero_init_last=False)
    model.eval()
    blocks = blocks_in(model)
    for block in blocks:
        block.record_attention = True
    with torch.no_grad():
        model(torch.randn(2, 3, 64, 64))
    for block in blocks:     # the paper's init: the map starts at about init_bias (1)
        assert (block.attention_map - block.init_bias).abs().max() < 0.05, block.attention_map.abs().max()


def test_create_model_restores_the_blocks_before_loading_checkpoint_path(tmp_path):
    source = randomize(attn_plugins.create_model('resnet18', block_args=dict(attn_layer='CBAM')))
    built = attn_plugins.create_model('resnet18', block_args=dict(attn_layer='CBAM'), zero_init_last=False)
    for found in blocks_in(built):
        assert_like_new(found, lambda: attn_plugins.CBAM(found.channels))
    torch.save(source.state_dict(), tmp_path / 'cbam_resnet18.pth')
    model = attn_plugins.create_model('resnet18', block_args=dict(attn_layer='CBAM'),
                                      checkpoint_path=str(tmp_path / 'cbam_resnet18.pth'))
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key


@pytest.mark.parametrize('name', ['ap_nonlocal_resnet50', 'ap_cbam_resnet50'])
def test_ap_entrypoints_keep_block_init_also_after_timm_init_weights(name):
    model = timm.create_model(name)
    blocks = blocks_in(model)
    assert len(blocks) == (5 if name == 'ap_nonlocal_resnet50' else 16)
    for block in blocks:
        assert_like_new(block, new_like(block), f'{name} built: ')
    model.init_weights()                 # timm's own re-init (kaiming on every conv)
    for block in blocks:
        assert_like_new(block, new_like(block), f'{name} after init_weights: ')
    if name == 'ap_nonlocal_resnet50':   # θ/φ at the authors' std
        for block in blocks:
            for conv in (block.theta, block.phi):
                assert 0.8 < conv.weight.std().item() / block.init_std < 1.25


@pytest.mark.parametrize('block', IDENTITY_AT_INIT)
def test_identity_blocks_stay_the_identity_in_timm(block):
    model = timm.create_model('resnet18', block_args=dict(attn_layer=BLOCKS[block])).eval()
    base = timm.create_model('resnet18').eval()
    base.load_state_dict({k: v for k, v in model.state_dict().items() if '.se.' not in k})
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), base(x))
    for found in blocks_in(model):
        assert_like_new(found, lambda: BLOCKS[block](found.channels))


# ---------------------------------------------------------------- OpenMMLab
def openmmlab_resnet(scope: str, plugins=None, **extra):
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    cfg = dict(type='ResNet' if scope == 'mmdet' else 'ResNetV1c', depth=50, base_channels=8, stem_channels=8,
               num_stages=4, out_indices=(0, 1, 2, 3), **extra)
    if plugins:
        cfg['plugins'] = plugins
    return registry.build(cfg)


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('block', HOST_INIT_BLOCKS)
def test_openmmlab_resnet_plugins_keep_block_init_after_init_weights(scope, block):
    plugins = [dict(cfg=dict(type=block), stages=(True, True, False, False), position='after_conv3')]
    model = openmmlab_resnet(scope, plugins)           # pretrained=None: init_cfg Kaiming + BN weight 1
    assert model.init_cfg and not any(c['type'] == 'Pretrained' for c in model.init_cfg)
    model.init_weights()
    blocks = blocks_in(model)
    assert len(blocks) == 3 + 4
    for found in blocks:
        assert_like_new(found, lambda: BLOCKS[block](found.channels), f'{scope} ')
    if block in IDENTITY_AT_INIT:       # output equal to the same ResNet without plugins
        base = openmmlab_resnet(scope)
        base.load_state_dict({k: v for k, v in model.state_dict().items() if k in base.state_dict()})
        model.eval()
        base.eval()
        x = torch.randn(1, 3, 32, 32)
        with torch.no_grad():
            for out, ref in zip(model(x), base(x), strict=True):
                torch.testing.assert_close(out, ref)


def test_cbam_in_mmseg_resnet_keeps_zero_spatial_bn_and_small_mlp():
    plugins = [dict(cfg=dict(type='CBAM'), stages=(True, True, True, True), position='after_conv3')]
    model = openmmlab_resnet('mmseg', plugins)
    model.init_weights()
    for found in blocks_in(model):
        assert found.spatial_gate.bn.weight.abs().max() == 0
        new = attn_plugins.CBAM(found.channels)
        assert found.channel_gate.fc1.weight.std() < 1.4 * new.channel_gate.fc1.weight.std()


INJECT = [dict(type='CBAM', where='layer*.*', position='after:bn2'),   # a child of a BN (a plain module)
          dict(type='NonLocal', where='layer3'),                       # appended to a ResLayer (a BaseModule)
          dict(type='SpatialWeights', where='.', output_index=[3])]     # on the root's last output


def injected_resnet18(builder: str, **resnet):
    init_default_scope('mmdet')
    module = dict(type='ResNet', depth=18, base_channels=8, stem_channels=8, **resnet)
    if builder == 'InjectAttention':
        from mmdet.registry import MODELS as DET
        return DET.build(dict(type='InjectAttention', module=module, plugins=INJECT))
    if builder == 'inject':                # the user's own call on a built mmengine model
        from mmdet.registry import MODELS as DET
        return attn_plugins.inject(DET.build(module), INJECT)
    from attn_plugins.config import build_model
    return build_model(dict(module, plugins=INJECT))


@pytest.mark.parametrize('builder', ['InjectAttention', 'build_model', 'inject'])
def test_injected_blocks_keep_their_init_after_host_init_weights(builder):
    model = injected_resnet18(builder)
    assert len(model.attn_plugins_report) == 8 + 1 + 1
    model.init_weights()                   # mmdet ResNet: Kaiming on convs, BN weight 1
    blocks = blocks_in(model)
    assert len(blocks) == 10
    for found in blocks:
        assert_like_new(found, lambda: BLOCKS[type(found).__name__](found.channels))


def test_injected_models_pickle_and_copy_with_their_init_hooks():
    model = randomize(injected_resnet18('InjectAttention'))
    model.eval()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        expected = model(x)
    for clone in (pickle.loads(pickle.dumps(model)), copy.deepcopy(model)):
        clone.eval()
        with torch.no_grad():
            for out, ref in zip(clone(x), expected, strict=True):
                torch.testing.assert_close(out, ref)
        clone.init_weights()
        for found in blocks_in(clone):
            assert_like_new(found, new_like(found))
        # the copy reset its own blocks, not the original's
        assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_pretrained_init_cfg_still_wins_over_the_blocks_init(tmp_path):
    source = randomize(injected_resnet18('InjectAttention'))
    torch.save(source.state_dict(), tmp_path / 'with_blocks.pth')
    plain = {k: v for k, v in source.state_dict().items() if 'attn_' not in k}
    torch.save(plain, tmp_path / 'plain.pth')
    init_cfg = [dict(type='Kaiming', layer='Conv2d'), dict(type='Constant', val=1, layer=['_BatchNorm'])]
    # a checkpoint holding block weights: they are loaded after the blocks' own init
    model = injected_resnet18('InjectAttention', init_cfg=init_cfg + [
        dict(type='Pretrained', checkpoint=str(tmp_path / 'with_blocks.pth'))])
    model.init_weights()
    for key, value in source.state_dict().items():
        assert torch.equal(model.state_dict()[key], value), key
    # a checkpoint of the plain ResNet: trunk from it, blocks with their own init
    model = injected_resnet18('InjectAttention', init_cfg=init_cfg + [
        dict(type='Pretrained', checkpoint=str(tmp_path / 'plain.pth'))])
    model.init_weights()
    for key, value in plain.items():
        assert torch.equal(model.state_dict()[key], value), key
    for found in blocks_in(model):
        assert_like_new(found, new_like(found))


def test_timm_backbone_blocks_keep_their_init_in_a_mmengine_host(tmp_path):
    from mmengine.model import BaseModule

    from attn_plugins.integrations.timm import TimmBackbone

    torch.save(timm.create_model('resnet18').state_dict(), tmp_path / 'resnet18.pth')

    class Host(BaseModule):
        def __init__(self, **backbone):
            super().__init__(init_cfg=[dict(type='Kaiming', layer='Conv2d'),
                                       dict(type='Constant', val=1, layer=['_BatchNorm'])])
            self.backbone = TimmBackbone('resnet18', out_indices=(1, 2), **backbone)

    for checkpoint in (None, str(tmp_path / 'resnet18.pth')):
        host = Host(block_args=dict(attn_layer='CBAM'), checkpoint=checkpoint,
                    plugins=[dict(type='NonLocal', where='layer2.1.bn2', position='after')])
        blocks = blocks_in(host)
        assert len(blocks) == 4 + 1
        for found in blocks:
            assert_like_new(found, new_like(found), 'built: ')
        host.init_weights()
        for found in blocks:
            assert_like_new(found, new_like(found), 'after init_weights: ')
        if checkpoint:                # the backbone's checkpoint is loaded again after the host's init_cfg
            state = torch.load(checkpoint, weights_only=True)
            assert torch.equal(host.backbone.timm_model.layer2[0].conv1.weight, state['layer2.0.conv1.weight'])
