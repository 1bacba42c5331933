"""tools/benchmark.py --suite models / --paper / --readme and `attn-plugins bench`: the gate FLOP
count against hand counts, the papers' exact parameter counts, GFLOPs conventions, the quick
models suite end to end (JSON, PNGs, out-of-memory points) and the README section it generates."""
import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import bench_flops  # noqa: E402
import bench_models  # noqa: E402
import bench_paper  # noqa: E402

BENCH = os.path.join(ROOT, 'tools', 'benchmark.py')
R50_STAGES = [(3, 256), (4, 512), (6, 1024), (3, 2048)]


def test_gate_flops_match_a_hand_count_for_se_and_cbam():
    """mmengine counts the 1x1 convs (and CBAM's 7x7 conv + BN); our count adds the pooling,
    activations, gate sums and products, one per element, the same for ours and timm's blocks."""
    from timm.layers.cbam import CbamModule
    from timm.layers.squeeze_excite import SEModule

    from attn_plugins.modules import CBAM, SE
    b, c, h, w = 2, 32, 6, 5
    hw, n, r = h * w, b * c * h * w, c // 16
    x = torch.randn(b, c, h, w)
    # SE: mean (n) + ReLU (b·r) + sigmoid (b·c) + x·s (n)
    for block in (SE(c), SEModule(c, rd_divisor=1)):
        cost = bench_flops.complexity(nn.Sequential(block), (x,))
        assert cost['flops_gates'] == n + b * r + b * c + n, type(block)
        assert cost['flops_mmengine'] == b * 2 * c * r and cost['uncounted'] == {}
        assert cost['blocks'] == {'0': dict(type=type(block).__name__, params=cost['params'],
                                            flops_mmengine=cost['flops_mmengine'], flops_gates=cost['flops_gates'])}
    # CBAM: channel gate mean + amax (2n), ReLU on both pooled vectors (2·b·r), their sum and sigmoid
    # (2·b·c), x·Mc (n); spatial gate amax + mean over channels (2n), sigmoid (b·hw), x'·Ms (n)
    for block in (CBAM(c), CbamModule(c)):
        cost = bench_flops.complexity(nn.Sequential(block), (x,))
        assert cost['flops_gates'] == 6 * n + 2 * b * r + 2 * b * c + b * hw, type(block)
        # shared MLP on 2b vectors, 7x7 conv (2 -> 1) per position, eval BN with affine (2 per element)
        assert cost['flops_mmengine'] == 2 * b * 2 * c * r + b * hw * 2 * 49 + 2 * b * hw


def test_gate_flops_of_a_peer_block_from_the_shared_list():
    """mmcv's GC block (in attn_plugins.analysis.PEER_BLOCKS): softmax over positions (5 per
    element), ReLU, the residual add; mmengine counts the convs, the context matmul and LayerNorm."""
    from mmcv.cnn.bricks.context_block import ContextBlock
    b, c, h, w = 2, 16, 5, 6
    hw, n, planes = h * w, b * c * h * w, 4
    cost = bench_flops.complexity(nn.Sequential(ContextBlock(c, 1 / 4)), (torch.randn(b, c, h, w),))
    assert cost['flops_gates'] == 5 * b * hw + b * planes + n and cost['uncounted'] == {}
    # mask conv (c -> 1), context matmul, conv c -> planes, LayerNorm with affine (5), conv planes -> c
    assert cost['flops_mmengine'] == b * hw * c + b * c * hw + b * c * planes + 5 * b * planes + b * planes * c
    assert list(cost['blocks']) == ['0'] and cost['blocks']['0']['type'] == 'ContextBlock'


