"""`attn-plugins plan` and `attn-plugins viz` (tools/visualize.py), the FLOP counter behind plan
(attn_plugins.analysis) and the blocks' query_attention used by viz."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn as nn

from attn_plugins.analysis import count_flops
from attn_plugins.cli import main
from attn_plugins.modules import CBAM, NonLocal, PositionAttention
from conftest import randomize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEG_TOY = os.path.join(ROOT, 'configs', 'seg', 'toy')


def se_params(c: int, r: int = 16) -> int:
    """SE by hand: 1x1 conv C -> C/r and C/r -> C, both with biases."""
    return c * (c // r) + c // r + (c // r) * c + c


# ---------------------------------------------------------------- plan
def test_plan_se_fcn_toy_rows_totals_and_json(tmp_path, capsys):
    config = os.path.join(SEG_TOY, 'se_fcn_r50-d8_toy.yaml')
    out = tmp_path / 'plan.json'
    assert main(['plan', config, '--json', str(out)]) == 0
    text = capsys.readouterr().out
    plan = json.loads(out.read_text())
    assert plan['input_shape'] == [1, 3, 96, 96] and plan['input_shape_from'] == 'model.data_preprocessor.size'
    rows = plan['insertions']
    # the ResNet-50 at 1/4 width: 3, 4, 6, 3 bottlenecks of 64, 128, 256, 512 output channels
    expected = [(f'backbone.layer{i + 1}.{j}.se', 64 << i) for i, n in enumerate((3, 4, 6, 3)) for j in range(n)]
    assert [(r['path'], r['channels']) for r in rows] == expected
    # 96x96 input: stride 4 after the stem, 8 from layer2 on (D8: dilated layer3/4)
    side = {64: 24, 128: 12, 256: 12, 512: 12}
    for r in rows:
        c, hw = r['channels'], side[r['channels']] ** 2
        assert r['type'] == 'SE' and r['via'] == 'plugin after_conv3 of Bottleneck' and r['calls'] == 1
        assert r['params'] == se_params(c)
        assert r['macs'] == 2 * c * (c // 16)                      # the two 1x1 convs on the pooled vector
        assert r['other_flops'] == c * hw + c // 16 + c + c * hw   # mean, ReLU, sigmoid, x * s
        assert r['path'] in text
    totals = plan['totals']
    added = sum(se_params(c) for _, c in expected)
    assert totals['added']['params'] == added
    assert totals['with_blocks']['params'] - totals['without_blocks']['params'] == added
    assert totals['added']['flops'] == sum(r['flops'] for r in rows)
    assert 'total without blocks' in text and f"{totals['with_blocks']['params']:,}" in text
    assert plan['uncounted_ops'] == {}

    # 'without blocks' is what the same config without its plugins builds and computes
    from attn_plugins.config import load_config
    from attn_plugins.plan import build_config_model, forward_call
    cfg = load_config(config)
    cfg.model.backbone.plugins = None
    plain = build_config_model(cfg).eval()
    count, _ = count_flops(forward_call(plain, torch.randn(1, 3, 96, 96), 'mmseg'))
    assert sum(p.numel() for p in plain.parameters()) == totals['without_blocks']['params']
    assert count.total['macs'] == totals['without_blocks']['macs']
    assert count.total['macs'] + count.total['other'] == totals['without_blocks']['flops']


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize('spec, message', [
    ("{type: CBMA, where: 'layer1.*', position: 'after:bn2'}", "unknown block type 'CBMA'; did you mean 'CBAM'?"),
    ("{type: SE, where: 'layer9.*', position: 'after:bn2'}", "pattern 'layer9.*' matches no module"),
])
def test_plan_bad_spec_exit_2_one_line(tmp_path, capsys, spec, message):
    config = write(tmp_path, 'bad.yaml', f"model:\n  type: timm/resnet18\n  plugins:\n    - {spec}\n")
    assert main(['plan', config]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('attn-plugins plan: error: ') and message in err


def test_plan_unknown_openmmlab_plugin_type_names_the_key(capsys):
    config = os.path.join(SEG_TOY, 'se_fcn_r50-d8_toy.yaml')
    assert main(['plan', config, '--cfg-options', 'model.backbone.plugins.0.cfg.type=SEE']) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "model.backbone.plugins.0.cfg.type: unknown type 'SEE'" in err and "did you mean 'SE'" in err


def test_plan_timm_config_injected_blocks(tmp_path, capsys):
    config = write(tmp_path, 'timm.yaml', "model:\n  type: timm/resnet18\n  plugins:\n"
                   "    - {type: CBAM, where: 'layer4.*', position: 'after:bn2'}\n"
                   "    - {type: NonLocal, where: 'layer3.1', position: after}\n")
    out = tmp_path / 'p.json'
    assert main(['plan', config, '--input-shape', '64,64', '--json', str(out)]) == 0
    plan = json.loads(out.read_text())
    rows = {r['path']: r for r in plan['insertions']}
    assert list(rows) == ['layer3.1.attn_non_local', 'layer4.0.se', 'layer4.1.se']
    assert rows['layer4.0.se']['via'] == 'inject after layer4.0.bn2'
    # NonLocal(256) by hand: theta, phi, g (256 -> 128, biases), W_z (128 -> 256, no bias), BN(256)
    assert rows['layer3.1.attn_non_local']['params'] == 3 * (256 * 128 + 128) + 128 * 256 + 2 * 256
    # its products at 4x4 (64 / 16): three 1x1 convs, theta phi^T and attention x g (16 x 16 x 128), W_z
    n = 16
    assert rows['layer3.1.attn_non_local']['macs'] == 3 * n * 256 * 128 + 2 * n * n * 128 + n * 128 * 256
    # CBAM(512): shared MLP 512 -> 32 -> 512 with biases, 7x7 conv on 2 maps, BN(1)
    assert rows['layer4.0.se']['params'] == 2 * 512 * 32 + 32 + 512 + 2 * 49 + 2
    assert plan['totals']['without_blocks']['params'] == 11689512        # timm resnet18


def test_plan_counts_peer_blocks_timm_seresnet18(tmp_path):
    """timm's own SE layers are found too, and seresnet18 without them is resnet18."""
    config = write(tmp_path, 'se.yaml', "model:\n  type: timm/seresnet18\n")
    out = tmp_path / 'p.json'
    assert main(['plan', config, '--input-shape', '64,64', '--json', str(out)]) == 0
    plan = json.loads(out.read_text())
    rows = plan['insertions']
    assert [(r['path'], r['type'], r['channels']) for r in rows] == [
        (f'layer{i + 1}.{j}.se', 'SEModule', 64 << i) for i in range(4) for j in range(2)]
    for r in rows:       # timm rounds C/16 up to a multiple of 8
        c = r['channels']
        rd = max(8, c // 16)
        assert r['params'] == 2 * c * rd + rd + c
    assert plan['totals']['without_blocks']['params'] == 11689512        # timm resnet18


def test_macs_match_mmengine_for_products():
    """Our 'macs' are mmengine.analysis' counts of convolutions and matrix products."""
    from mmengine.analysis import FlopAnalyzer
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), CBAM(16, reduction=4), PositionAttention(16, reduction=4),
                          nn.Conv2d(16, 8, 1)).eval()
    x = torch.randn(1, 3, 12, 10)
    count, _ = count_flops(lambda: model(x))
    analyzer = FlopAnalyzer(model, (x,))
    analyzer.unsupported_ops_warnings(False)
    ops = analyzer.by_operator()
    assert count.total['macs'] == sum(v for k, v in ops.items() if k in ('conv', 'bmm', 'matmul', 'addmm', 'linear'))


