"""`attn-plugins viz` on video models (issues 9 and 10): a non-local block's attention of one query
position across the frames (one panel per frame, over that frame), the spatio-temporal pyramid
attention per frame and per pyramid level, and both end to end on the toy video configs."""
import copy
import importlib.util
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from attn_plugins.cli import main
from attn_plugins.modules import NonLocal, PyramidAttention
from attn_plugins.visualize import ModelInput, block_pictures, parse_queries, pyramid_level_attention
from attn_plugins.registry import ConfigError
from conftest import randomize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VIDEO_TOY = os.path.join(ROOT, 'configs', 'video', 'toy')


def dense_non_local_3d(block: NonLocal, x: torch.Tensor) -> torch.Tensor:
    """f(x_i, x_j) / C(x) of a 3-D block by the paper's formulas, (B, T·H·W, Nk): every row."""
    conv = lambda layer, t: torch.einsum('oc,bcthw->bothw', layer.weight.flatten(1), t) + layer.bias[:, None, None, None]  # noqa: E731
    pool = (lambda t: F.max_pool3d(t, (1, 2, 2))) if block.sub_sample else (lambda t: t)  # noqa: E731
    theta, phi = conv(block.theta, x).flatten(2), pool(conv(block.phi, x)).flatten(2)
    if block.mode == 'embedded_gaussian':
        return torch.softmax(theta.transpose(1, 2) @ phi / math.sqrt(theta.shape[1]), -1)
    w = block.concat_project.weight.flatten()
    ci = theta.shape[1]
    return torch.relu((w[:ci] @ theta)[:, :, None] + (w[ci:] @ phi)[:, None, :]) / phi.shape[-1]


@pytest.mark.parametrize('mode', ['embedded_gaussian', 'concatenation'])
@pytest.mark.parametrize('sub_sample', [False, True])
def test_non_local_3d_query_rows_equal_the_dense_attention_by_hand(mode, sub_sample):
    block = randomize(NonLocal(8, dim=3, mode=mode, sub_sample=sub_sample)).eval()
    x = torch.randn(2, 8, 3, 4, 6)
    queries = torch.tensor([0, 2 * 24 + 1 * 6 + 5, 1 * 24 + 3 * 6 + 2])      # t·H·W + y·W + x
    dense = dense_non_local_3d(block, x)
    torch.testing.assert_close(block.query_attention(x, queries), dense[:, queries])
    # and that is the map the block's forward uses
    g = torch.einsum('oc,bcthw->bothw', block.g.weight.flatten(1), x) + block.g.bias[:, None, None, None]
    g = (F.max_pool3d(g, (1, 2, 2)) if sub_sample else g).flatten(2)
    y = (g @ dense.transpose(1, 2)).unflatten(2, x.shape[2:])
    torch.testing.assert_close(block(x), x + block.out_norm(block.out_conv(y)))


class Clip(nn.Module):
    """A 6-frame 16x12 clip -> 3 feature frames of 8x6 (stride 2 in time and space) -> a 3-D block."""

    def __init__(self, block):
        super().__init__()
        self.stem = nn.Conv3d(3, 8, 3, stride=2, padding=1)
        self.block = block

    def forward(self, clip):
        return self.block(self.stem(clip))


