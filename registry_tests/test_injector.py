"""Generic injection into timm, torchvision and OpenMMLab models."""
import copy
import io
import pickle

import pytest
import timm
import torch
import torchvision
from mmengine.registry import init_default_scope

import attn_plugins
from attn_plugins import ConfigError, inject
from attn_plugins.injector import glob_match


@pytest.mark.parametrize('pattern,name,expected', [
    ('layer*.*', 'layer1.0', True), ('layer*.*', 'layer1.0.bn3', False), ('**.bn3', 'layer1.0.bn3', True),
    ('layer3.[1,3,5]', 'layer3.3', True), ('layer3.[1,3,5]', 'layer3.2', False), ('layer3.[1,3,5]', 'layer3.13', False),
    ('stages.*.blocks.*', 'stages.2.blocks.10', True), ('layer2.[0-2]', 'layer2.2', True), ('**', 'a.b', True),
])
def test_glob(pattern, name, expected):
    assert glob_match(pattern, name) is expected


def base_outputs(model, x):
    model.eval()
    with torch.no_grad():
        return model(x)


def test_timm_resnet_cbam_in_every_bottleneck_before_add():
    model = timm.create_model('resnet50')
    inject(model, [dict(type='CBAM', where='layer*.*', position='after:bn3')])
    report = model.attn_plugins_report
    assert len(report) == 16 and report[0].path == 'layer1.0.bn3' and report[0].channels == 256
    assert report[-1].attr == 'layer4.2.se' and report[-1].channels == 2048
    # the block runs between bn3 and the residual add, from the Bottleneck's own slot (where timm's
    # attn_layer goes): no hook on bn3, which would keep bn3's input alive while the block runs
    assert all(r.in_slot for r in report) and not model.layer1[0].bn3._forward_hooks
    seen = []
    model.layer1[0].se.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    model(torch.randn(1, 3, 64, 64))
    assert seen == [torch.Size([1, 256, 16, 16])]
    # the same as timm's own CBAM-ResNet-50 with our block's weights in the same places
    reference = timm.create_model('resnet50', block_args=dict(attn_layer=type(model.layer1[0].se)))
    reference.load_state_dict(model.state_dict())
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(reference.eval()(x), model.eval()(x), rtol=0, atol=0)


def test_report_channels_probe_and_override():
    model = timm.create_model('resnet18')
    inject(model, [dict(type='NonLocal', where='layer3', position='after'),        # probed (a Sequential)
                   dict(type='SE', regex=r'layer4\.\d', position='after'),           # probed (BasicBlock)
                   dict(type='CBAM', module_type='BatchNorm2d', where='layer1.*.bn2', channels=64)])
    paths = {(r.path, r.type, r.channels) for r in model.attn_plugins_report}
    assert ('layer3', 'NonLocal', 256) in paths and ('layer4.1', 'SE', 512) in paths
    assert ('layer1.1.bn2', 'CBAM', 64) in paths
    assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


def test_select_before_and_replace():
    model = timm.create_model('resnet18')
    inject(model, [dict(type='SE', where='layer*.*', select=[0, -1], position='after'),
                   dict(type='SpatialWeights', where='layer2.0.conv1', position='before', channels=64),
                   dict(type='ChannelAttention', where='layer3.1.act2', position='replace', channels=256)])
    assert [r.path for r in model.attn_plugins_report][:2] == ['layer1.0', 'layer4.1']
    assert isinstance(model.layer3[1].act2, attn_plugins.ChannelAttention)
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_errors_name_pattern_and_near_paths():
    model = timm.create_model('resnet18')
    with pytest.raises(ConfigError, match=r"plugins\[0\]: pattern 'layr1.\*' matches no module of ResNet; near module paths: .*layer1"):
        inject(model, [dict(type='SE', where='layr1.*')])
    with pytest.raises(ConfigError, match=r"module 'layer1.0' \(BasicBlock\) has no child 'bn3'.*not supported.*bn2"):
        inject(model, [dict(type='SE', where='layer1.*', position='after:bn3')])
    with pytest.raises(ConfigError, match=r"plugins\[0\].reductio: unknown option for SE; did you mean 'reduction'"):
        inject(model, [dict(type='SE', where='layer1.*', reductio=4)])
    with pytest.raises(ConfigError, match=r"plugins\[0\].type: unknown block type 'Cbam'.*'CBAM'"):
        inject(model, [dict(type='Cbam', where='layer1.*')])
    with pytest.raises(ConfigError, match=r"plugins\[0\].channels: 128, but 'layer1.0.bn2' gives 64 channels"):
        inject(model, [dict(type='SE', where='layer1.*', position='after:bn2', channels=128)])
    with pytest.raises(ConfigError, match=r"plugins\[0\].channels: 32, but 'layer2.1' gives 128 channels"):
        inject(model, [dict(type='CBAM', where='layer2.1', position='after', channels=32)])
    with pytest.raises(ConfigError, match="position: expected"):
        inject(model, [dict(type='SE', where='layer1.*', position='inside')])


