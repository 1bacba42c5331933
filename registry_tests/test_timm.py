"""timm: blocks as attn_layer, create_model, paper entrypoints."""
import pytest
import timm
import torch

import attn_plugins
from attn_plugins import ConfigError


def test_blocks_are_valid_attn_layer_values():
    model = timm.create_model('resnet50', block_args=dict(attn_layer=attn_plugins.CBAM))
    assert isinstance(model.layer1[0].se, attn_plugins.CBAM)
    model = timm.create_model('resnet18', block_args=dict(attn_layer=attn_plugins.NonLocal))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 1000)


def test_create_model_resolves_names_and_dicts():
    model = attn_plugins.create_model('resnet26', block_args=dict(attn_layer='SE'))
    assert isinstance(model.layer1[0].se, attn_plugins.SE)
    model = attn_plugins.create_model('resnet26', block_args=dict(attn_layer=dict(type='CBAM', reduction=8)))
    assert model.layer1[0].se.channel_gate.fc1.out_channels == 256 // 8
    with pytest.raises(ConfigError, match="attn_layer.reductio: unknown option for CBAM"):
        attn_plugins.create_model('resnet26', block_args=dict(attn_layer=dict(type='CBAM', reductio=8)))
    with pytest.raises(ConfigError, match="unknown timm model 'resnet5O'; did you mean 'resnet50'"):
        attn_plugins.create_model('resnet5O')
    with pytest.raises(ConfigError, match='would download weights'):
        attn_plugins.create_model('resnet18', pretrained=True)


def test_entrypoints_are_listed():
    assert 'ap_cbam_resnet50' in timm.list_models('*cbam*')
    names = set(timm.list_models('ap_*'))
    assert {'ap_seresnet50', 'ap_cbam_resnet50', 'ap_danet_resnet50d8', 'ap_nonlocal_resnet50', 'ap_gaze_resnet50',
            'ap_vgg16_att3_concat_pc', 'ap_vgg16_att3_concat_dp', 'ap_vgg16_att3_indep_pc',
            'ap_vgg16_att3_indep_dp'} <= names


@pytest.mark.parametrize('name,size,out', [
    ('ap_seresnet50', 64, (1, 1000)), ('ap_cbam_resnet50', 64, (1, 1000)), ('ap_nonlocal_resnet50', 64, (1, 1000)),
    ('ap_gaze_resnet50', 64, (1, 2)), ('ap_vgg16_att3_concat_pc', 32, (1, 100)),
])
def test_entrypoints_build_and_run(name, size, out):
    model = timm.create_model(name).eval()
    assert model(torch.randn(1, 3, size, size)).shape == out
    with pytest.raises(ConfigError):
        timm.create_model(name, pretrained=True)


def test_nonlocal_resnet50_has_five_blocks_in_res3_res4():
    model = timm.create_model('ap_nonlocal_resnet50')
    assert [r.path for r in model.attn_plugins_report] == ['layer2.1', 'layer2.3', 'layer3.1', 'layer3.3', 'layer3.5']


def test_danet_trunk_is_a_dilated_features_model():
    model = timm.create_model('ap_danet_resnet50d8', features_only=True, out_indices=(2, 3, 4))
    feats = model(torch.randn(1, 3, 64, 64))
    assert [tuple(f.shape) for f in feats] == [(1, 512, 8, 8), (1, 1024, 8, 8), (1, 2048, 8, 8)]
    assert isinstance(model.layer4.attn_dual_attention, attn_plugins.DualAttention)


# ---------------------------------------------------------------- entrypoint options (timm passes kwargs through)
AP_MODELS = ['ap_seresnet50', 'ap_cbam_resnet50', 'ap_danet_resnet50d8', 'ap_nonlocal_resnet50', 'ap_gaze_resnet50',
             'ap_vgg16_att3_concat_pc', 'ap_vgg16_att3_concat_dp', 'ap_vgg16_att3_indep_pc', 'ap_vgg16_att3_indep_dp']