def test_viz_non_local_3d_one_panel_per_frame_is_the_query_row_by_hand():
    model = randomize(Clip(NonLocal(8, dim=3, sub_sample=True))).eval()
    clip = torch.randn(1, 3, 6, 16, 12)
    frames = np.random.default_rng(0).random((6, 16, 12, 3))
    queries = parse_queries(['5,9,5'], 16, 12, num_frames=6)
    assert queries == [(5.0, 9.0, 5.0)]
    (picture,) = block_pictures(model, ModelInput(lambda: model(clip), frames[3], 'test', frames), queries)
    # input frame 5 -> feature frame 2; pixel (5, 9) of 12x16 -> feature row 4, column 2 of 8x6
    query = 2 * 48 + 4 * 6 + 2
    row = dense_non_local_3d(model.block, model.stem(clip))[0, query].reshape(3, 4, 3).detach()   # keys: 3 frames of 4x3
    assert picture.columns == 3 and [p.kind for p in picture.panels] == ['map'] * 3
    for t, panel in enumerate(picture.panels):
        np.testing.assert_allclose(panel.data, row[t].detach().numpy(), rtol=1e-5, atol=1e-7)
        assert panel.frame == 2 * t + 1                    # feature frame t covers input frames 2t, 2t + 1
        assert panel.vrange == pytest.approx((float(row.min()), float(row.max())), rel=1e-4)   # one scale for all
        assert panel.query == ((5.0, 9.0) if t == 2 else None)          # marked on its own frame
    shares = [float(s) for s in row.sum((1, 2))]
    assert sum(shares) == pytest.approx(1.0, abs=1e-5)
    assert all(f"Σ {s:.3g}" in p.title for s, p in zip(shares, picture.panels))
    assert 'query (5, 9) of frame 5' in picture.panels[0].title and "frame 5 (query's)" in picture.panels[2].title
    # default query: the centre of the middle input frame
    assert parse_queries(None, 16, 12, num_frames=6) == [(6.0, 8.0, 3.0)]


@pytest.mark.parametrize('text, message', [
    ('5,9,6', "frame 6 is not one of the clip's 6 input frames (0 to 5)"),
    ('5,9,1.5', "frame 1.5 is not one of"),
    ('5', "expected X,Y pixel coordinates such as 64,32 or X,Y,T"),
])
def test_video_queries_bad_frame_is_a_clear_error(text, message):
    with pytest.raises(ConfigError, match=message.replace('(', r'\(').replace(')', r'\)')):
        parse_queries([text], 16, 12, num_frames=6)


def test_image_queries_take_no_frame():
    with pytest.raises(ConfigError, match=r"a frame index T is for video inputs only"):
        parse_queries(['5,9,1'], 16, 12)


class Pyramid(nn.Module):
    def __init__(self):
        super().__init__()
        self.low = nn.Conv3d(3, 4, 3, stride=(1, 2, 2), padding=1)
        self.high = nn.Conv3d(4, 8, 3, stride=2, padding=1)
        self.pyramid = PyramidAttention(8, [4, 8], fuse_channels=6, num_components=3, target_index=1, dim=3)

    def forward(self, clip):
        low = self.low(clip)
        return self.pyramid([low, self.high(low)])


def test_viz_pyramid_attention_per_frame_and_per_level():
    model = randomize(Pyramid()).eval()
    clip = torch.randn(1, 3, 6, 16, 12)
    low = model.low(clip)
    feats = [low, model.high(low)]
    model.pyramid.record_attention = True
    with torch.no_grad():
        model.pyramid.fusion.copy_(torch.tensor([1.0, -1.0]))
        model.pyramid(feats)
    attention = model.pyramid.attention_map[0, 0]                             # (3, 4, 3)
    model.pyramid.record_attention = False
    levels = pyramid_level_attention(model.pyramid, feats)
    # the block's attention is the β-mixture of the levels' own maps (each a softmax over all positions)
    beta = torch.softmax(torch.tensor([1.0, -1.0]), 0)
    torch.testing.assert_close((beta[:, None, None] * levels).sum(0)[0].view(3, 4, 3), attention)
    torch.testing.assert_close(levels.sum(-1), torch.ones(2, 1))
    # each level's map is that level's alone: changing the other level's features leaves it as it is
    with torch.no_grad():
        moved = pyramid_level_attention(model.pyramid, [feats[0], feats[1] * 2 + 1 + torch.randn_like(feats[1])])
    torch.testing.assert_close(moved[0], levels[0])
    assert not torch.allclose(moved[1], levels[1])
    frames = np.random.default_rng(0).random((6, 16, 12, 3))
    (picture,) = block_pictures(model, ModelInput(lambda: model(clip), frames[3], 'test', frames), [])
    assert picture.columns == 3 and len(picture.panels) == 3 * 3           # a, a_0, a_1 rows x 3 frames
    for r, expected in enumerate([attention, levels[0, 0].view(3, 4, 3), levels[1, 0].view(3, 4, 3)]):
        for t in range(3):
            panel = picture.panels[3 * r + t]
            np.testing.assert_allclose(panel.data, expected[t].detach().numpy(), rtol=1e-5, atol=1e-6)
            assert panel.frame == 2 * t + 1
    assert 'level 1 (8 ch, target): a_1, β_1 0.12' in picture.panels[6].title