def test_injecting_twice_needs_stack():
    model = timm.create_model('resnet18')
    spec = dict(type='SE', where='layer1.*', position='after:bn2')
    inject(model, [spec])
    with pytest.raises(ConfigError, match="already injected at 'layer1.0.bn2'; set 'stack: true'"):
        inject(model, [spec])
    inject(model, [dict(spec, stack=True)])      # both under bn2 then, hooked in order (see the test below)
    assert model.layer1[0].se is None and len(model.attn_plugins_report) == 4
    assert [r.attr for r in model.attn_plugins_report] == [
        'layer1.0.bn2.attn_se', 'layer1.1.bn2.attn_se', 'layer1.0.bn2.attn_se_1', 'layer1.1.bn2.attn_se_1']
    assert not any(r.in_slot for r in model.attn_plugins_report)


def test_blocks_stacked_after_a_slot_block_run_in_order_and_stay_separate_blocks():
    """A second block after bn3 moves the first out of the Bottleneck's slot: both are hooked on bn3 in
    order (SE, then CBAM, then NonLocal), each its own block for reset_attention_blocks (a block nested in
    another lost its own init), attention_blocks (plan, viz) and detached_blocks; the slot stays free."""
    from attn_plugins.analysis import attention_blocks
    from attn_plugins.injector import detached_blocks, hooked_blocks
    from attn_plugins.modules import reset_attention_blocks
    model = timm.create_model('resnet50').eval()
    inject(model, [dict(type='SE', where='layer1.*', position='after:bn3'),
                   dict(type='CBAM', where='layer1.0', position='after:bn3', stack=True)])
    with pytest.raises(ConfigError, match="CBAM is already injected at 'layer1.0.bn3'; set 'stack: true'"):
        inject(model, [dict(type='CBAM', where='layer1.0', position='after:bn3')])
    inject(model, [dict(type='NonLocal', where='layer1.0', position='after:bn3')])   # runs after the others
    names = ['layer1.0.bn3.attn_se', 'layer1.0.bn3.attn_cbam', 'layer1.0.bn3.attn_non_local']
    assert [r.attr for r in model.attn_plugins_report if r.path == 'layer1.0.bn3'] == names
    assert model.layer1[0].se is None and type(model.layer1[1].se).__name__ == 'SE'
    assert [p for p, _ in attention_blocks(model) if p.startswith('layer1.0.')] == names
    assert [b for b, _, _ in hooked_blocks(model)] == names and not detached_blocks(model)
    order = []
    handles = [model.get_submodule(n).register_forward_pre_hook(lambda m, a, n=n: order.append(n)) for n in names]
    model(torch.randn(1, 3, 32, 32))
    assert order == names
    for handle in handles:
        handle.remove()
    with torch.no_grad():
        model.layer1[0].bn3.attn_cbam.spatial_gate.bn.weight.fill_(1.0)
    reset_attention_blocks(model)
    assert model.layer1[0].bn3.attn_cbam.spatial_gate.bn.weight.abs().max() == 0    # CBAM's own init



