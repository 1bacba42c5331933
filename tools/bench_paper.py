"""`tools/benchmark.py --paper`: the rows of the papers' tables that need no training.

Parameters and GFLOPs of SE-ResNet-50/101, CBAM-ResNet-50 and the non-local C2D video models,
ours next to the paper's, with the difference and the counting convention that explains it.
GFLOPs are counted several ways (`CONVENTIONS`); the papers count one multiply-add as one FLOP.

Sources of the paper numbers (`PAPER`):
    SE      Hu et al., CVPR 2018, Table 2: GFLOPs of ResNet-50 3.86 / SE 3.87, ResNet-101 7.58 /
            SE 7.60 (224x224); SE-ResNet-50 ~28.1M params (text). ResNet-101 44.55M and
            SE-ResNet-101 49.33M as listed by mmpretrain and the CBAM paper.
    CBAM    Woo et al., ECCV 2018, ImageNet table: ResNet-50 25.56M / 3.858, + SE 28.09M / 3.860,
            + CBAM 28.09M / 3.864 (from the reference notes' modules.md, marked unconfirmed there:
            not re-read from the paper in this repository; issue 10 quotes only the SE paper).
    NL      Wang et al., CVPR 2018, Table 1 (C2D: 32x224x224 clip, conv1 stride 2,2,2, pool1 3x3x3
            stride 2, pool2 3x1x1 stride 2 in time) and Table 2e: R101 C2D 43.2M params, 34.2B
            FLOPs; 5-block NL C2D 1.2x params, 1.2x FLOPs; text: the 5-block NL R50 has ~70% of the
            params and ~80% of the FLOPs of the R101 baseline.
"""
from __future__ import annotations

import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F

TOOLS = os.path.dirname(os.path.abspath(__file__))
if TOOLS not in sys.path:
    sys.path.insert(0, TOOLS)

from bench_flops import gate_flops, mmengine_flops, n_params  # noqa: E402

CONVENTIONS = {
    'mmengine': "mmengine FlopAnalyzer on the model as built (timm ResNet: stride in the 3x3 conv; "
                "norms and adaptive_avg_pool2d counted, elementwise ops not)",
    'macs_v15': 'multiply-adds of convs and FC layers only, model as built (stride in the 3x3 conv)',
    'macs_v1': "multiply-adds of convs and FC layers only, stride in the first 1x1 conv of each "
               "down-sampling block (the original ResNet of the papers' Caffe models)",
    'macs_v1_gates': "macs_v1 plus the gate ops (pooling, sigmoid, scaling: tools/bench_flops.py)",
}


def resnet_v1(model: nn.Module) -> nn.Module:
    """Move each down-sampling bottleneck's stride from its 3x3 conv to its first 1x1 conv (the
    original ResNet); parameters and output shapes do not change."""
    for name in ('layer2', 'layer3', 'layer4'):
        block = getattr(model, name)[0]
        if block.conv2.stride != (1, 1):
            block.conv1.stride, block.conv2.stride = block.conv2.stride, (1, 1)
    return model


def image_models():
    import timm

    import attn_plugins

    def inject(name, block):
        return attn_plugins.create_model(name, plugins=[dict(type=block, where='layer*.*', position='after:bn3')])
    return {
        'ResNet-50': lambda: timm.create_model('resnet50'),
        'SE-ResNet-50': lambda: inject('resnet50', 'SE'),
        'CBAM-ResNet-50': lambda: inject('resnet50', 'CBAM'),
        'ResNet-101': lambda: timm.create_model('resnet101'),
        'SE-ResNet-101': lambda: inject('resnet101', 'SE'),
    }


# paper rows: model -> [(source, params in M, GFLOPs)]; GFLOPs as printed (the digits give the rounding)
PAPER = {
    'ResNet-50': [('SE Table 2', None, '3.86'), ('CBAM table', 25.56, '3.858')],
    'SE-ResNet-50': [('SE Table 2', 28.09, '3.87'), ('CBAM table', 28.09, '3.860')],
    'CBAM-ResNet-50': [('CBAM table', 28.09, '3.864')],
    'ResNet-101': [('SE Table 2', 44.55, '7.58')],
    'SE-ResNet-101': [('SE Table 2', 49.33, '7.60')],
}


