"""Numeric parity with the peer implementations after copying weights."""
import pytest
import torch
from mmcv.cnn import NonLocal1d, NonLocal2d, NonLocal3d
from mmseg.models.decode_heads.da_head import CAM, PAM
from timm.layers.cbam import CbamModule
from timm.layers.squeeze_excite import SEModule

from attn_plugins.modules import CBAM, SE, ChannelAttention, NonLocal, PositionAttention
from conftest import randomize


@pytest.mark.parametrize('channels', [64, 256, 72])
def test_se_matches_timm(channels):
    peer = randomize(SEModule(channels))                    # rd_ratio 1/16, rd_divisor 8
    ours = SE(channels, reduction=16, rd_divisor=8)
    ours.load_state_dict({k: v for k, v in peer.state_dict().items()})
    x = torch.randn(2, channels, 9, 7)
    torch.testing.assert_close(ours(x), peer(x), rtol=0, atol=1e-6)


def test_se_paper_width_without_rounding():
    assert SE(256).fc1.out_channels == 16 and SE(72).fc1.out_channels == 4 and SE(2048).fc1.out_channels == 128


def cbam_from_timm(peer: CbamModule) -> CBAM:
    channels = peer.channel.fc1.in_channels
    ours = CBAM(channels, rd_channels=peer.channel.fc1.out_channels, mlp_bias=False)
    sd = peer.state_dict()
    new = {'channel_gate.fc1.weight': sd['channel.fc1.weight'], 'channel_gate.fc2.weight': sd['channel.fc2.weight']}
    # timm pools [mean, max], the authors [max, mean]: swap the 7x7 conv's two input channels
    new['spatial_gate.conv.weight'] = sd['spatial.conv.conv.weight'][:, [1, 0]]
    for k in ('weight', 'bias', 'running_mean', 'running_var', 'num_batches_tracked'):
        new[f'spatial_gate.bn.{k}'] = sd[f'spatial.conv.bn.{k}']
    ours.load_state_dict(new)
    return ours


@pytest.mark.parametrize('channels', [64, 256])
def test_cbam_matches_timm_with_swapped_pool_order(channels):
    peer = randomize(CbamModule(channels)).eval()
    ours = cbam_from_timm(peer).eval()
    x = torch.randn(2, channels, 11, 6)
    torch.testing.assert_close(ours(x), peer(x), rtol=0, atol=1e-5)
    # timm's own concat order reproduced directly
    direct = CBAM(channels, rd_channels=peer.channel.fc1.out_channels, mlp_bias=False, pool_order='mean_max').eval()
    sd = {k.replace('channel.', 'channel_gate.').replace('spatial.conv.conv', 'spatial_gate.conv')
          .replace('spatial.conv.bn', 'spatial_gate.bn'): v for k, v in peer.state_dict().items()}
    direct.load_state_dict(sd)
    torch.testing.assert_close(direct(x), peer(x), rtol=0, atol=1e-5)


def test_cbam_defaults_are_the_authors():
    block = CBAM(256)
    assert block.channel_gate.fc1.bias is not None and block.channel_gate.fc1.out_channels == 16
    assert block.spatial_gate.max_first and block.spatial_gate.conv.bias is None
    assert torch.equal(block.spatial_gate.bn.weight, torch.zeros(1)) and block.spatial_gate.bn.momentum == 0.01


def nonlocal_from_mmcv(peer, dim, mode, sub_sample, norm):
    ours = NonLocal(peer.in_channels, dim=dim, mode=mode, sub_sample=sub_sample, norm=norm, use_scale=peer.use_scale)
    new = {}
    for k, v in peer.state_dict().items():
        k = k.replace('g.0.', 'g.').replace('phi.0.', 'phi.')   # sub_sample wraps g/phi in Sequential
        k = k.replace('.conv.', '.').replace('conv_out.bn.', 'out_norm.').replace('conv_out.', 'out_conv.')
        k = k.replace('concat_project.conv.', 'concat_project.')
        new[k] = v
    new = {k.replace('out_conv.weight', 'out_conv.weight'): v for k, v in new.items()}
    ours.load_state_dict(new)
    return ours


@pytest.mark.parametrize('mode', ['gaussian', 'embedded_gaussian', 'dot_product', 'concatenation'])
@pytest.mark.parametrize('sub_sample', [False, True])
@pytest.mark.parametrize('dim,cls,shape', [(1, NonLocal1d, (2, 16, 14)), (2, NonLocal2d, (2, 16, 6, 8)),
                                           (3, NonLocal3d, (2, 16, 3, 4, 6))])
@pytest.mark.parametrize('norm', [False, True])
def test_nonlocal_matches_mmcv(mode, sub_sample, dim, cls, shape, norm, force_chunks):
    peer = cls(16, mode=mode, sub_sample=sub_sample, norm_cfg=dict(type=f'BN{dim}d' if dim != 2 else 'BN') if norm else None)
    peer = randomize(peer).eval()
    ours = nonlocal_from_mmcv(peer, dim, mode, sub_sample, norm).eval()
    ours.chunk_elements = force_chunks
    x = torch.randn(*shape)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), peer(x), rtol=1e-5, atol=1e-5)


def test_pam_matches_mmseg(force_chunks):
    peer = randomize(PAM(32, 4)).eval()
    ours = PositionAttention(32, qk_channels=4, chunk_elements=force_chunks)
    sd = peer.state_dict()
    ours.load_state_dict({'query.weight': sd['query_project.weight'], 'query.bias': sd['query_project.bias'],
                          'key.weight': sd['key_project.weight'], 'key.bias': sd['key_project.bias'],
                          'value.weight': sd['value_project.weight'], 'value.bias': sd['value_project.bias'],
                          'gamma': sd['gamma.scale']})
    x = torch.randn(2, 32, 7, 9)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), peer(x), rtol=1e-5, atol=1e-5)


def test_cam_matches_mmseg():
    peer = CAM()
    with torch.no_grad():
        peer.gamma.scale.fill_(0.7)
    ours = ChannelAttention(24)
    ours.load_state_dict({'gamma': peer.gamma.scale.detach().clone()})
    x = torch.randn(2, 24, 5, 6) * 0.5
    torch.testing.assert_close(ours(x), peer(x), rtol=1e-5, atol=1e-5)