def test_non_local_concatenation_products_all_counted():
    """Its w^T [theta; phi] split runs as matrix-vector products (mv): counted, not left out."""
    block = NonLocal(16, mode='concatenation').eval()
    count, _ = count_flops(lambda: block(torch.randn(1, 16, 6, 8)), [('nl', block)])
    n, c, ci = 48, 16, 8
    assert count.uncounted == {}
    # theta, phi, g and W_z convs; a = w1 . theta, b = w2 . phi; g x ReLU(a_i + b_j)
    assert count.blocks['nl']['macs'] == 3 * n * c * ci + n * ci * c + 2 * n * ci + ci * n * n


def test_compound_ops_cost_their_parts():
    """addcmul / addcdiv: product and sum (2 per element); lerp: difference, product, sum (3);
    norm: powers and sum (2 per input element); var / std: mean, deviations, squares, sum (4);
    baddbmm: its multiply-adds only (its add, like addmm's bias, is not counted, as in mmengine)."""
    a, b, t = torch.randn(3, 4, 5), torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    n = a.numel()
    cases = {'addcmul': (lambda: torch.addcmul(a, b, t), 2 * n), 'addcdiv': (lambda: torch.addcdiv(a, b, t), 2 * n),
             'lerp': (lambda: torch.lerp(a, b, 0.5), 3 * n), 'norm': (lambda: a.norm(dim=-1), 2 * n),
             'var': (lambda: a.var(-1), 4 * n), 'std': (lambda: a.std((1, 2)), 4 * n)}
    for name, (run, other) in cases.items():
        count, _ = count_flops(run)
        assert (count.total['macs'], count.total['other']) == (0, other) and count.uncounted == {}, name
    count, _ = count_flops(lambda: torch.baddbmm(torch.randn(3, 4, 6), a, torch.randn(3, 5, 6)))
    assert (count.total['macs'], count.total['other']) == (3 * 4 * 5 * 6, 0)


