"""The detectors in `tools/benchmark.py --suite models` (issue 10): RetinaNet R50-FPN + CBAM end to end
on a tiny image, Faster R-CNN R50-FPN + NonLocal res4 against mmcv's NonLocal2d (the det suite's pair),
both built by tools/bench_det.py's functions and counted on their `mode='tensor'` forward."""
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import bench_models  # noqa: E402

BENCH = os.path.join(ROOT, 'tools', 'benchmark.py')
RETINANET = 'RetinaNet R50-FPN + CBAM'
FASTER_RCNN = 'Faster R-CNN R50-FPN + NonLocal res4'


def _blocks_sum(variant: dict, key: str) -> int:
    return sum(block[key] for block in variant['blocks'].values())


def test_quick_only_selects_any_case():
    """`--quick --only NAME` runs NAME on its tiny shape even outside QUICK_CASES; `--quick` alone
    runs QUICK_CASES (one detector among them)."""
    assert FASTER_RCNN not in bench_models.QUICK_CASES
    assert bench_models.selected_cases(['Faster R-CNN'], True) == [FASTER_RCNN]
    assert bench_models.selected_cases(['DANet'], True) == ['DANet R50-D8 512x1024', 'DANet R50-D8 1024x2048']
    quick = bench_models.selected_cases(None, True)
    assert RETINANET in quick and FASTER_RCNN not in quick and 'DANet R50-D8 1024x2048' not in quick
    assert FASTER_RCNN in bench_models.selected_cases(None, False)


@pytest.mark.slow
def test_quick_retinanet_cbam_case_json_and_plots(tmp_path):
    """Params, FLOPs (mmengine + the CBAM gates), time and memory of RetinaNet with and without CBAM,
    ratios to the base, the JSON and the PNGs."""
    import matplotlib.image
    out = tmp_path / 'models.json'
    proc = subprocess.run([sys.executable, BENCH, '--suite', 'models', '--quick', '--threads', '1', '--no-sweep',
                           '--only', RETINANET, '--json', str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    (row,) = result['rows']
    assert row['case'] == RETINANET and row['shape'] == [1, 3, 64, 96] and set(row['variants']) == {'base', 'ours'}
    base, ours = row['variants']['base'], row['variants']['ours']
    assert list(ours['blocks']) == [f'detector.backbone.layer{s + 1}.{i}.cbam'
                                    for s, n in enumerate((3, 4, 6, 3)) for i in range(n)]
    assert all(b['type'] == 'CBAM' and b['params'] > 0 and b['flops_gates'] > 0 for b in ours['blocks'].values())
    assert base['blocks'] == {} and base['flops_gates'] == 0 and ours['uncounted'] == {}
    # the same detector plus the blocks: nothing else differs (no NMS in the tensor forward)
    assert base['params'] < ours['params'] == base['params'] + _blocks_sum(ours, 'params')
    assert ours['flops_mmengine'] == base['flops_mmengine'] + _blocks_sum(ours, 'flops_mmengine')
    assert ours['flops_gates'] == _blocks_sum(ours, 'flops_gates') > 0
    assert ours['flops'] == ours['flops_mmengine'] + ours['flops_gates'] > base['flops']
    ratios = row['vs_base']['ours']
    assert ratios['params'] == pytest.approx(ours['params'] / base['params'])
    assert ratios['flops'] == pytest.approx(ours['flops'] / base['flops'])
    assert all(v['time_s']['median'] > 0 and len(v['time_s']['samples']) == 3 for v in (base, ours))
    assert ratios['memory'] == pytest.approx(ours['peak_mb'] / max(base['peak_mb'], 1e-3))
    assert RETINANET in proc.stdout
    assert sorted(os.path.basename(p) for p in result['plots']) == ['models_blocks.png', 'models_overhead.png']
    for plot in result['plots']:
        assert matplotlib.image.imread(plot).shape[2] in (3, 4)


def test_faster_rcnn_nonlocal_case_same_proposals_as_the_base():
    """Ours and mmcv's NonLocal2d (norm_cfg=BN, as the det suite's pair) in the 6 res4 bottlenecks of
    Faster R-CNN, from the base's weights: the blocks start as the identity, so the RPN proposes the
    base's boxes and the RoI head costs the same (each variant's mmengine FLOPs are the base's plus
    its blocks'), ours and the peer count the same multiply-adds, and the gates add FLOPs. A 32x64
    image (smaller than the case's quick shape: fewer proposals, a cheaper RoI head)."""
    import torch

    from bench_flops import complexity
    case = bench_models.MODEL_CASES[FASTER_RCNN]
    torch.manual_seed(0)
    x = torch.randn(1, 3, 32, 64)
    cost = {label: complexity(bench_models.build(builder, quick=True), (x,))
            for label, builder in case['variants'].items()}
    base, ours, peer = cost['base'], cost['ours'], cost['peer']
    for side, block_type, name in ((ours, 'NonLocal', 'non_local'), (peer, 'NonLocal2d', 'nonlocal_block')):
        assert list(side['blocks']) == [f'detector.backbone.layer3.{i}.{name}' for i in range(6)]
        assert all(b['type'] == block_type and b['flops_gates'] > 0 for b in side['blocks'].values())
        assert side['params'] == base['params'] + _blocks_sum(side, 'params')
        assert side['flops_mmengine'] == base['flops_mmengine'] + _blocks_sum(side, 'flops_mmengine')
        assert side['flops'] > base['flops'] and side['uncounted'] == {}
    assert base['params'] < ours['params'] == peer['params']
    assert ours['flops_mmengine'] == peer['flops_mmengine']
    assert base['blocks'] == {} and base['flops_gates'] == 0
