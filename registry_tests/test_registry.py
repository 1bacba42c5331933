"""Registries: list_plugins, build, mmengine MODELS (plain and scoped), OpenMMLab ResNet plugins."""
import subprocess
import sys

import pytest
import timm
import torch
from mmengine.registry import MODELS, init_default_scope

import attn_plugins
from attn_plugins import ConfigError, build, list_plugins
from attn_plugins.registry import IN_BLOCK_GATES


def test_list_plugins_is_sorted_and_complete():
    names = list_plugins()
    assert names == sorted(names)
    assert {'SE', 'SpatialWeights', 'PositionAttention', 'ChannelAttention', 'DualAttention', 'CBAM',
            'PyramidAttention', 'NonLocal', 'PayAttention', 'DualAttentionHead', 'NonLocalHead',
            'PyramidAttentionHead', 'VideoPyramidAttentionHead'} == set(names)


def test_build_from_dict_and_aliases():
    block = build(dict(type='CBAM', channels=64, reduction=8))
    assert isinstance(block, attn_plugins.CBAM) and block.channel_gate.fc1.out_channels == 8
    assert isinstance(build(dict(type='attn_plugins.SE', in_channels=32)), attn_plugins.SE)


@pytest.mark.parametrize('cfg,message', [
    (dict(type='CBMA', channels=8), r"unknown block type 'CBMA'; did you mean 'CBAM'"),
    (dict(type='NonLocal', channels=8, mdoe='dot_product'), r"cfg.mdoe: unknown option for NonLocal; did you mean 'mode'"),
    (dict(type='SE'), r"cfg.channels: missing"),
    (dict(channels=8), r"cfg.type: missing"),
    (dict(type='SE', channels='64'), r"cfg.channels: expected a positive int"),
    (dict(type='NonLocal', channels=8, mode='cosine'), r"mode: expected one of"),
])
def test_build_errors_name_the_key(cfg, message):
    with pytest.raises(ConfigError, match=message):
        build(cfg)


def test_registered_in_mmengine_root_and_scope():
    for name in attn_plugins.BLOCKS:
        assert MODELS.get(name) is not None and MODELS.get(f'attn_plugins.{name}') is not None
    block = MODELS.build(dict(type='attn_plugins.NonLocal', in_channels=16, mode='dot_product'))
    assert isinstance(block, attn_plugins.NonLocal) and block.mode == 'dot_product'
    with pytest.raises(ConfigError, match='disagrees with in_channels'):
        MODELS.build(dict(type='CBAM', channels=32, in_channels=64))


def test_openmmlab_built_blocks_pickle():
    import pickle
    init_default_scope('mmdet')
    from mmdet.registry import MODELS as DET
    model = DET.build(dict(type='ResNet', depth=50, base_channels=8, stem_channels=8,
                           plugins=[dict(cfg=dict(type='CBAM'), stages=(True, True, True, True),
                                         position='after_conv3')]))
    model.eval()
    clone = pickle.loads(pickle.dumps(model))
    x = torch.randn(1, 3, 32, 32)
    assert all(torch.equal(a, b) for a, b in zip(clone(x), model(x)))


def test_no_clash_with_openmmlab_names():
    import mmcv.cnn  # noqa: F401
    import mmdet.models  # noqa: F401
    import mmseg.models  # noqa: F401
    from mmdet.registry import MODELS as DET
    from mmseg.registry import MODELS as SEG
    for name in attn_plugins.BLOCKS:
        # found through the parent chain, and the child registries do not shadow it with their own
        assert DET.get(name).__mro__[1] is attn_plugins.BLOCKS[name]
        assert SEG.get(name).__mro__[1] is attn_plugins.BLOCKS[name]
    for head in ('DualAttentionHead', 'NonLocalHead', 'PyramidAttentionHead'):
        assert SEG.get(head) is not None


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('scope', ['mmdet', 'mmseg'])
@pytest.mark.parametrize('block', IN_BLOCK_GATES)
def test_openmmlab_resnet_plugins_with_every_in_block_gate(scope, block):
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    backbone_type = 'ResNet' if scope == 'mmdet' else 'ResNetV1c'
    cfg = dict(type=backbone_type, depth=50, base_channels=8, stem_channels=8, num_stages=4,
               out_indices=(0, 1, 2, 3),
               plugins=[dict(cfg=dict(type=block), stages=(False, True, True, True), position='after_conv3')])
    model = registry.build(cfg)
    model.eval()  # mmdet's ResNet.train() returns None, so no chaining
    bottleneck = model.layer2[0]
    plugin = getattr(bottleneck, bottleneck.after_conv3_plugin_names[0])
    assert isinstance(plugin, attn_plugins.BLOCKS[block]) and plugin.channels == 8 * 2 * 4
    assert not model.layer1[0].after_conv3_plugin_names
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 64, 128, 256]


