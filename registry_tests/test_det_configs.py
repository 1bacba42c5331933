"""Every configs/det header names mmdet's reference result for its `mmdet::` base: the numbers of
the installed mmdet's metafiles (COCO bases); for the VOC base, which has no metafile in the
package, the 80.4 of mmdet's configs/pascal_voc/README.md (its 2022 retraining, the checkpoint
mmdet 3.x links), not the 79.5 of the 2020 README. Every toy config trains with its own stable
schedule (what tools/demo.py and a user's tools/train.py run)."""
import glob
import importlib.util
import os

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = sorted(glob.glob(os.path.join(ROOT, 'configs', 'det', '*.yaml')))
MMDET_CONFIGS = os.path.join(os.path.dirname(importlib.util.find_spec('mmdet').origin), '.mim', 'configs')  # no import
VOC_BASE = 'pascal_voc/faster-rcnn_r50_fpn_1x_voc0712.py'
VOC_REFERENCE = '80.4 box AP'


def header(path: str) -> str:
    lines = []
    for line in open(path):
        if not line.startswith('#'):
            break
        lines.append(line[1:].strip())
    return ' '.join(lines)


def base_of(path: str) -> str:
    with open(path) as f:
        for line in f:
            if line.startswith('_base_:'):
                return line.split('mmdet::', 1)[1].strip()
    raise AssertionError(f'{path}: no _base_')


def metafile_reference(base: str) -> str:
    """'37.4 box AP' or '38.2 box AP / 34.7 mask AP' from the metafile of the base's folder."""
    folder, name = base.split('/')
    meta = yaml.safe_load(open(os.path.join(MMDET_CONFIGS, folder, 'metafile.yml')))
    (model,) = [m for m in meta['Models'] if m['Name'] == name[:-len('.py')]]
    metrics = {k: v for r in model['Results'] for k, v in r['Metrics'].items()}
    return ' / '.join(f'{metrics[k]} {k}' for k in ('box AP', 'mask AP') if k in metrics)


@pytest.mark.parametrize('config', FULL, ids=os.path.basename)
def test_header_names_mmdet_reference_of_its_base(config):
    base = base_of(config)
    expected = VOC_REFERENCE if base == VOC_BASE else metafile_reference(base)
    text = header(config)
    assert expected in text, f'{os.path.basename(config)}: header lacks {expected!r} (base {base}): {text}'


@pytest.mark.parametrize('config', [p for p in glob.glob(os.path.join(ROOT, 'configs', 'det', 'toy', '*.yaml'))
                                    if p.endswith('voc.yaml')], ids=os.path.basename)
def test_toy_voc_headers_give_the_same_reference(config):
    assert '80.4 box AP' in header(config) and '79.5' not in header(config)


@pytest.mark.parametrize('config', sorted(glob.glob(os.path.join(ROOT, 'configs', 'det', 'toy', '*.yaml'))),
                         ids=os.path.basename)
def test_toy_config_has_the_from_scratch_schedule(config):
    """From scratch at batch 2, mmdet's Faster R-CNN 1x lr 0.02 without clipping diverged on the
    64-image toy COCO; the SGD toy configs take lr 0.01 and clip the gradient norm at 10 themselves
    (the ConvNeXt toy keeps its base's AdamW lr 2e-4)."""
    from attn_plugins.config import load_config
    optim = load_config(config).optim_wrapper
    if 'convnext' in config:
        assert optim.optimizer.type == 'AdamW' and optim.optimizer.lr == 2e-4, optim
        return
    assert optim.optimizer.type == 'SGD' and optim.optimizer.lr == 0.01, optim
    assert optim.clip_grad == dict(max_norm=10, norm_type=2), optim