def test_slot_block_of_an_inner_report_needs_stack_and_runs_first():
    """A timm model injected at creation (create_model, TimmBackbone) and injected again from an outer
    model: the slot block is found in the inner report, so the same block again needs `stack`, and a
    stacked one runs after it (not from a hook on bn2 before the slot block)."""
    spec = dict(type='SE', where='layer1.0', position='after:bn2')
    outer = torch.nn.Sequential()
    outer.add_module('backbone', attn_plugins.create_model('resnet18', plugins=[spec]))
    outer_spec = dict(spec, where='backbone.layer1.0')
    with pytest.raises(ConfigError, match="already injected at 'backbone.layer1.0.bn2'; set 'stack: true'"):
        inject(outer, [outer_spec])
    inject(outer, [dict(outer_spec, stack=True)])
    assert outer.backbone.attn_plugins_report[0].attr == 'layer1.0.bn2.attn_se'     # moved out of the slot
    assert outer.attn_plugins_report[0].attr == 'backbone.layer1.0.bn2.attn_se_1'
    calls = []
    for name in ('attn_se', 'attn_se_1'):
        getattr(outer.backbone.layer1[0].bn2, name).register_forward_pre_hook(lambda m, a, n=name: calls.append(n))
    outer.eval()(torch.randn(1, 3, 32, 32))
    assert calls == ['attn_se', 'attn_se_1'] and outer.backbone.layer1[0].se is None


def test_no_slot_in_a_subclass_with_its_own_forward():
    """A subclass of timm's BasicBlock whose own forward never runs `se`: the block is hooked after bn2
    (in the slot it would silently never run)."""
    from timm.models.resnet import BasicBlock, ResNet

    class PlainBlock(BasicBlock):
        def forward(self, x):
            shortcut = x if self.downsample is None else self.downsample(x)
            return self.act2(self.bn2(self.conv2(self.act1(self.bn1(self.conv1(x))))) + shortcut)

    model = ResNet(PlainBlock, [1, 1, 1, 1]).eval()
    inject(model, [dict(type='SE', where='layer1.0', position='after:bn2')])
    (record,) = model.attn_plugins_report
    assert record.attr == 'layer1.0.bn2.attn_se' and not record.in_slot and model.layer1[0].se is None
    calls = []
    model.get_submodule(record.attr).register_forward_hook(lambda *args: calls.append(1))
    model(torch.randn(1, 3, 32, 32))
    assert calls == [1]

@pytest.mark.parametrize('name,spec', [
    ('resnext26ts', dict(where='stages.*.*', position='after:conv3_1x1')),
    ('regnetx_002', dict(where='s[1-4].b*', position='after:conv3')),
    ('convnext_atto', dict(where='stages.*.blocks.*', position='after')),
    ('resnet26d', dict(where='layer*.*', position='after:bn3')),
])
def test_timm_families(name, spec):
    model = timm.create_model(name)
    inject(model, [dict(type='CBAM', **spec)])
    assert len(model.attn_plugins_report) > 3
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_torchvision_resnet():
    model = torchvision.models.resnet50(weights=None)
    inject(model, [dict(type='SE', where='layer*.*', position='after:bn3'),
                   dict(type='NonLocal', where='layer3.[1,3,5]', position='after')])
    assert len(model.attn_plugins_report) == 19
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


@pytest.mark.parametrize('scope,backbone', [('mmdet', 'ResNet'), ('mmdet', 'ResNetV1d'),
                                            ('mmseg', 'ResNet'), ('mmseg', 'ResNetV1c')])
def test_openmmlab_resnets(scope, backbone):
    init_default_scope(scope)
    registry = __import__(f'{scope}.registry', fromlist=['MODELS']).MODELS
    model = registry.build(dict(type=backbone, depth=50, base_channels=8, stem_channels=8))
    inject(model, [dict(type='CBAM', where='layer*.*', position='after:bn3')])
    assert len(model.attn_plugins_report) == 16
    assert len(model(torch.randn(1, 3, 64, 64))) == 4


