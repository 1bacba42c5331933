"""Facts from the papers: parameter counts, formulas, the PCA loss."""
import pytest
import timm
import torch

import attn_plugins  # noqa: F401  - registers the entrypoints
from attn_plugins import modules as m


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_se_resnet50_has_paper_parameter_count():
    base, se = n_params(timm.create_model('resnet50')), n_params(timm.create_model('ap_seresnet50'))
    # 2/r * sum N_s C_s^2 weights + biases (paper: 2,530,992 extra, 28.09M in all)
    stages = [(3, 256), (4, 512), (6, 1024), (3, 2048)]
    extra = sum(n * (2 * c * (c // 16) + c // 16 + c) for n, c in stages)
    assert extra == 2_530_992 and se - base == extra
    assert round(se / 1e6, 2) == 28.09 and se == n_params(timm.create_model('seresnet50'))


def test_cbam_resnet50_parameter_count():
    cbam = n_params(timm.create_model('ap_cbam_resnet50'))
    spatial = 2 * 49 + 2                      # 7x7 conv (2 -> 1, no bias) + BN affine
    assert cbam - n_params(timm.create_model('resnet50')) == 2_530_992 + 16 * spatial
    assert round(cbam / 1e6, 2) == 28.09


def test_pay_attention_formula_pc_and_dp():
    torch.manual_seed(0)
    local, g = torch.randn(2, 6, 3, 4), torch.randn(2, 10)
    block = m.PayAttention(6, 10, compatibility='pc')
    attended, attn = block(local, g)
    proj = torch.einsum('oc,bchw->bohw', block.project.weight[:, :, 0, 0], local)
    c = torch.einsum('c,bchw->bhw', block.u.weight.flatten(), proj + g[:, :, None, None]).flatten(1)
    a = torch.softmax(c, 1)
    torch.testing.assert_close(attn.flatten(1), a)
    torch.testing.assert_close(attended, torch.einsum('bn,bcn->bc', a, local.flatten(2)))
    # dp: c_i = ⟨l_i, g⟩, written out per position and channel
    dp = m.PayAttention(6, 6, compatibility='dp')
    g6 = torch.randn(2, 6)
    attended, attn = dp(local, g6)
    assert isinstance(dp.project, torch.nn.Identity) and dp.u is None
    c = torch.tensor([[[sum(local[b, k, i, j].item() * g6[b, k].item() for k in range(6)) for j in range(4)]
                       for i in range(3)] for b in range(2)])
    a = torch.softmax(c.flatten(1), 1)
    torch.testing.assert_close(attn.flatten(1), a)
    torch.testing.assert_close(attended, torch.einsum('bn,bcn->bc', a, local.flatten(2)))
    # dp with a projection: c_i = ⟨P l_i, g⟩, the attended vector still sums the unprojected l_i
    dp = m.PayAttention(6, 10, compatibility='dp')
    attended, attn = dp(local, g)
    c = torch.einsum('bchw,bc->bhw', torch.einsum('oc,bchw->bohw', dp.project.weight[:, :, 0, 0], local), g)
    torch.testing.assert_close(attn.flatten(1), torch.softmax(c.flatten(1), 1))
    torch.testing.assert_close(attended, torch.einsum('bn,bcn->bc', attn.flatten(1), local.flatten(2)))


@pytest.mark.parametrize('name', ['ap_vgg16_att3_concat_pc', 'ap_vgg16_att3_indep_dp'])
def test_vgg_att3_attends_layers_7_10_13(name):
    model = timm.create_model(name, num_classes=100)
    convs = [mod for mod in model.stages.modules() if isinstance(mod, torch.nn.Conv2d)]
    # no pooling in layers 1-7: conv 7, 10 and 13 end the first three stages (authors' VGG-att3)
    assert len(convs) == 15 and [convs[i - 1].out_channels for i in (7, 10, 13)] == [256, 512, 512]
    assert [[m for m in s if isinstance(m, torch.nn.Conv2d)][-1] for s in model.stages[:3]] == \
        [convs[6], convs[9], convs[12]]
    vectors, maps = model.forward_attention(torch.randn(2, 3, 32, 32))
    assert [tuple(v.shape) for v in vectors] == [(2, 256), (2, 512), (2, 512)]
    assert [tuple(a.shape[2:]) for a in maps] == [(32, 32), (16, 16), (8, 8)]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 100)


def test_pyramid_pca_loss_learns_the_principal_subspace():
    """Minimising the PCA loss alone on fixed features recovers their top-K principal subspace."""
    torch.manual_seed(0)
    fuse, k = 8, 2
    block = m.PyramidAttention(8, in_channels=[8], fuse_channels=fuse, num_components=k)
    with torch.no_grad():                     # fused = input, so the data's PCA is known
        block.reduce[0].weight.copy_(torch.eye(fuse)[:, :, None, None])
        block.reduce[0].bias.zero_()
    basis = torch.linalg.qr(torch.randn(fuse, fuse))[0]
    scales = torch.tensor([5.0, 3.0, 0.3, 0.2, 0.1, 0.1, 0.05, 0.05])
    x = torch.einsum('cd,bdn->bcn', basis * scales, torch.randn(4, fuse, 64)).reshape(4, fuse, 8, 8)
    opt = torch.optim.Adam([block.components], lr=0.05)
    block.train()
    for _ in range(300):
        block(x)
        opt.zero_grad()
        block.pca_loss.backward()
        opt.step()
    w = block.components[0].detach()
    centred = x.flatten(2) - x.flatten(2).mean(-1, keepdim=True)
    top = torch.linalg.svd(centred.transpose(0, 1).reshape(fuse, -1), full_matrices=False)[0][:, :k]
    learned_proj, true_proj = w @ w.t(), top @ top.t()
    assert torch.dist(learned_proj, true_proj) < 0.05
    assert block.pca_loss.item() < 0.02


def test_pyramid_accepts_video_and_frame_lists():
    video = m.PyramidAttention(16, in_channels=[16, 32], dim=3)
    y = video([torch.randn(2, 16, 4, 6, 6), torch.randn(2, 32, 2, 3, 3)])
    assert y.shape == (2, 16, 4, 6, 6)
    frames = m.PyramidAttention(16, in_channels=[16] * 5)
    clip = [torch.randn(1, 16, 7, 7) for _ in range(5)]
    assert frames(clip).shape == (1, 16, 7, 7)
    frames.eval()
    assert frames.pca_loss is not None   # computed while training only; kept from the last step
