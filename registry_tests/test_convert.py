"""Checkpoint converters (integrations/convert.py) on the peers' real state-dict keys: every peer key
lands on an existing key of ours with the same shape, every key of ours is covered, and keys that
the two name differently are really renamed. (Output parity after conversion: test_parity.py,
test_seg.py.)"""
import pytest
import torch
from mmcv.cnn import NonLocal1d, NonLocal2d, NonLocal3d
from mmengine.registry import init_default_scope
from mmseg.models.decode_heads.da_head import PAM

from attn_plugins.integrations.convert import (convert_dahead_state_dict, convert_nlhead_state_dict,
                                               convert_segmentor_state_dict, nonlocal_key, pam_key)
from attn_plugins.modules import NonLocal, PositionAttention
from conftest import randomize


def assert_maps_onto(peer_state: dict, ours_state: dict, converted: dict) -> None:
    """`converted` (the converter applied to `peer_state`) is exactly our key set, same shapes and
    values, and the keys our model names differently were renamed."""
    assert len(converted) == len(peer_state), 'two peer keys converted to one'
    missing, unexpected = sorted(set(ours_state) - set(converted)), sorted(set(converted) - set(ours_state))
    assert not missing and not unexpected, f'missing {missing}, unexpected {unexpected}'
    for key, value in converted.items():
        assert value.shape == ours_state[key].shape, key
    renamed = set(peer_state) - set(ours_state)
    assert renamed, 'the peer names no parameter differently: this test would not see a missing rename'
    assert not renamed & set(converted), f'left unconverted: {sorted(renamed & set(converted))}'
    assert sorted(v.data_ptr() for v in converted.values()) == sorted(v.data_ptr() for v in peer_state.values())


def convert_keys(state: dict, key_fn) -> dict:
    return {key_fn(k): v for k, v in state.items()}


@pytest.mark.parametrize('mode', ['gaussian', 'embedded_gaussian', 'dot_product', 'concatenation'])
@pytest.mark.parametrize('sub_sample', [False, True])
@pytest.mark.parametrize('dim,cls', [(1, NonLocal1d), (2, NonLocal2d), (3, NonLocal3d)])
@pytest.mark.parametrize('norm', [False, True])
def test_mmcv_nonlocal_keys(mode, sub_sample, dim, cls, norm):
    peer = cls(16, mode=mode, sub_sample=sub_sample, norm_cfg=dict(type='BN' if dim == 2 else f'BN{dim}d') if norm else None)
    ours = NonLocal(16, dim=dim, mode=mode, sub_sample=sub_sample, norm=norm)
    peer_state = peer.state_dict()
    assert_maps_onto(peer_state, ours.state_dict(), convert_keys(peer_state, nonlocal_key))


def test_mmseg_pam_keys():
    peer_state = PAM(32, 4).state_dict()
    assert_maps_onto(peer_state, PositionAttention(32, qk_channels=4).state_dict(), convert_keys(peer_state, pam_key))


def build(cfg):
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    return MODELS.build(cfg)


HEAD_CFG = dict(in_channels=32, channels=16, num_classes=5, norm_cfg=dict(type='BN'), dropout_ratio=0.1)


def test_mmseg_dahead_keys():
    peer_state = build(dict(type='DAHead', pam_channels=4, **HEAD_CFG)).state_dict()
    ours_state = build(dict(type='DualAttentionHead', pam_channels=4, **HEAD_CFG)).state_dict()
    assert_maps_onto(peer_state, ours_state, convert_dahead_state_dict(peer_state))


@pytest.mark.parametrize('mode', ['embedded_gaussian', 'dot_product', 'concatenation', 'gaussian'])
def test_mmseg_nlhead_keys(mode):
    peer_state = build(dict(type='NLHead', mode=mode, **HEAD_CFG)).state_dict()
    ours_state = build(dict(type='NonLocalHead', mode=mode, **HEAD_CFG)).state_dict()
    assert_maps_onto(peer_state, ours_state, convert_nlhead_state_dict(peer_state))


def segmentor(head: dict) -> dict:
    """A small mmseg EncoderDecoder (ResNet-18-D8 as in mmseg's configs, FCN auxiliary head)."""
    norm = dict(type='BN')
    return dict(type='EncoderDecoder', data_preprocessor=dict(type='SegDataPreProcessor'),
                backbone=dict(type='ResNetV1c', depth=18, strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4), norm_cfg=norm),
                decode_head=dict(in_channels=512, in_index=3, channels=32, num_classes=5, norm_cfg=norm, **head),
                auxiliary_head=dict(type='FCNHead', in_channels=256, in_index=2, channels=16, num_convs=1,
                                    num_classes=5, norm_cfg=norm))


@pytest.mark.parametrize('peer_head,ours_head', [
    (dict(type='DAHead', pam_channels=8), dict(type='DualAttentionHead', pam_channels=8)),
    (dict(type='NLHead', mode='concatenation'), dict(type='NonLocalHead', mode='concatenation'))],
    ids=['DAHead', 'NLHead'])
def test_mmseg_segmentor_checkpoint_converts(peer_head, ours_head):
    """A whole mmseg checkpoint: decode_head keys renamed, backbone and auxiliary head untouched, same outputs."""
    peer, ours = randomize(build(segmentor(peer_head))).eval(), build(segmentor(ours_head)).eval()
    peer_state = peer.state_dict()
    converted = convert_segmentor_state_dict(peer_state)
    assert_maps_onto(peer_state, ours.state_dict(), converted)
    assert all(converted[k] is v for k, v in peer_state.items() if not k.startswith('decode_head.'))
    ours.load_state_dict(converted)
    x = torch.randn(1, 3, 32, 48)
    with torch.no_grad():
        got, want = ours(x, mode='tensor'), peer(x, mode='tensor')
    torch.testing.assert_close(got if torch.is_tensor(got) else got[0], want if torch.is_tensor(want) else want[0],
                               rtol=1e-4, atol=1e-4)


def test_segmentor_without_a_convertible_head_is_left_alone():
    state = {'backbone.conv1.weight': torch.zeros(1), 'decode_head.conv_seg.weight': torch.ones(1)}
    assert convert_segmentor_state_dict(state) == state