def test_features_only_still_returns_features():
    model = attn_plugins.create_model('resnet50', features_only=True, out_indices=(1, 2, 3, 4),
                                      plugins=[dict(type='CBAM', where='layer*.*', position='after:bn3')])
    feats = model(torch.randn(1, 3, 64, 64))
    assert [f.shape[1] for f in feats] == [256, 512, 1024, 2048] and len(model.attn_plugins_report) == 16


def test_identity_blocks_leave_pretrained_outputs_bit_identical_and_checkpoint_loads():
    # zero_init_last=False: timm zero-inits each branch's last BN, which would hide the blocks
    base = timm.create_model('resnet50', zero_init_last=False)
    x = torch.randn(2, 3, 64, 64)
    expected = base_outputs(base, x)
    buffer = io.BytesIO()
    torch.save(base.state_dict(), buffer)
    injected = timm.create_model('resnet50', zero_init_last=False)
    inject(injected, [dict(type='NonLocal', where='layer3.[1,3,5]', position='after'),
                      dict(type='DualAttention', where='layer4', position='after'),
                      dict(type='PositionAttention', where='layer2.*', position='after:bn3')])
    buffer.seek(0)
    result = injected.load_state_dict(torch.load(buffer, weights_only=True), strict=False)
    assert not result.unexpected_keys
    blocks = tuple(r.attr + '.' for r in injected.attn_plugins_report)
    assert result.missing_keys and all(k.startswith(blocks) for k in result.missing_keys)
    assert torch.equal(base_outputs(injected, x), expected)


def test_checkpoint_from_before_slot_blocks_is_named_and_converted():
    """A state dict saved when blocks after bn2 were children of the norm ('layer1.0.bn2.attn_se.*'):
    the mismatch says so and names the converter, which makes it load into the slot blocks."""
    from attn_plugins.checkpoint import rename_slot_keys, state_dict_mismatch
    model = attn_plugins.create_model('resnet18', plugins=[dict(type='SE', where='layer*.*', position='after:bn2'),
                                                           dict(type='CBAM', where='layer1.0', position='after:bn1')])
    with torch.no_grad():
        for p in model.parameters():
            p.uniform_(-0.5, 0.5)
    old = {k.replace('.se.', '.bn2.attn_se.'): v.clone() for k, v in model.state_dict().items()}
    assert 'layer1.0.bn2.attn_se.fc1.weight' in old and 'layer1.0.bn1.attn_cbam.spatial_gate.conv.weight' in old
    fresh = attn_plugins.create_model('resnet18', plugins=[dict(type='SE', where='layer*.*', position='after:bn2'),
                                                           dict(type='CBAM', where='layer1.0', position='after:bn1')])
    message = state_dict_mismatch(fresh, old)
    assert "8 blocks under their names from before" in message and "'layer1.0.bn2.attn_se.' is now 'layer1.0.se.'" \
        in message and 'rename_slot_keys(state_dict, model)' in message
    fresh.load_state_dict(rename_slot_keys(old, fresh))       # strict: every key in place
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(fresh.eval()(x), model.eval()(x), rtol=0, atol=0)
    assert state_dict_mismatch(fresh, rename_slot_keys(old, fresh)) is None


def test_timm_backbone_loads_a_checkpoint_from_before_slot_blocks(tmp_path):
    from attn_plugins.integrations.timm import TimmBackbone
    spec = [dict(type='SE', where='layer*.*', position='after:bn2')]
    source = attn_plugins.create_model('resnet18', plugins=spec)
    with torch.no_grad():
        for p in source.parameters():
            p.uniform_(-1, 1)
    torch.save({k.replace('.se.', '.bn2.attn_se.'): v for k, v in source.state_dict().items()}, tmp_path / 'old.pth')
    backbone = TimmBackbone('resnet18', out_indices=(1, 2, 3, 4), plugins=spec, checkpoint=str(tmp_path / 'old.pth'))
    assert backbone.checkpoint_report['missing'] == []
    assert torch.equal(backbone.timm_model.layer4[1].se.fc2.weight, source.layer4[1].se.fc2.weight)