def test_gates_counted_inside_blocks_only_and_unknown_ops_listed():
    """In a whole SE-ResNet only the SE blocks are counted (not the host's ReLUs or residual sums);
    an op the counter does not know is listed, not dropped."""
    import attn_plugins
    model = attn_plugins.create_model('resnet26', plugins=[dict(type='SE', where='layer*.*', position='after:bn3')])
    stages = [(2, 256), (2, 512), (2, 1024), (2, 2048)]   # resnet26: 2 bottlenecks per stage
    gates = bench_flops.gate_flops(model.eval(), (torch.randn(1, 3, 64, 64),))
    sides = [16, 8, 4, 2]                                 # layer1-4 maps of a 64x64 input
    expected = {f'layer{i + 1}.{j}.se': 2 * ch * s * s + ch // 16 + ch       # in the Bottleneck's slot
                for i, ((blocks, ch), s) in enumerate(zip(stages, sides)) for j in range(blocks)}
    assert gates['by_block'] == expected and gates['total'] == sum(expected.values())

    class AtanGate(nn.Module):       # atan: in none of attn_plugins.analysis' tables
        def forward(self, z):
            return torch.atan(z)
    model = nn.Sequential(nn.Hardshrink(), attn_plugins.modules.SE(32, gate=AtanGate()))
    cost = bench_flops.complexity(model, (torch.randn(1, 32, 4, 4),))
    assert cost['uncounted'] == {'atan': 1}      # the host's hardshrink (unknown too) is outside the blocks