def test_gates_softmax_and_norms_are_not_free():
    """'other' by hand for CBAM, PAM and NonLocal (eval): pools, gates, BN (2 per element), residual
    adds; the attention without a gradient as it runs (`_softmax_chunk_inplace`: row max, subtract,
    exp and row sum per score, one division per output element, not softmax's 5 per score and its
    second N x N buffer); 'macs' as mmengine counts them."""
    c, n = 16, 48
    x = torch.randn(1, c, 6, 8)

    def cost(block):
        block = randomize(block).eval()
        count, _ = count_flops(lambda: block(x), [('b', block)])
        assert count.uncounted == {}
        return count.blocks['b']['macs'], count.blocks['b']['other']
    hid = 4                                              # CBAM(16, reduction=4)
    channel = 2 * c * n + 2 * hid + c + c + c * n        # avg and max pool, ReLU x2, add, sigmoid, x * M_c
    spatial = 2 * c * n + 2 * n + n + c * n              # channel mean and max, BN, sigmoid, x * M_s
    assert cost(CBAM(c, reduction=4)) == (2 * 2 * c * hid + 2 * 49 * n, channel + spatial)
    ck = 8                                               # PositionAttention(16, reduction=2)
    # the query / key / value (θ, φ, g) 1x1 convs run as one bmm (`pointwise_convs`): their biases
    # are an add of their own, one per output element
    assert cost(PositionAttention(c, reduction=2)) == (2 * n * c * ck + n * c * c + n * n * ck + n * n * c,
                                                       4 * n * n + n * c + 2 * n * c + n * (2 * ck + c))   # attention, gamma *, + x, biases
    ci = 8                                               # NonLocal(16): theta scaled by ci^-1/2
    assert cost(NonLocal(c)) == (3 * n * c * ci + 2 * n * n * ci + n * ci * c,
                                 n * ci + 4 * n * n + n * ci + 2 * n * c + n * c + 3 * n * ci)   # scale, attention, BN, + x, biases


def test_plan_is_reproducible_whatever_the_global_rng(tmp_path, monkeypatch):
    """plan counts the same weights every run (a detector's proposals, hence its FLOPs, depend on them)."""
    from attn_plugins import plan as plan_module
    built = []
    build = plan_module.build_config_model
    monkeypatch.setattr(plan_module, 'build_config_model', lambda cfg: built.append(build(cfg)) or built[-1])
    config = write(tmp_path, 'r.yaml', "model:\n  type: timm/resnet18\n  plugins:\n"
                   "    - {type: SE, where: 'layer4.1', position: 'after:bn2'}\n")
    for seed in (1, 2):
        torch.manual_seed(seed)
        plan_module.make_plan(config, input_shape='32,32')
    first, second = (m.state_dict() for m in built)
    assert all(torch.equal(first[k], second[k]) for k in first)
    torch.manual_seed(3)
    state = torch.get_rng_state()
    plan_module.make_plan(config, input_shape='32,32')
    assert torch.equal(torch.get_rng_state(), state)          # and the caller's RNG is left as it was