def test_deepcopy_and_pickle_keep_blocks_working():
    model = timm.create_model('resnet18', zero_init_last=False)
    inject(model, [dict(type='SE', where='layer1.*', position='after:bn2')])
    clone = copy.deepcopy(model)
    with torch.no_grad():
        clone.layer1[0].se.fc2.bias.fill_(-100.0)      # the clone's gate closes
    x = torch.randn(1, 3, 32, 32)
    model.eval(), clone.eval()
    assert not torch.equal(model(x), clone(x)), 'the clone must run its own block, not the original'
    restored = pickle.loads(pickle.dumps(clone))
    assert torch.equal(restored(x), clone(x))


def test_after_a_backbone_per_output_for_swin():
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    cfg = dict(type='InjectAttention',
               module=dict(type='SwinTransformer', embed_dims=24, depths=(1, 1, 1, 1), num_heads=(1, 2, 3, 4)),
               plugins=[dict(type='CBAM', where='.', position='after', output_index=[0, 1, 2, 3]),
                        dict(type='NonLocal', where='.', output_index=3)])
    model = MODELS.build(cfg)
    assert [(r.type, r.channels, r.position) for r in model.attn_plugins_report] == [
        ('CBAM', 24, 'after[0]'), ('CBAM', 48, 'after[1]'), ('CBAM', 96, 'after[2]'), ('CBAM', 192, 'after[3]'),
        ('NonLocal', 192, 'after[3]')]
    seen = []
    model.attn_non_local_out3.register_forward_hook(lambda m, i, o: seen.append(o.shape))
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [24, 48, 96, 192] and seen == [torch.Size([1, 192, 2, 2])]
    with pytest.raises(ConfigError, match="output_index: only with position 'after'"):
        inject(model, [dict(type='SE', where='.', position='before', output_index=0)])
    with pytest.raises(ConfigError, match='has no output 7'):
        inject(model, [dict(type='SE', where='.', output_index=7)])


def test_timm_backbone_for_openmmlab_configs():
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    backbone = MODELS.build(dict(type='TimmBackbone', model_name='convnext_atto', out_indices=(1, 2, 3),
                                 plugins=[dict(type='CBAM', where='stages_*.blocks.*', position='after')]))
    assert len(backbone.timm_model.attn_plugins_report) == 12 and backbone.out_channels == [80, 160, 320]
    assert [o.shape[1] for o in backbone(torch.randn(1, 3, 64, 64))] == [80, 160, 320]
    with pytest.raises(ConfigError, match='would download'):
        MODELS.build(dict(type='TimmBackbone', model_name='resnet18', pretrained=True))


# ---------------------------------------------------------------- edge cases (issue 11, item 7)
def test_inject_follows_the_models_dtype():
    model = timm.create_model('resnet18').double()
    inject(model, [dict(type='SE', where='layer1.*', position='after')])       # BasicBlock: probed
    block = model.layer1[0].attn_se
    assert all(p.dtype == torch.float64 for p in block.parameters())
    assert model.eval()(torch.randn(1, 3, 64, 64, dtype=torch.float64)).dtype == torch.float64


def test_probe_uses_the_models_expected_input_size():
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False)     # fixed 224x224 input
    inject(model, [dict(type='SE', where='patch_embed.proj', position='before')])
    assert model.attn_plugins_report[0].channels == 3
    assert model(torch.randn(1, 3, 224, 224)).shape == (1, 1000)


def test_token_outputs_are_not_maps():
    """A ViT block gives (B, N, C) tokens: refused at inject, not at forward with N taken as channels."""
    model = timm.create_model('vit_tiny_patch16_224', pretrained=False, depth=1)
    for block_type in ('SE', 'CBAM', 'NonLocal'):
        with pytest.raises(ConfigError, match=r"needs 4-dimensional .* gives a \(1, 197, 192\) tensor"):
            inject(model, [dict(type=block_type, where='blocks.0', position='after')])
    inject(model, [dict(type='ChannelAttention', where='patch_embed.proj', position='after')])   # maps: fine
    with pytest.raises(ConfigError, match=r"needs 5-dimensional"):       # a 3D block on 2D maps
        inject(timm.create_model('resnet18'), [dict(type='NonLocal', dim=3, where='layer1.0', position='after')])