def test_mmdet_resnet50_se_and_cbam_add_the_paper_parameters():
    init_default_scope('mmdet')
    from mmdet.registry import MODELS as DET
    base = n_params(DET.build(dict(type='ResNet', depth=50)))
    for block, extra in (('SE', 2_530_992), ('CBAM', 2_530_992 + 16 * (2 * 49 + 2))):
        plugins = [dict(cfg=dict(type=block), stages=(True, True, True, True), position='after_conv3')]
        assert n_params(DET.build(dict(type='ResNet', depth=50, plugins=plugins))) - base == extra
    # with ResNet-50's classifier (2048 * 1000 + 1000) this is the paper's 28.09M
    assert round((base + 2_530_992 + 2_049_000) / 1e6, 2) == 28.09


def test_inject_attention_wrapper_for_backbones_without_plugins():
    init_default_scope('mmdet')
    from mmdet.registry import MODELS as DET
    cfg = dict(type='InjectAttention', module=dict(type='ResNet', depth=18, base_channels=8, stem_channels=8),
               plugins=[dict(type='CBAM', where='layer*.*', position='after:bn2')])
    model = DET.build(cfg)
    assert len(model.attn_plugins_report) == 8
    assert [o.shape[1] for o in model(torch.randn(1, 3, 64, 64))] == [8, 16, 32, 64]
    scoped = DET.build(dict(cfg, type='attn_plugins.InjectAttention'))
    assert len(scoped.attn_plugins_report) == 8


def test_import_without_openmmlab_extras():
    code = ("import sys\n"
            "for m in ('mmcv', 'mmdet', 'mmseg'):\n    sys.modules[m] = None\n"
            "import attn_plugins\n"
            "print(len(attn_plugins.list_plugins()), type(attn_plugins.build({'type': 'SE', 'channels': 8})).__name__)\n"
            "try:\n    attn_plugins.load_config('configs/seg/danet_r50-d8_4xb2-80k_cityscapes-512x1024.yaml')\n"
            "except attn_plugins.ConfigError as e:\n    print(e)\n")
    out = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd='.')
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith('13 SE')
    assert 'pip install attn_plugins[seg]' in out.stdout


def test_mmdet_resnext_takes_plugins_too():
    init_default_scope('mmdet')
    from mmdet.registry import MODELS as DET
    model = DET.build(dict(type='ResNeXt', depth=50, groups=4, base_width=4, base_channels=16, stem_channels=16,
                           plugins=[dict(cfg=dict(type='CBAM'), stages=(True, True, True, True),
                                         position='after_conv3')]))
    assert isinstance(model.layer1[0].cbam, attn_plugins.CBAM)
    assert [o.shape[1] for o in model(torch.randn(1, 3, 64, 64))] == [64, 128, 256, 512]


