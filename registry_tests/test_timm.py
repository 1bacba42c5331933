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