# ---------------------------------------------------------------- query attention (the hook API viz uses)
def test_position_attention_query_rows_equal_the_dense_map_by_hand(bmm_spy):
    torch.manual_seed(0)
    block = randomize(PositionAttention(8, reduction=2)).eval()
    x = torch.randn(2, 8, 5, 6)
    queries = torch.tensor([0, 7, 29])
    rows = block.query_attention(x, queries)
    assert not bmm_spy.saw_matrix(30, 30)             # only the queries' rows
    q = torch.einsum('oc,bcn->bon', block.query.weight[:, :, 0, 0], x.flatten(2)) + block.query.bias[:, None]
    k = torch.einsum('oc,bcn->bon', block.key.weight[:, :, 0, 0], x.flatten(2)) + block.key.bias[:, None]
    dense = torch.softmax(q.transpose(1, 2) @ k, dim=-1)                      # S (B, N, N)
    torch.testing.assert_close(rows, dense[:, queries])
    # and S is what the block's forward uses: E = γ D Sᵀ + A
    v = torch.einsum('oc,bcn->bon', block.value.weight[:, :, 0, 0], x.flatten(2)) + block.value.bias[:, None]
    torch.testing.assert_close(block(x), x + block.gamma * (v @ dense.transpose(1, 2)).view_as(x))


@pytest.mark.parametrize('mode', ['gaussian', 'embedded_gaussian', 'dot_product', 'concatenation'])
@pytest.mark.parametrize('sub_sample', [False, True])
def test_non_local_query_rows_equal_the_dense_weights_by_hand(mode, sub_sample):
    torch.manual_seed(0)
    block = randomize(NonLocal(8, mode=mode, sub_sample=sub_sample)).eval()
    x = torch.randn(2, 8, 4, 6)
    queries = torch.tensor([1, 11, 23])
    conv = lambda layer, t: torch.einsum('oc,bcn->bon', layer.weight.flatten(1), t.flatten(2)) + layer.bias[:, None]  # noqa: E731
    pooled = nn.functional.max_pool2d(x, 2) if sub_sample else x
    if mode == 'gaussian':
        theta, phi = x.flatten(2), pooled.flatten(2)
    else:
        theta = conv(block.theta, x)
        phi = conv(block.phi, x).unflatten(2, (4, 6))
        phi = (nn.functional.max_pool2d(phi, 2) if sub_sample else phi).flatten(2)
    g = conv(block.g, x).unflatten(2, (4, 6))
    g = (nn.functional.max_pool2d(g, 2) if sub_sample else g).flatten(2)
    nk = phi.shape[-1]
    if mode == 'gaussian':
        f = torch.softmax(theta.transpose(1, 2) @ phi, -1)
    elif mode == 'embedded_gaussian':
        f = torch.softmax(theta.transpose(1, 2) @ phi / math.sqrt(4), -1)
    elif mode == 'dot_product':
        f = theta.transpose(1, 2) @ phi / nk
    else:
        w = block.concat_project.weight.flatten()
        f = torch.relu((w[:4] @ theta)[:, :, None] + (w[4:] @ phi)[:, None, :]) / nk
    torch.testing.assert_close(block.query_attention(x, queries), f[:, queries])
    y = (g @ f.transpose(1, 2)).unflatten(2, (4, 6))
    torch.testing.assert_close(block(x), x + block.out_norm(block.out_conv(y)))


# ---------------------------------------------------------------- viz
def check_png(path, min_colours=40):
    from PIL import Image
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        pixels = np.asarray(image.convert('RGB'))
    assert pixels.shape[0] >= 200 and pixels.shape[1] >= 250
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) >= min_colours   # not blank
    return pixels.shape