def test_where_dot_is_the_model_itself():
    model = timm.create_model('resnet18', num_classes=0, global_pool='')    # returns the last map
    inject(model, [dict(type='SE', where='.', position='after')])
    insertion = model.attn_plugins_report[0]
    assert (insertion.path, insertion.attr, insertion.channels) == ('.', 'attn_se', 512)
    assert isinstance(model.get_submodule(insertion.attr), attn_plugins.SE)
    with pytest.raises(ConfigError, match="pattern 'attn_se' matches no module"):   # inserted blocks are never targets
        inject(model, [dict(type='SE', where='attn_se', position='after')])
    with pytest.raises(ConfigError, match=r"'replace' with where: '\.' would replace the model itself"):
        inject(model, [dict(type='SE', where='.', position='replace')])
    assert len(model.attn_plugins_report) == 1 and '' not in model._modules


class _TwoMaps(torch.nn.Module):
    Pair = __import__('collections').namedtuple('Pair', 'low high')

    def __init__(self, as_dict: bool):
        super().__init__()
        self.as_dict = as_dict
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, stride=2, padding=1)

    def forward(self, x):
        low = self.conv1(x)
        high = self.conv2(low)
        return {'low': low, 'high': high} if self.as_dict else self.Pair(low, high)


def test_namedtuple_and_dict_outputs_keep_their_type():
    x = torch.randn(2, 3, 16, 16)
    pair = inject(_TwoMaps(as_dict=False), [dict(type='SE', where='.', output_index=[1])])
    out = pair(x)
    assert type(out) is _TwoMaps.Pair and pair.attn_plugins_report[0].channels == 16
    torch.testing.assert_close(out.high, pair.attn_se_out1(pair.conv2(pair.conv1(x))))
    torch.testing.assert_close(out.low, pair.conv1(x))
    maps = inject(_TwoMaps(as_dict=True), [dict(type='CBAM', where='.', output_index=['high', 'low'])])
    out = maps(x)
    assert type(out) is dict and list(out) == ['low', 'high']
    assert [(r.position, r.channels, r.attr) for r in maps.attn_plugins_report] == [
        ('after[high]', 16, 'attn_cbam_out_high'), ('after[low]', 8, 'attn_cbam_out_low')]
    torch.testing.assert_close(out['high'], maps.attn_cbam_out_high(maps.conv2(maps.conv1(x))))
    with pytest.raises(ConfigError, match=r"'\.' has no output 'mid'.*keys \['low', 'high'\]"):
        inject(_TwoMaps(as_dict=True), [dict(type='SE', where='.', output_index='mid')])
    with pytest.raises(ConfigError, match=r"'\.' returns a dict with keys \['low', 'high'\]; .*'output_index'"):
        inject(_TwoMaps(as_dict=True), [dict(type='SE', where='.', position='after')])


def test_a_module_run_twice_per_forward_is_refused():
    model = torchvision.models.resnet18(weights=None)         # BasicBlock calls self.relu twice
    with pytest.raises(ConfigError, match=r"'layer1\.0\.relu' runs 2 times in one forward .*shared ReLU"):
        inject(model, [dict(type='SE', where='layer1.0.relu', position='after')])
    with pytest.raises(ConfigError, match=r"'layer1\.0\.relu' runs 2 times"):
        inject(model, [dict(type='SE', where='layer1.0', position='after:relu', channels=64)])
    inject(model, [dict(type='SE', where='layer1.0', position='after:bn2')])   # runs once: fine
    assert model.attn_plugins_report[0].path == 'layer1.0.bn2'