@pytest.fixture(scope='module')
def toy_clips(tmp_path_factory):
    spec = importlib.util.spec_from_file_location('make_toy_rawframes', os.path.join(ROOT, 'tools', 'make_toy_rawframes.py'))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = str(tmp_path_factory.mktemp('viz_video') / 'toy_rawframes')
    assert tool.main(['--out', out, '--train-per-class', '1', '--val-per-class', '1', '--frames', '8']) == 0
    return out


def panel_strips(path, columns, rows):
    """The PNG's pixels cut into its grid of panels (after the title band)."""
    from PIL import Image
    with Image.open(path) as image:
        image.verify()
    with Image.open(path) as image:
        pixels = np.asarray(image.convert('RGB')).astype(int)
    assert pixels.std() > 20 and len(np.unique(pixels.reshape(-1, 3), axis=0)) >= 100      # not blank
    h, w = pixels.shape[:2]
    top = h // (8 * rows)
    cell_h, cell_w = (h - top) // rows, w // columns
    return pixels, [[pixels[top + r * cell_h: top + (r + 1) * cell_h, c * cell_w:(c + 1) * cell_w]
                     for c in range(columns)] for r in range(rows)]


@pytest.mark.slow
@pytest.mark.parametrize('config, files, rows', [
    ('nonlocal_i3d_r50_toy.yaml', [f'0{i}_backbone_{p.replace(".", "_")}_attn_non_local.png' for i, p in
                                   enumerate(['layer2.1', 'layer2.3', 'layer3.1', 'layer3.3', 'layer3.5'])], 1),
    ('pyramid_attention_i3d_r50_toy.yaml', ['00_cls_head_pyramid.png'], 4),
])
def test_viz_toy_video_configs_one_png_per_block_with_frame_panels(tmp_path, toy_clips, capsys, monkeypatch,
                                                                   config, files, rows):
    """8-frame 32x32 clips, 4 feature frames from res3 on: every block's PNG has 4 frame panels a
    row (non-local: the query's row; pyramid: a and its 3 levels), each over its own frame."""
    from attn_plugins import visualize
    drawn, draw = [], visualize.draw
    monkeypatch.setattr(visualize, 'draw', lambda picture, *args: drawn.append(picture) or draw(picture, *args))
    out = tmp_path / 'viz'
    assert main(['viz', os.path.join(VIDEO_TOY, config), '--sample', '0', '--out', str(out),
                 '--cfg-options', f'test_dataloader.dataset.data_root={toy_clips}']) == 0
    text = capsys.readouterr().out
    assert sorted(os.listdir(out)) == files and 'did not run' not in text
    for picture in drawn:        # feature frame t covers input frames 2t, 2t + 1: drawn over frame 2t + 1
        assert picture.columns == 4 and [p.frame for p in picture.panels] == [1, 3, 5, 7] * rows
    for name in files:
        pixels, cells = panel_strips(out / name, 4, rows)
        assert pixels.shape[1] >= 4 * 200 and pixels.shape[0] >= rows * 200
        for row in cells:
            # the frames differ (the blob moves), so no two panels of a row are the same picture
            for a in range(4):
                for b in range(a + 1, 4):
                    assert np.abs(row[a] - row[b]).mean() > 1.0, (name, a, b)