def test_viz_picture_data_are_the_blocks_maps():
    """What viz draws for CBAM, PAM and NonLocal is computed from each block's own input."""
    from attn_plugins.visualize import ModelInput, block_pictures
    torch.manual_seed(0)
    from timm.layers import SEModule
    model = randomize(nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1), CBAM(8, reduction=2),
                                    PositionAttention(8, reduction=2), NonLocal(8, sub_sample=True),
                                    SEModule(8, rd_channels=4))).eval()
    x = torch.randn(1, 3, 16, 12)
    feats = {}
    for i in (1, 2, 3):
        model[i].register_forward_hook(lambda m, a, o, i=i: feats.setdefault(i, a[0]))
    pictures = block_pictures(model, ModelInput(lambda: model(x), np.zeros((16, 12, 3)), 'test'), [(5.0, 9.0)])
    assert [p.path for p in pictures] == ['1', '2', '3', '4']
    cbam, pam, nl, peer = pictures
    f = feats[1]
    mlp = lambda v: model[1].channel_gate.fc2(torch.relu(model[1].channel_gate.fc1(v)))  # noqa: E731
    gate = torch.sigmoid(mlp(f.mean((2, 3), keepdim=True)) + mlp(f.amax((2, 3), keepdim=True)))
    np.testing.assert_allclose(cbam.panels[0].data, gate.flatten().detach().numpy(), rtol=1e-5)
    gated = f * gate
    spatial = model[1].spatial_gate(gated)
    np.testing.assert_allclose(cbam.panels[1].data, spatial[0, 0].detach().numpy(), rtol=1e-5)
    # query (5, 9) on the 16x12 input -> feature (8x6) row 4, column 2 -> flat 26
    model[2].record_attention = True
    model[2](feats[2])
    np.testing.assert_allclose(pam.panels[0].data, model[2].attention_map[0, 26].view(8, 6).numpy(), rtol=1e-5)
    assert pam.panels[0].query == (5.0, 9.0)
    model[3].record_attention = True
    model[3](feats[3])
    np.testing.assert_allclose(nl.panels[0].data, model[3].attention_map[0, 26].view(4, 3).numpy(), rtol=1e-5)
    se = model[4]                 # timm's SE: its gate's output
    s = torch.sigmoid(se.fc2(torch.relu(se.bn(se.fc1(model[3](feats[3]).mean((2, 3), keepdim=True))))))
    assert peer.type == 'SEModule' and [p.kind for p in peer.panels] == ['bars']
    np.testing.assert_allclose(peer.panels[0].data, s.flatten().detach().numpy(), rtol=1e-5)


@pytest.fixture(scope='module')
def toy_val(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('viz') / 'toy_cityscapes')
    subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'make_toy_cityscapes.py'), '--out', out,
                    '--train', '1', '--val', '1', '--size', '64', '128'], check=True, capture_output=True)
    return out


def test_viz_seg_toy_cbam_danet_sample(tmp_path, toy_val, capsys):
    config = os.path.join(SEG_TOY, 'cbam_danet_r50-d8_toy.yaml')
    out = tmp_path / 'viz'
    status = main(['viz', config, '--sample', '0', '--out', str(out), '--queries', '20,30', '200,100',
                   '--cfg-options', f'test_dataloader.dataset.data_root={toy_val}',
                   'model.backbone.plugins.0.stages=[False,False,False,True]'])
    assert status == 0
    files = sorted(os.listdir(out))
    assert files == ['00_backbone_layer4_0_cbam.png', '01_backbone_layer4_1_cbam.png',
                     '02_backbone_layer4_2_cbam.png', '03_decode_head_pam.png', '04_decode_head_cam.png']
    for name in files:
        check_png(out / name)
    assert 'sample 0 of test_dataloader.dataset' in capsys.readouterr().out


def test_viz_image_file_timm_config_with_tools_script(tmp_path):
    from PIL import Image
    rng = np.random.default_rng(0)
    image = tmp_path / 'street.png'
    Image.fromarray(rng.integers(0, 255, (48, 80, 3), dtype=np.uint8)).save(image)
    config = write(tmp_path, 'timm.yaml', "model:\n  type: timm/resnet18\n  plugins:\n"
                   "    - {type: SE, where: 'layer4.1', position: 'after:bn2'}\n"
                   "    - {type: NonLocal, where: 'layer3.1', position: after}\n")
    from attn_plugins.config import load_config
    from attn_plugins.plan import build_config_model
    checkpoint = tmp_path / 'weights.pth'
    torch.save({'state_dict': randomize(build_config_model(load_config(config))).state_dict()}, checkpoint)
    out = tmp_path / 'viz'
    result = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'visualize.py'), config, '--image',
                             str(image), '--out', str(out), '--input-shape', '64,96', '--checkpoint', str(checkpoint)],
                            capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert 'untrained' not in result.stdout and f'{image} resized to 96x64, 96x64' in result.stdout   # W x H
    assert sorted(os.listdir(out)) == ['00_layer3_1_attn_non_local.png', '01_layer4_1_se.png']
    for name in os.listdir(out):
        check_png(out / name)