def test_two_input_blocks_are_refused_at_inject():
    model = timm.create_model('resnet18')
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.type: PayAttention cannot be inserted .*takes 2 inputs "
                                          r"\(local, global_feat\)"):
        inject(model, [dict(type='PayAttention', where='layer1.*', position='after')])
    assert not hasattr(model.layer1[0], 'attn_pay_attention')


@pytest.mark.parametrize('position', ['after', 'replace', 'before'])
def test_linear_layers_are_refused_at_inject(position):
    model = timm.create_model('resnet18')
    with pytest.raises(ConfigError, match=r"'fc' is a Linear layer.*\(B, C, H, W\) maps SE needs"):
        inject(model, [dict(type='SE', where='fc', position=position)])
    assert isinstance(model.fc, torch.nn.Linear) and not model.fc._modules


def test_vectors_and_shape_changing_replacements_are_refused():
    model = timm.create_model('resnet18')
    with pytest.raises(ConfigError, match=r"SE needs 4-dimensional \(B, C, \.\.\.\) feature maps, but 'global_pool' gives a "
                                          r"\(1, 512\) tensor"):
        inject(model, [dict(type='SE', where='global_pool', position='after')])
    with pytest.raises(ConfigError, match=r"'replace' needs a module whose output has its input's shape.*"
                                          r"'layer2\.0\.conv1' maps \(1, 64, (\d+), \1\) to \(1, 128, \d+, \d+\)"):
        inject(model, [dict(type='SE', where='layer2.0.conv1', position='replace')])


def test_spec_key_typos_and_boolean_select():
    model = timm.create_model('resnet18')
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.positon: unknown option for SE; did you mean 'position'"):
        inject(model, [dict(type='SE', where='layer1.*', positon='after:bn2')])
    with pytest.raises(ConfigError, match=r"plugins\[0\]\.select: expected a list of match indices \(ints, not "
                                          r"booleans\), got \[True\]"):
        inject(model, [dict(type='SE', where='layer1.*', select=[True])])
    assert not getattr(model, 'attn_plugins_report', [])


def test_plugins_must_be_a_list_not_a_string():
    """`plugins='SE'` (e.g. timm.create_model('ap_cbam_resnet50', plugins='SE')) is refused as a
    whole, not read character by character ("plugins[0] ... got 'S'")."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3))
    with pytest.raises(ConfigError, match=r"^plugins: expected a list of specs .*got 'SE'"):
        inject(model, 'SE')
    with pytest.raises(ConfigError, match=r"^plugins: expected a list of specs .*got 3"):
        inject(model, 3)
    inject(model, (dict(type='SE', where='0', position='after'),))      # any sequence of specs
    assert len(model.attn_plugins_report) == 1


@pytest.mark.parametrize('position', ['after', 'replace'])
def test_blocks_join_the_mode_of_their_host(position):
    """A block injected into a model in eval mode runs in eval mode (CBAM's spatial BN uses its running
    statistics and leaves them alone); one injected into a training model trains."""
    from attn_plugins.injector import inject
    for training in (False, True):
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU()).train(training)
        inject(model, [dict(type='CBAM', where='1', position=position, reduction=2)], example_input=torch.zeros(1, 3, 8, 8))
        blocks = [m for n, m in model.named_modules() if type(m).__name__ == 'CBAM']
        assert len(blocks) == 1 and all(m.training == training for m in blocks[0].modules())
        if not training:
            bn = blocks[0].spatial_gate.bn
            before = bn.running_mean.clone()
            model(torch.randn(2, 3, 8, 8))
            assert torch.equal(bn.running_mean, before) and int(bn.num_batches_tracked) == 0
    # a frozen (eval) norm inside a training model: the block after it follows the model and trains
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8).eval(), torch.nn.ReLU())
    inject(model, [dict(type='CBAM', where='1', position=position, reduction=2)], example_input=torch.zeros(1, 3, 8, 8))
    assert all(m.training for n, m in model.named_modules() if 'attn_cbam' in n or (position == 'replace' and n.startswith('1')))