def test_entrypoints_take_their_blocks_options():
    model = timm.create_model('ap_cbam_resnet50', reduction=8, pool_order='mean_max')
    gate = model.layer1[0].se
    assert gate.channel_gate.fc1.out_channels == 256 // 8 and not gate.spatial_gate.max_first
    model = timm.create_model('ap_seresnet50', attn_cfg=dict(act_layer='silu'), act_layer='relu')  # act_layer: ResNet's
    assert isinstance(model.layer1[0].se.act, torch.nn.SiLU) and isinstance(model.layer1[0].act1, torch.nn.ReLU)
    model = timm.create_model('ap_nonlocal_resnet50', mode='dot_product', sub_sample=True)
    assert {(r.type, r.options['mode'], r.options['sub_sample']) for r in model.attn_plugins_report} == {
        ('NonLocal', 'dot_product', True)}
    assert timm.create_model('ap_danet_resnet50d8', qk_channels=32).layer4.attn_dual_attention.pam.qk_channels == 32
    assert timm.create_model('ap_gaze_resnet50', hidden_channels=64).layer4.attn_spatial_weights.conv1.out_channels == 64
    model = timm.create_model('ap_vgg16_att3_indep_dp', normalize='sigmoid', num_classes=10)
    assert model.attention[0].normalize == 'sigmoid' and model(torch.randn(2, 3, 32, 32)).shape == (2, 10)


def test_entrypoints_take_extra_plugins_after_their_own():
    plugins = [dict(type='SE', where='layer4.*', position='after:bn3')]
    model = timm.create_model('ap_nonlocal_resnet50', plugins=plugins)
    assert [(r.path, r.type) for r in model.attn_plugins_report][-4:] == [
        ('layer3.5', 'NonLocal'), ('layer4.0.bn3', 'SE'), ('layer4.1.bn3', 'SE'), ('layer4.2.bn3', 'SE')]
    # with features_only the paths are those of the full model, as for attn_plugins.create_model
    feats = timm.create_model('ap_cbam_resnet50', features_only=True, out_indices=(4,),
                              plugins=[dict(type='DualAttention', where='layer4')])
    assert isinstance(feats.layer4.attn_dual_attention, attn_plugins.DualAttention)
    vgg = timm.create_model('ap_vgg16_att3_concat_pc', plugins=[dict(type='SE', where='stages.0.3')])
    assert [r.path for r in vgg.attn_plugins_report] == ['stages.0.3']


def test_entrypoint_unknown_option_is_a_clear_type_error():
    with pytest.raises(ConfigError, match="ap_cbam_resnet50: unknown option 'reductoin'; did you mean 'reduction'"):
        timm.create_model('ap_cbam_resnet50', reductoin=8)
    with pytest.raises(TypeError, match="unknown option 'not_a_model_arg'"):   # what timm's own tests expect
        timm.create_model('ap_vgg16_att3_concat_pc', not_a_model_arg=1)
    with pytest.raises(ConfigError, match="compatibility is set by the model name"):
        timm.create_model('ap_vgg16_att3_concat_pc', compatibility='dp')
    with pytest.raises(ConfigError, match="attn_cfg.mlp_bais: unknown option for CBAM; did you mean 'mlp_bias'"):
        timm.create_model('ap_cbam_resnet50', attn_cfg=dict(mlp_bais=False))


@pytest.mark.parametrize('name', AP_MODELS)
def test_default_cfg_matches_the_model(name):
    """pool_size, num_features and the cfg's layer names, as timm's test_model_default_cfgs checks
    (at a smaller input: pool_size scales with it)."""
    model = timm.create_model(name).eval()
    cfg = model.default_cfg
    size = 32 if cfg['input_size'][-1] == 32 else 64
    with torch.no_grad():
        feats = model.forward_features(torch.randn(1, 3, size, size))
    scale = size / cfg['input_size'][-1]
    assert feats.shape[1] == model.num_features
    assert tuple(feats.shape[-2:]) == tuple(max(1, round(p * scale)) for p in cfg['pool_size']), cfg['pool_size']
    keys = model.state_dict()
    classifiers = cfg['classifier'] if isinstance(cfg['classifier'], tuple) else (cfg['classifier'],)
    assert all(f'{c}.weight' in keys for c in (cfg['first_conv'], *classifiers))
    assert model.num_classes == cfg['num_classes']


@pytest.mark.parametrize('name,size', [('ap_vgg16_att3_indep_pc', 32), ('ap_danet_resnet50d8', 64)])
def test_features_only_models_carry_timm_metadata(name, size):
    model = timm.create_model(name, features_only=True).eval()
    assert model.default_cfg['input_size'][0] == 3
    feats = model(torch.randn(1, 3, size, size))
    assert [f.shape[1] for f in feats] == model.feature_info.channels()
    assert [size // f.shape[-1] for f in feats] == model.feature_info.reduction()