def matching(ours: dict, paper: str, keys) -> tuple[list[str], str]:
    """The conventions whose value rounds to the paper's number at its printed digits, and the closest."""
    digits, value = len(paper.split('.')[1]) if '.' in paper else 0, float(paper)
    return ([k for k in keys if round(ours[k], digits) == value],
            min(keys, key=lambda k: abs(ours[k] - value)))


class TemporalBlock(nn.Module):
    """A 5-D block (B, C, T, H, W) between 2-D stages that run on (B·T, C, H, W) frames."""

    def __init__(self, block: nn.Module, frames: int):
        super().__init__()
        self.block, self.frames = block, frames

    def forward(self, x):
        bt, c, h, w = x.shape
        video = x.reshape(bt // self.frames, self.frames, c, h, w).transpose(1, 2)
        return self.block(video).transpose(1, 2).reshape(bt, c, h, w)


class C2D(nn.Module):
    """The non-local paper's C2D baseline (Table 1) from a timm ResNet: 2-D convs frame by frame;
    conv1 with temporal stride 2, pool1 3x3x3 max stride 2,2,2, pool2 3x1x1 max stride 2 in time,
    global average pool over T x H x W, FC to the classes. 32x224x224 in -> res3-res5 at T = 4."""

    def __init__(self, resnet: nn.Module, num_classes: int = 400, frames: int = 32):
        super().__init__()
        self.resnet, self.frames = resnet, frames
        self.fc = nn.Linear(resnet.num_features, num_classes)

    def _frames(self, x, t):
        return x.transpose(1, 2).reshape(-1, *x.shape[1:2], *x.shape[3:]), t

    def _video(self, x, t):
        return x.reshape(-1, t, *x.shape[1:]).transpose(1, 2)

    def forward(self, clip):                                   # (B, 3, T, H, W)
        r = self.resnet
        clip = clip[:, :, ::2]                                  # conv1 temporal stride 2
        t = clip.shape[2]
        x, _ = self._frames(clip, t)
        x = r.act1(r.bn1(r.conv1(x)))
        x = F.max_pool3d(self._video(x, t), (3, 3, 3), (2, 2, 2), (1, 1, 1))          # pool1
        t = x.shape[2]
        x = r.layer1(self._frames(x, t)[0])
        x = F.max_pool3d(self._video(x, t), (3, 1, 1), (2, 1, 1), (1, 0, 0))          # pool2
        t = x.shape[2]
        for stage in (r.layer2, r.layer3, r.layer4):
            for block in stage.modules():
                if isinstance(block, TemporalBlock):
                    block.frames = t
            x = self._video(stage(self._frames(x, t)[0]), t)
        return self.fc(x.mean((2, 3, 4)))


def c2d(depth: int, nonlocal_blocks: bool) -> nn.Module:
    """C2D R50/R101; with 5 non-local blocks (3-D, embedded gaussian, spatial sub-sampling, as the
    paper) after res3 blocks 1, 3 and res4 blocks 1, 3, 5."""
    import timm

    from attn_plugins.modules import NonLocal
    resnet = timm.create_model(f'resnet{depth}', num_classes=0)
    if nonlocal_blocks:
        for stage, indices in (('layer2', (1, 3)), ('layer3', (1, 3, 5))):
            layer = getattr(resnet, stage)
            for i in indices:
                channels = layer[i].conv3.out_channels
                layer[i] = nn.Sequential(layer[i], TemporalBlock(NonLocal(channels, dim=3, sub_sample=True), 4))
    return C2D(resnet).eval()


C2D_MODELS = {'R50 C2D': (50, False), 'NL R50 C2D 5-block': (50, True), 'R101 C2D': (101, False),
              'NL R101 C2D 5-block': (101, True)}     # name -> (depth, 5 non-local blocks)


def video_rows(flops: bool, progress=None) -> list[dict]:
    """Rows of the non-local paper's Table 2e and the text's R50 comparison."""
    clip = torch.randn(1, 3, 32, 224, 224)
    measured = {}
    for name, (depth, nl) in C2D_MODELS.items():
        if progress:
            progress(f'paper: {name}')
        with torch.device('cpu' if flops else 'meta'):        # parameter counts need no weights
            model = c2d(depth, nl)
        entry = dict(params=n_params(model), conv_fc_params=sum(
            m.weight.numel() for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d, nn.Linear))))
        if flops:
            for v1 in (False, True):
                if v1:
                    resnet_v1(model.resnet)
                counted = mmengine_flops(model, (clip,))
                total = counted['macs']
                # the authors' block pools x before the φ and g convs (video-nonlocal-net
                # nonlocal_helper.py), ours and mmcv's after them: their φ, g convs see 1/4 of the positions
                saved = sum(f for path, f in counted['macs_by_module'].items()
                            if path.endswith(('.phi', '.g'))) * 3 // 4
                key = 'macs_v1' if v1 else 'macs_v15'
                entry[key] = total
                entry[f'{key}_authors_pooling'] = total - saved
        measured[name] = entry
    base = measured['R101 C2D']
    rows = [dict(model='R101 C2D', source='NL Table 2e', input='1x3x32x224x224', paper_params_m=43.2,
                 paper_gflops='34.2', ours=base)]
    rows.append(dict(model='NL R101 C2D 5-block', source='NL Table 2e (relative to R101 C2D)',
                     input='1x3x32x224x224', paper_params_ratio=1.2, paper_flops_ratio=1.2,
                     ours=measured['NL R101 C2D 5-block']))
    rows.append(dict(model='NL R50 C2D 5-block', source='NL Sec. 5.1 text (relative to R101 C2D)',
                     input='1x3x32x224x224', paper_params_ratio=0.7, paper_flops_ratio=0.8,
                     ours=measured['NL R50 C2D 5-block']))
    rows.append(dict(model='R50 C2D', source='(no absolute numbers in the paper)', input='1x3x32x224x224',
                     ours=measured['R50 C2D']))
    for row in rows:
        ours = row['ours']
        row['ours_params_m'] = ours['params'] / 1e6
        if 'paper_params_ratio' in row:
            row['ours_params_ratio'] = ours['params'] / base['params']
        if flops:
            for key in ('macs_v15', 'macs_v1', 'macs_v15_authors_pooling', 'macs_v1_authors_pooling'):
                row[f'ours_gflops_{key}'] = ours[key] / 1e9
                if 'paper_flops_ratio' in row:
                    row[f'ours_flops_ratio_{key}'] = ours[key] / base['macs_v1' if 'v1' in key else 'macs_v15']
    return rows