def test_paper_parameter_counts_are_exact():
    rows = {(r['model'], r['source']): r for r in bench_paper.image_rows(flops=False)}
    se_extra = sum(n * (2 * c * (c // 16) + c // 16 + c) for n, c in R50_STAGES)
    se101_extra = sum(n * (2 * c * (c // 16) + c // 16 + c) for n, c in [(3, 256), (4, 512), (23, 1024), (3, 2048)])
    exact = {'ResNet-50': 25_557_032, 'SE-ResNet-50': 25_557_032 + se_extra,
             'CBAM-ResNet-50': 25_557_032 + se_extra + 16 * (2 * 49 + 2),
             'ResNet-101': 44_549_160, 'SE-ResNet-101': 44_549_160 + se101_extra}
    assert se_extra == 2_530_992
    for (model, source), row in rows.items():
        assert row['ours']['params'] == exact[model], model
        if row['paper_params_m'] is not None:      # 25.56M, 28.09M, 44.55M, 49.33M at the paper's 2 decimals
            assert row['params_match'] and round(row['ours']['params'] / 1e6, 2) == row['paper_params_m']
    video = {r['model']: r for r in bench_paper.video_rows(flops=False)}
    # non-local Table 2e: R101 C2D 43.2M (conv and FC weights; 43.32M with BN's affine parameters)
    assert round(video['R101 C2D']['ours']['conv_fc_params'] / 1e6, 1) == 43.2
    assert round(video['R101 C2D']['ours']['params'] / 1e6, 2) == 43.32
    assert round(video['NL R101 C2D 5-block']['ours_params_ratio'], 1) == 1.2      # Table 2e: 1.2x
    assert round(video['NL R50 C2D 5-block']['ours_params_ratio'], 1) == 0.7       # text: ~70%
    assert round(video['R50 C2D']['ours']['params'] / 1e6, 1) == 24.3


def test_se_paper_gflops_conventions():
    """SE-ResNet-50 counted as the papers do (the original ResNet: stride in the first 1x1 conv;
    multiply-adds of convs and FC layers): 3.860 in CBAM's table (MLP multiply-adds only), 3.87 in
    SE's Table 2 with the gate ops, and without the MLP the plain ResNet-50's 3.858 (CBAM) / 3.86 (SE)."""
    import attn_plugins
    model = attn_plugins.create_model('resnet50', plugins=[dict(type='SE', where='layer*.*', position='after:bn3')])
    x = torch.randn(1, 3, 224, 224)
    as_built = bench_flops.mmengine_flops(model.eval(), (x,))
    macs_v1 = bench_flops.mmengine_flops(bench_paper.resnet_v1(model), (x,))['macs'] / 1e9
    gates = bench_flops.gate_flops(model, (x,))['total'] / 1e9
    mlp = sum(n * 2 * c * (c // 16) for n, c in R50_STAGES) / 1e9
    assert round(macs_v1, 3) == 3.860 and round(macs_v1 + gates, 2) == 3.87
    assert round(macs_v1 - mlp, 3) == 3.858 and round(macs_v1 - mlp, 2) == 3.86
    assert as_built['total'] > as_built['macs'] > macs_v1 * 1e9          # timm's stride-in-3x3 ResNet, BN counted


@pytest.mark.slow
@pytest.mark.parametrize('count', [2, 3, 4, 5, 6])
def test_run_orders_balance_position_and_predecessor(count):
    """Over one cycle of `balanced_orders` every variant runs in every position equally often and
    right after each other variant equally often (a plain rotation runs b right after a in 2 of 3
    rounds and never right after c)."""
    from collections import Counter
    labels = list('abcdef'[:count])
    orders = bench_models.balanced_orders(labels)
    assert all(sorted(order) == labels for order in orders)
    positions = Counter((position, label) for order in orders for position, label in enumerate(order))
    assert set(positions.values()) == {len(orders) // count} and len(positions) == count * count
    follows = Counter((first, second) for order in orders for first, second in zip(order, order[1:]))
    assert len(follows) == count * (count - 1) and len(set(follows.values())) == 1, follows


def test_goal_cases_time_one_process_per_build_order(monkeypatch):
    """The model built later in a process ran ~1-2% faster, so a goal case runs one child process
    per build order (for base / ours / peer all 6: each variant built first, second, third and right
    after each other one equally often), with an equal share of the rounds, pooled; only the first
    child counts the complexity. Quick runs and other cases keep one process, built as listed."""
    from collections import Counter
    calls = []

    def fake_child(args):
        spec = json.loads(args[1])
        calls.append((spec.get('build_order'), args))
        repeats = int(args[args.index('--repeats') + 1])
        index = len(calls)
        return dict(times={label: [index + k / 10 for k in range(repeats)] for label in spec['variants']},
                    order=[list(spec['variants'])] * repeats,
                    complexity=None if '--no-complexity' in args else {'counted': index})

    monkeypatch.setattr(bench_models, 'run_child', fake_child)
    spec = dict(variants={'base': 'm:a', 'ours': 'm:b', 'peer': 'm:c'}, shape=[1, 3, 8, 8])
    timing = bench_models.time_case(spec, 2, 108, ['--threads', '2'], balance_builds=True)
    orders = [order for order, _ in calls]
    assert len(orders) == 6 and sorted(map(tuple, orders)) == sorted(set(map(tuple, orders)))
    assert all(sorted(order) == ['base', 'ours', 'peer'] for order in orders)
    assert set(Counter((i, label) for order in orders for i, label in enumerate(order)).values()) == {2}
    before = Counter((a, b) for order in orders for i, a in enumerate(order) for b in order[i + 1:])
    assert set(before.values()) == {3} and len(before) == 6        # ours before the peer in half the processes
    assert all(args[args.index('--repeats') + 1] == '18' and args[args.index('--warmup') + 1] == '2'
               for _, args in calls)
    assert ['--no-complexity' in args for _, args in calls] == [False] + [True] * 5
    assert timing['complexity'] == {'counted': 1} and timing['build_orders'] == orders
    assert len(timing['times']['ours']) == len(timing['order']) == 108
    assert timing['times']['ours'][:2] == [1.0, 1.1] and timing['times']['ours'][-1] == pytest.approx(6.0 + 1.7)
    # the goal cases as registered (base, ours, peer, peer_copy): 4 orders, each variant in each
    # position once, ours built before the peer in half of them (and before its copy)
    labels = list(bench_models.MODEL_CASES['ResNet-50 + SE']['variants'])
    assert labels == ['base', 'ours', 'peer', 'peer_copy']
    four = bench_models.build_orders(labels)
    assert len(four) == 4 and set(Counter((i, label) for order in four for i, label in enumerate(order)).values()) == {1}
    assert sum(o.index('ours') < o.index('peer') for o in four) == 2 == sum(o.index('ours') < o.index('peer_copy') for o in four)
    assert bench_models.GOAL_SCHEDULE[1] % (len(four) * len(bench_models.balanced_orders(labels))) == 0
    calls.clear()
    single = bench_models.time_case(spec, 2, 20, [], balance_builds=False)
    assert [order for order, _ in calls] == [None] and 'build_orders' not in single


def test_child_builds_in_the_given_order(monkeypatch):
    """child_time builds the variants in spec['build_order'] and reports them under their labels, in
    the case's own order; a build order that is not a permutation of the variants is refused."""
    built = []

    def fake_build(builder, quick=False):
        built.append(builder)
        return nn.Identity()

    monkeypatch.setattr(bench_models, 'build', fake_build)
    spec = dict(variants={'base': 'm:a', 'ours': 'm:b', 'peer': 'm:c'}, shape=[1, 2], build_order=['peer', 'base', 'ours'])
    result = bench_models.child_time(spec, False, 0, 6, 1, complexity=False)
    assert built == ['m:c', 'm:a', 'm:b'] and list(result['times']) == ['base', 'ours', 'peer']
    assert result['complexity'] is None and len(result['order']) == 6
    with pytest.raises(ValueError, match='build_order'):
        bench_models.child_time(dict(spec, build_order=['peer', 'base']), False, 0, 1, 1, complexity=False)


def test_quick_models_suite_json_plots_oom_and_readme(tmp_path):
    """VGG-16 +- LTPA and the PAM sweep on tiny shapes: rows with ratios to the base, the peer not run
    where its N x N maps exceed the (lowered) memory limit, valid PNGs; then the README section from
    that JSON, twice the same, only between the markers."""
    import matplotlib.image
    out = tmp_path / 'models.json'
    limit_gb = 0.004            # 3.4 MB usable: PAM at 8x16 (131 KB of maps) runs, 24x48 (10.6 MB) does not
    proc = subprocess.run([sys.executable, BENCH, '--suite', 'models', '--quick', '--threads', '1', '--only', 'VGG',
                           'PAM', '--mem-limit-gb', str(limit_gb), '--json', str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result['suite'] == 'models' and result['quick'] and '--suite models' in result['command']
    (row,) = result['rows']
    assert row['case'] == 'VGG-16 + LTPA' and set(row['variants']) == {'base', 'ours'}
    ours, base = row['variants']['ours'], row['variants']['base']
    assert len(ours['time_s']['samples']) == 3 and row['repeats'] == 3
    assert row['order'] == [['base', 'ours'], ['ours', 'base'], ['base', 'ours']]      # balanced_orders, from the first
    assert [b['type'] for b in ours['blocks'].values()] == ['PayAttention'] * 3
    assert all(b['flops_gates'] > 0 for b in ours['blocks'].values()) and base['blocks'] == {}
    ratios = row['vs_base']['ours']
    assert ratios['params'] == pytest.approx(ours['params'] / base['params'])
    assert ratios['flops'] == pytest.approx((ours['flops_mmengine'] + ours['flops_gates']) / base['flops'])
    assert ratios['time'] == pytest.approx(ours['time_s']['median'] / base['time_s']['median'])
    small, large = result['sweep']
    assert [p['block'] for p in result['sweep']] == ['PAM', 'PAM']
    assert small['peer_map_bytes'] == 2 * (8 * 16) ** 2 * 4 and not small['peer_out_of_memory'] and 'peer' in small
    assert large['peer_out_of_memory'] and 'peer' not in large and large['ours']['time_s']['median'] > 0
    assert large['memory_limit_bytes'] == int(limit_gb * 2 ** 30)
    assert 'VGG-16 + LTPA' in proc.stdout and 'out of memory' in proc.stdout
    assert sorted(os.path.basename(p) for p in result['plots']) == ['models_blocks.png', 'models_overhead.png',
                                                                   'resolution_sweep.png']
    for plot in result['plots']:
        assert matplotlib.image.imread(plot).shape[2] in (3, 4)

    readme = tmp_path / 'README.md'
    text = f"# title\n\nbefore\n\n{bench_models.README_START}\nold\n{bench_models.README_END}\n\nafter\n"
    readme.write_text(text)
    texts = []
    for _ in range(2):
        proc = subprocess.run([sys.executable, BENCH, '--readme', str(out), '--readme-file', str(readme)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        texts.append(readme.read_text())
    first = texts[0]
    assert texts[1] == first
    head, _, rest = first.partition(bench_models.README_START)
    section, _, tail = rest.partition(bench_models.README_END)
    assert head == '# title\n\nbefore\n\n' and tail == '\n\nafter\n'
    assert section == f"\n{bench_models.render_readme(result)}" and '\nold\n' not in section
    assert result['command'] in section and 'Quick run' in section and 'out of memory' in section
    assert '| VGG-16 + LTPA | ours |' in section


@pytest.mark.slow
def test_quick_models_suite_nonlocal_and_danet_cases(tmp_path):
    """The whole-model cases beside the goals run end to end on tiny shapes: ResNet-50 + 5 non-local
    blocks against mmcv's (5 blocks each side, same parameters) and DANet R50-D8 against mmseg's
    DAHead, each with its base, ratios and per-variant memory."""
    out = tmp_path / 'models.json'
    proc = subprocess.run([sys.executable, BENCH, '--suite', 'models', '--quick', '--threads', '1', '--no-sweep',
                           '--only', 'NonLocal x5', 'DANet R50-D8 512x1024', '--json', str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {row['case']: row for row in json.loads(out.read_text())['rows']}
    assert set(rows) == {'ResNet-50 + NonLocal x5', 'DANet R50-D8 512x1024'}
    for row in rows.values():
        assert set(row['variants']) == {'base', 'ours', 'peer'} and 'goal' not in row
        assert all(v['time_s']['median'] > 0 and v['peak_mb'] >= 0 for v in row['variants'].values())
        assert set(row['vs_base']) == {'ours', 'peer'}
    nonlocal_row = rows['ResNet-50 + NonLocal x5']
    ours, peer = nonlocal_row['variants']['ours'], nonlocal_row['variants']['peer']
    assert [b['type'] for b in ours['blocks'].values()] == ['NonLocal'] * 5
    assert ours['params'] == peer['params'] > nonlocal_row['variants']['base']['params']
    assert ours['flops_mmengine'] == peer['flops_mmengine']


def test_readme_section_is_rendered_from_the_json_alone(tmp_path, monkeypatch):
    """Paper rows only: the same JSON gives the same text; a README without the markers is an error."""
    models = bench_paper.image_models()
    monkeypatch.setattr(bench_paper, 'image_models', lambda: {'SE-ResNet-50': models['SE-ResNet-50']})
    rows = bench_paper.image_rows(flops=False)
    result = dict(suite='paper', quick=False, threads=2, command='python tools/benchmark.py --paper',
                  date='2026-01-01 00:00:00', machine=dict(cpu_count=2, processor='x86_64'), paper=rows)
    path = tmp_path / 'paper.json'
    path.write_text(json.dumps(result))
    text = bench_models.render_readme(json.loads(path.read_text()))
    assert text == bench_models.render_readme(json.loads(path.read_text()))
    assert '`python tools/benchmark.py --paper`' in text and '2026-01-01 00:00:00' in text
    assert '| SE-ResNet-50 | SE Table 2 | 1x3x224x224 | 28.09M (ours rounds to it) | 28,088,024 = 28.09M |' in text
    readme = tmp_path / 'README.md'
    readme.write_text('no markers here\n')
    proc = subprocess.run([sys.executable, BENCH, '--readme', str(path), '--readme-file', str(readme)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and 'has no results section' in proc.stderr and 'bench-results:start' in proc.stderr
    assert readme.read_text() == 'no markers here\n'


def test_attn_plugins_bench_is_tools_benchmark():
    proc = subprocess.run([sys.executable, '-m', 'attn_plugins.cli', 'bench', '--suite', 'models', '--only', 'Nope'],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert proc.returncode == 2
    assert 'attn-plugins bench: error: --only Nope: no models case matches' in proc.stderr
    assert 'ResNet-50 + SE' in proc.stderr and 'sweep PAM' in proc.stderr