def test_viz_user_errors_exit_2_one_line(tmp_path, capsys):
    config = write(tmp_path, 'timm.yaml', "model:\n  type: timm/resnet18\n  plugins:\n"
                   "    - {type: SE, where: 'layer4.1', position: 'after:bn2'}\n")
    missing = str(tmp_path / 'nope.png')
    assert main(['viz', config, '--image', missing]) == 2
    assert capsys.readouterr().err.strip() == f"attn-plugins viz: error: --image {missing!r}: no such file"
    plain = tmp_path / 'resnet18.pth'
    import timm
    torch.save(timm.create_model('resnet18').state_dict(), plain)
    image = tmp_path / 'x.png'
    from PIL import Image
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    assert main(['viz', config, '--image', str(image), '--checkpoint', str(plain), '--out', str(tmp_path / 'v')]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"attn-plugins viz: error: checkpoint {str(plain)!r} does not fit the model: 4 model keys "
                          "missing (e.g. layer4.1.se.fc1.weight") and len(err.splitlines()) == 1
    assert main(['viz', config, '--sample', '0', '--out', str(tmp_path / 'v')]) == 2
    assert capsys.readouterr().err.strip() == ("attn-plugins viz: error: --sample: this model has no data pipeline "
                                               "in its config; pass --image instead")


def test_viz_image_the_test_pipeline_cannot_read_exit_2_one_line(tmp_path, capsys):
    not_an_image = write(tmp_path, 'notes.png', 'not an image')
    config = os.path.join(SEG_TOY, 'se_fcn_r50-d8_toy.yaml')
    assert main(['viz', config, '--image', not_an_image, '--out', str(tmp_path / 'v')]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith(f"attn-plugins viz: error: --image {not_an_image!r}: the test pipeline could not read it")


def test_train_names_an_unknown_openmmlab_type_as_plan_does(tmp_path, capsys):
    from attn_plugins.cli import train_main
    config = os.path.join(SEG_TOY, 'se_fcn_r50-d8_toy.yaml')
    assert train_main([config, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                       'model.backbone.plugins.0.cfg.type=SEE'], prog='train.py') == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err == (f"train.py: error: {config}: model.backbone.plugins.0.cfg.type: unknown type 'SEE' (not registered "
                   "in scope 'mmseg'); did you mean 'SE'?")


@pytest.mark.parametrize('cfg, shape, source', [
    (dict(model=dict(data_preprocessor=dict(size=[96, 128]))), (3, 96, 128), 'model.data_preprocessor.size'),
    (dict(model=dict(input_size=96)), (3, 96, 96), 'model.input_size'),
    (dict(model=dict(backbone=dict(type='InjectAttention', example_input=[1, 3, 40, 48]))), (3, 40, 48),
     'the example_input in model'),
    (dict(model={}, test_dataloader=dict(dataset=dict(pipeline=[dict(type='Resize', scale=(1333, 800))]))),
     (3, 800, 1333), 'the test pipeline'),
    (dict(model={}, test_dataloader=dict(dataset=dict(pipeline=[])),
          train_dataloader=dict(dataset=dict(pipeline=[dict(type='RandomCropWithPadding', size=32)]))),
     (3, 32, 32), 'the train pipeline'),
    (dict(model=dict(data_preprocessor=dict(format_shape='NCTHW')),
          test_dataloader=dict(dataset=dict(pipeline=[dict(type='SampleFrames', clip_len=32),
                                                      dict(type='Resize', scale=(-1, 256)),
                                                      dict(type='CenterCrop', crop_size=224)]))),
     (1, 3, 32, 224, 224), 'the test pipeline'),
])
def test_plan_default_input_shape(cfg, shape, source):
    from mmengine.config import Config
    from attn_plugins.plan import default_input_shape
    assert default_input_shape(Config(cfg), nn.Identity()) == (shape, source)


def test_viz_ltpa_toy_sample(tmp_path, capsys):
    """An application model's config (LTPA on CIFAR): PayAttention maps of a dataset sample."""
    data = tmp_path / 'cifar'
    subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'make_toy_cifar.py'), '--out', str(data),
                    '--dataset', 'cifar10', '--train', '5', '--test', '3'], check=True, capture_output=True)
    config = os.path.join(ROOT, 'configs', 'ltpa', 'toy', 'vgg-att3-concat-pc_toy-cifar10.yaml')
    out = tmp_path / 'viz'
    assert main(['viz', config, '--sample', '2', '--out', str(out),
                 '--cfg-options', f'test_dataloader.dataset.data_root={data}']) == 0
    assert sorted(os.listdir(out)) == [f'0{i}_backbone_attention_{i}.png' for i in range(3)]
    for name in os.listdir(out):
        check_png(out / name)
    assert 'sample 2 of test_dataloader.dataset, 32x32' in capsys.readouterr().out