def image_rows(flops: bool, progress=None) -> list[dict]:
    x = torch.randn(1, 3, 224, 224)
    rows = []
    for name, builder in image_models().items():
        if progress:
            progress(f'paper: {name}')
        with torch.device('cpu' if flops else 'meta'):        # parameter counts need no weights
            model = builder().eval()
        params = n_params(model)
        ours = dict(params=params, params_m=params / 1e6)
        if flops:
            counted = mmengine_flops(model, (x,))
            ours['mmengine'], ours['macs_v15'] = counted['total'] / 1e9, counted['macs'] / 1e9
            resnet_v1(model)
            counted_v1 = mmengine_flops(model, (x,))
            ours['macs_v1'] = counted_v1['macs'] / 1e9
            ours['macs_v1_gates'] = ours['macs_v1'] + gate_flops(model, (x,), counted_v1)['total'] / 1e9
        for source, paper_params, paper_gflops in PAPER[name]:
            row = dict(model=name, source=source, input='1x3x224x224', paper_params_m=paper_params,
                       paper_gflops=paper_gflops, ours=ours, ours_params_m=ours['params_m'])
            if paper_params is not None:
                row['params_diff_m'] = ours['params_m'] - paper_params
                row['params_match'] = round(ours['params_m'], 2) == paper_params
            if flops and paper_gflops is not None:
                row['gflops'] = {k: ours[k] for k in CONVENTIONS}
                row['gflops_match'], row['gflops_closest'] = matching(ours, paper_gflops, list(CONVENTIONS))
            rows.append(row)
    return rows


def paper_rows(flops: bool = True, video_flops: bool = True, progress=None) -> list[dict]:
    """All rows; `video_flops=False` gives the C2D rows' parameters only (their 32-frame traces
    are the slow part). `progress(text)` is called before each model."""
    return image_rows(flops, progress) + video_rows(flops and video_flops, progress)
