"""Numeric parity with the peer implementations after copying weights, in inference and in training
(outputs, input and parameter gradients, BN statistics)."""
import types

import pytest
import torch
from mmcv.cnn import NonLocal1d, NonLocal2d, NonLocal3d
from mmseg.models.decode_heads.da_head import CAM, PAM
from timm.layers.cbam import CbamModule
from timm.layers.squeeze_excite import SEModule

from attn_plugins.integrations.convert import nonlocal_key, pam_key
from attn_plugins.modules import CBAM, SE, ChannelAttention, NonLocal, PositionAttention
from blocks_zoo import assert_chunked, set_chunk_rows
from conftest import randomize


def assert_same_training_step(ours, peer, x, key_map, grad_map=lambda key, g: g, rtol=1e-7, atol=1e-9):
    """Both in training mode and float64: equal outputs, input gradients and parameter gradients
    (peer key -> our key by `key_map`; `grad_map` rearranges a peer gradient where the weights were
    rearranged)."""
    ours.double().train(), peer.double().train()
    x = x.double()
    x_ours, x_peer = x.clone().requires_grad_(), x.clone().requires_grad_()
    y_ours, y_peer = ours(x_ours), peer(x_peer)
    torch.testing.assert_close(y_ours, y_peer, rtol=rtol, atol=atol)
    upstream = torch.randn_like(y_peer)   # a generic loss gradient
    y_ours.backward(upstream)
    y_peer.backward(upstream)
    torch.testing.assert_close(x_ours.grad, x_peer.grad, rtol=rtol, atol=atol)
    ours_params = dict(ours.named_parameters())
    peer_params = dict(peer.named_parameters())
    assert sorted(key_map(k) for k in peer_params) == sorted(ours_params)
    for key, p in peer_params.items():
        assert p.grad is not None, key
        torch.testing.assert_close(ours_params[key_map(key)].grad, grad_map(key, p.grad), rtol=rtol, atol=atol,
                                   msg=lambda m: f'{key}: {m}')


@pytest.mark.parametrize('channels', [64, 256, 72])
def test_se_matches_timm(channels):
    peer = randomize(SEModule(channels))                    # rd_ratio 1/16, rd_divisor 8
    ours = SE(channels, reduction=16, rd_divisor=8)
    ours.load_state_dict({k: v for k, v in peer.state_dict().items()})
    x = torch.randn(2, channels, 9, 7)
    torch.testing.assert_close(ours(x), peer(x), rtol=0, atol=1e-6)


@pytest.mark.parametrize('channels', [64, 72])
def test_se_matches_timm_in_training(channels):
    peer = randomize(SEModule(channels))
    ours = SE(channels, reduction=16, rd_divisor=8)
    ours.load_state_dict(peer.state_dict())
    assert_same_training_step(ours, peer, torch.randn(2, channels, 9, 7), key_map=lambda k: k)


def test_se_paper_width_without_rounding():
    assert SE(256).fc1.out_channels == 16 and SE(72).fc1.out_channels == 4 and SE(2048).fc1.out_channels == 128


def cbam_key(key: str) -> str:
    """timm CbamModule key -> ours."""
    return (key.replace('channel.', 'channel_gate.').replace('spatial.conv.conv.', 'spatial_gate.conv.')
            .replace('spatial.conv.bn.', 'spatial_gate.bn.'))


def swap_pool_channels(key: str, tensor: torch.Tensor) -> torch.Tensor:
    """timm pools [mean, max], the authors [max, mean]: swap the 7x7 conv's two input channels."""
    return tensor[:, [1, 0]] if key == 'spatial.conv.conv.weight' else tensor


def cbam_from_timm(peer: CbamModule, pool_order: str = 'max_mean') -> CBAM:
    mlp_bias = peer.channel.fc1.bias is not None
    ours = CBAM(peer.channel.fc1.in_channels, rd_channels=peer.channel.fc1.out_channels, mlp_bias=mlp_bias,
                pool_order=pool_order)
    swap = swap_pool_channels if pool_order == 'max_mean' else (lambda key, t: t)
    ours.load_state_dict({cbam_key(k): swap(k, v) for k, v in peer.state_dict().items()})
    ours.spatial_gate.bn.momentum = peer.spatial.conv.bn.momentum    # authors 0.01, timm 0.1
    return ours


@pytest.mark.parametrize('mlp_bias', [False, True])
@pytest.mark.parametrize('pool_order', ['max_mean', 'mean_max'])
@pytest.mark.parametrize('channels', [64, 256])
def test_cbam_matches_timm(channels, pool_order, mlp_bias):
    peer = randomize(CbamModule(channels, mlp_bias=mlp_bias)).eval()
    ours = cbam_from_timm(peer, pool_order).eval()
    x = torch.randn(2, channels, 11, 6)
    torch.testing.assert_close(ours(x), peer(x), rtol=0, atol=1e-5)


@pytest.mark.parametrize('mlp_bias', [False, True])
@pytest.mark.parametrize('pool_order', ['max_mean', 'mean_max'])
def test_cbam_matches_timm_in_training(pool_order, mlp_bias):
    peer = randomize(CbamModule(64, mlp_bias=mlp_bias))
    ours = cbam_from_timm(peer, pool_order)
    swap = swap_pool_channels if pool_order == 'max_mean' else (lambda key, t: t)
    assert_same_training_step(ours, peer, torch.randn(3, 64, 11, 6), key_map=cbam_key, grad_map=swap)
    # the spatial BN updated its running statistics from the same batch statistics
    torch.testing.assert_close(ours.spatial_gate.bn.running_mean, peer.spatial.conv.bn.running_mean)
    torch.testing.assert_close(ours.spatial_gate.bn.running_var, peer.spatial.conv.bn.running_var)