def test_viz_det_and_gaze_toy_configs_from_an_image(tmp_path, capsys):
    """A detector (DANet on C5, the neck's one block) through its test pipeline, and the gaze model
    (no pipeline) at its config's model.input_size, not timm's default 224."""
    from PIL import Image
    image = tmp_path / 'x.png'
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)).save(image)
    det = os.path.join(ROOT, 'configs', 'det', 'toy', 'faster-rcnn_r50_danet-c5-fpn_toy-coco.yaml')
    assert main(['viz', det, '--image', str(image), '--out', str(tmp_path / 'det'), '--queries', '20,30']) == 0
    assert os.listdir(tmp_path / 'det') == ['00_neck_attn_blocks_0.png']
    check_png(tmp_path / 'det' / '00_neck_attn_blocks_0.png')
    assert f'{image} through the test pipeline' in capsys.readouterr().out
    gaze = os.path.join(ROOT, 'configs', 'gaze', 'toy', 'full_face_resnet18-narrow_toy-mpiifacegaze-64.yaml')
    assert main(['viz', gaze, '--image', str(image), '--out', str(tmp_path / 'gaze')]) == 0
    assert os.listdir(tmp_path / 'gaze') == ['00_net_spatial_weights.png']
    check_png(tmp_path / 'gaze' / '00_net_spatial_weights.png')
    assert f'{image} resized to 64x64, 64x64' in capsys.readouterr().out


@pytest.mark.parametrize('spec, message', [
    ("{type: CBMA, where: 'backbone.layer1.*', position: 'after:bn2'}", "unknown block type 'CBMA'; did you mean 'CBAM'?"),
    ("{type: SE, where: 'backbone.layer1.0', position: 'after:bn2', reductio: 8}",
     "plugins[0].reductio: unknown option for SE; did you mean 'reduction'?"),
])
def test_model_plugins_of_an_openmmlab_model_train_as_plan_builds_them(tmp_path, capsys, spec, message):
    """README's `model: {..., plugins: [...]}` on an mmseg segmentor: training builds what plan
    shows (it passed `plugins` to EncoderDecoder) and rejects a bad spec with plan's message."""
    from attn_plugins.cli import train_main
    from attn_plugins.runner import build_runner
    base = os.path.join(SEG_TOY, 'se_fcn_r50-d8_toy.yaml')
    good = write(tmp_path, 'good.yaml', f"_base_: {base}\nmodel:\n  plugins:\n"
                 "    - {type: CBAM, where: 'backbone.layer1.0', position: 'after:bn2'}\n")
    runner = build_runner(good, work_dir=str(tmp_path / 'w'), trust_config=True)
    assert [r.path for r in runner.model.attn_plugins_report] == ['backbone.layer1.0.bn2']
    assert type(runner.model).__name__ == 'EncoderDecoder' and tuple(runner.model.data_preprocessor.size) == (96, 96)
    bad = write(tmp_path, 'bad.yaml', f"_base_: {base}\nmodel:\n  plugins:\n    - {spec}\n")
    assert main(['plan', bad, '--trust-config']) == 2
    plan_error = capsys.readouterr().err.strip().split('error: ', 1)[1]
    assert train_main([bad, '--trust-config', '--work-dir', str(tmp_path / 'w2')], prog='train.py') == 2
    train_error = capsys.readouterr().err.strip().splitlines()[-1].split('error: ', 1)[1]
    assert message in plan_error and train_error == plan_error