@pytest.mark.parametrize('norm_cfg,norm_type', [
    (dict(type='SyncBN', requires_grad=True), torch.nn.SyncBatchNorm),
    (dict(type='GN', num_groups=4, requires_grad=True), torch.nn.GroupNorm),
])
def test_nonlocal_head_uses_norm_cfg_in_the_block_too(norm_cfg, norm_type):
    init_default_scope('mmseg')
    from mmseg.registry import MODELS as SEG
    head = SEG.build(dict(type='NonLocalHead', in_channels=16, channels=8, num_classes=3, norm_cfg=norm_cfg))
    norms = [head.convs[0].norm, head.convs[1].norm, head.nl_block.out_norm]
    assert len({type(n) for n in norms}) == 1 and isinstance(norms[0], norm_type), [type(n) for n in norms]
    assert head.nl_block.out_norm.weight.abs().max() == 0           # the block starts as the identity
    if norm_type is torch.nn.GroupNorm:
        assert head.nl_block.out_norm.num_groups == 4
        x = torch.randn(2, 8, 6, 6)
        torch.testing.assert_close(head.nl_block(x), x)
    no_norm = SEG.build(dict(type='NonLocalHead', in_channels=16, channels=8, num_classes=3, norm_cfg=None))
    assert isinstance(no_norm.nl_block.out_norm, torch.nn.Identity)
    assert no_norm.nl_block.out_conv.weight.abs().max() == 0


def test_nonlocal_norm_layer_errors():
    with pytest.raises(ConfigError, match='norm_layer: expected a callable'):
        build(dict(type='NonLocal', channels=8, norm_layer='SyncBN'))
    with pytest.raises(ConfigError, match='with norm=False'):
        build(dict(type='NonLocal', channels=8, norm=False, norm_layer=torch.nn.BatchNorm2d))


def test_timm_backbone_loads_a_plain_timm_checkpoint(tmp_path):
    from attn_plugins.integrations.timm import TimmBackbone
    for name, options in (('resnet18', dict(block_args=dict(attn_layer='CBAM'))),
                          ('convnext_atto', dict(plugins=[dict(type='SE', where='stages_*.blocks.*', position='after')]))):
        plain = timm.create_model(name)
        torch.save(plain.state_dict(), tmp_path / f'{name}.pth')
        backbone = MODELS.build(dict(type='TimmBackbone', model_name=name, out_indices=(1, 2),
                                     checkpoint=str(tmp_path / f'{name}.pth'), **options))
        report = backbone.checkpoint_report
        blocks = [n for n, m in backbone.timm_model.named_modules() if isinstance(m, tuple(attn_plugins.BLOCKS.values()))]
        assert blocks and report['missing'] and all(k.startswith(tuple(b + '.' for b in blocks)) for k in report['missing'])
        assert {'fc.weight', 'head.fc.weight'} & set(report['unused'])
        # every weight of the features model that the plain model has came from the checkpoint
        plain_state = plain.state_dict()
        loaded = 0
        for key, value in backbone.timm_model.state_dict().items():
            source = key if key in plain_state else key.replace('_', '.', 1)   # timm's flattened 'stages_0'
            if key not in report['missing']:
                assert torch.equal(value, plain_state[source]), key
                loaded += 1
        assert loaded > 50
    torch.save(timm.create_model('resnet34').state_dict(), tmp_path / 'resnet34.pth')
    with pytest.raises(ConfigError, match=r'is not a checkpoint of resnet18: .* belong to another model'):
        TimmBackbone('resnet18', checkpoint=str(tmp_path / 'resnet34.pth'))
    torch.save(timm.create_model('resnet50').state_dict(), tmp_path / 'resnet50.pth')
    with pytest.raises(ConfigError, match='resnet18 needs'):
        TimmBackbone('resnet18', checkpoint=str(tmp_path / 'resnet50.pth'))


def test_pyramid_attention_builds_from_a_list_of_widths():
    block = MODELS.build(dict(type='PyramidAttention', in_channels=[16, 32]))
    assert block.channels == 16 and block.in_channels == [16, 32]
    out = block([torch.randn(1, 16, 8, 8), torch.randn(1, 32, 4, 4)])
    assert out.shape == (1, 16, 8, 8)
    target_last = MODELS.build(dict(type='attn_plugins.PyramidAttention', in_channels=(16, 32), target_index=1))
    assert target_last.channels == 32
    assert MODELS.build(dict(type='PyramidAttention', in_channels=24)).in_channels == [24]   # a ResNet plugin