def test_cbam_defaults_are_the_authors():
    block = CBAM(256)
    assert block.channel_gate.fc1.bias is not None and block.channel_gate.fc1.out_channels == 16
    assert block.spatial_gate.max_first and block.spatial_gate.conv.bias is None
    assert torch.equal(block.spatial_gate.bn.weight, torch.zeros(1)) and block.spatial_gate.bn.momentum == 0.01


def nonlocal_from_mmcv(peer, dim, mode, sub_sample, norm):
    """Our NonLocal with the peer's weights, converted by the checkpoint converter's key map."""
    ours = NonLocal(peer.in_channels, dim=dim, mode=mode, sub_sample=sub_sample, norm=norm, use_scale=peer.use_scale)
    ours.load_state_dict({nonlocal_key(k): v for k, v in peer.state_dict().items()})
    return ours


NONLOCAL_CASES = [(1, NonLocal1d, (2, 16, 14)), (2, NonLocal2d, (2, 16, 6, 8)), (3, NonLocal3d, (2, 16, 3, 4, 6))]


def mmcv_nonlocal(cls, dim, mode, sub_sample, norm, differentiable=False):
    norm_cfg = dict(type=f'BN{dim}d' if dim != 2 else 'BN') if norm else None
    peer = randomize(cls(16, mode=mode, sub_sample=sub_sample, norm_cfg=norm_cfg))
    if differentiable and mode == 'concatenation':
        peer.concatenation = types.MethodType(mmcv_concatenation_out_of_place, peer)
    return peer


def mmcv_concatenation_out_of_place(self, theta_x, phi_x):
    """mmcv 2.1's `_NonLocalNd.concatenation` with its `pairwise_weight /= N` made out of place.
    As released it divides the (in-place) ReLU's output in place, so that mode cannot backward
    (test_mmcv_concatenation_cannot_backward); the forward is unchanged."""
    h, w = theta_x.size(2), phi_x.size(3)
    concat_feature = torch.cat([theta_x.repeat(1, 1, 1, w), phi_x.repeat(1, 1, h, 1)], dim=1)
    pairwise_weight = self.concat_project(concat_feature)
    n, _, h, w = pairwise_weight.size()
    return pairwise_weight.view(n, h, w) / w


def test_mmcv_concatenation_cannot_backward():
    """Why the training parity patches mmcv (drop the patch when this fails)."""
    peer = NonLocal2d(16, mode='concatenation')
    x = torch.randn(1, 16, 4, 5, requires_grad=True)
    with pytest.raises(RuntimeError, match='modified by an inplace operation'):
        peer(x).sum().backward()


@pytest.mark.parametrize('mode', ['gaussian', 'embedded_gaussian', 'dot_product', 'concatenation'])
@pytest.mark.parametrize('sub_sample', [False, True])
@pytest.mark.parametrize('dim,cls,shape', NONLOCAL_CASES)
@pytest.mark.parametrize('norm', [False, True])
@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
def test_nonlocal_matches_mmcv(mode, sub_sample, dim, cls, shape, norm, training, force_chunks, bmm_spy):
    peer = mmcv_nonlocal(cls, dim, mode, sub_sample, norm, differentiable=training)
    ours = nonlocal_from_mmcv(peer, dim, mode, sub_sample, norm)
    x = torch.randn(*shape)
    sizes = set_chunk_rows(ours, x, rows=3)
    bmm_spy.shapes.clear()
    if training:
        assert_same_training_step(ours, peer, x, key_map=nonlocal_key)
        if norm:
            torch.testing.assert_close(ours.out_norm.running_var, peer.conv_out.bn.running_var)
    else:
        ours.eval(), peer.eval()
        with torch.no_grad():
            torch.testing.assert_close(ours(x), peer(x), rtol=1e-5, atol=1e-5)
    if mode != 'dot_product':          # dot_product never forms the map (θ (φᵀ g) / N)
        assert_chunked(bmm_spy, sizes, rows=3)


@pytest.mark.parametrize('training', [False, True], ids=['eval', 'train'])
def test_pam_matches_mmseg(training, force_chunks, bmm_spy):
    peer = randomize(PAM(32, 4))
    ours = PositionAttention(32, qk_channels=4)
    ours.load_state_dict({pam_key(k): v for k, v in peer.state_dict().items()})
    x = torch.randn(2, 32, 7, 9)
    sizes = set_chunk_rows(ours, x, rows=5)           # 63 positions: 12 chunks of 5 and one of 3
    bmm_spy.shapes.clear()
    if training:
        assert_same_training_step(ours, peer, x, key_map=pam_key)
    else:
        ours.eval(), peer.eval()
        with torch.no_grad():
            torch.testing.assert_close(ours(x), peer(x), rtol=1e-5, atol=1e-5)
    assert_chunked(bmm_spy, sizes, rows=5)


def test_cam_matches_mmseg():
    peer = CAM()
    with torch.no_grad():
        peer.gamma.scale.fill_(0.7)
    ours = ChannelAttention(24)
    ours.load_state_dict({'gamma': peer.gamma.scale.detach().clone()})
    x = torch.randn(2, 24, 5, 6) * 0.5
    torch.testing.assert_close(ours(x), peer(x), rtol=1e-5, atol=1e-5)
    assert_same_training_step(ours, peer, x, key_map=lambda k: {'gamma.scale': 'gamma'}[k])
