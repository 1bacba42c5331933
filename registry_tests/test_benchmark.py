"""tools/benchmark.py end to end in --quick mode: interleaved rounds after warm-up, spread and ratios
in the JSON and the table (a harness check; the numbers of tiny shapes mean nothing)."""
import json
import os
import statistics
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_benchmark(tmp_path, *args):
    out = tmp_path / 'bench.json'
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'benchmark.py'), '--quick', '--threads', '1',
                           '--json', str(out), *args], capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text()), proc.stdout


def check_row(row):
    warmup, repeats = row['warmup'], row['repeats']
    assert (warmup, repeats) == (1, 3), '--quick: 1 warm-up and 3 timed rounds'
    # interleaved: both sides in every round, the side that goes first alternating
    assert len(row['warmup_order']) == warmup and len(row['order']) == repeats
    assert all(sorted(pair) == ['ours', 'peer'] for pair in row['warmup_order'] + row['order'])
    firsts = [pair[0] for pair in row['warmup_order'] + row['order']]
    assert all(a != b for a, b in zip(firsts, firsts[1:])), firsts
    for side in ('ours', 'peer'):
        t = row[f'{side}_time_s']
        assert len(t['samples']) == repeats and all(s > 0 for s in t['samples'])
        assert t['min'] == min(t['samples']) and t['max'] == max(t['samples'])
        assert t['median'] == pytest.approx(statistics.median(t['samples']))
        assert t['min'] <= t['q1'] <= t['median'] <= t['q3'] <= t['max']
    ratio = row['speedup']
    assert ratio['ratio'] == pytest.approx(row['peer_time_s']['median'] / row['ours_time_s']['median'])
    paired = [p / o for o, p in zip(row['ours_time_s']['samples'], row['peer_time_s']['samples'])]
    assert (ratio['paired_min'], ratio['paired_max']) == (pytest.approx(min(paired)), pytest.approx(max(paired)))
    for side in ('ours', 'peer'):
        assert row[f'{side}_peak_mb'] >= 0 and row[f'{side}_process_peak_mb'] > 0
    assert row['memory_ratio'] == pytest.approx(row['peer_peak_mb'] / max(row['ours_peak_mb'], 1e-3))


def test_quick_blocks_benchmark_json(tmp_path):
    """One case (three child processes: timing, and memory for each side) keeps this fast."""
    result, stdout = run_benchmark(tmp_path, '--suite', 'blocks', '--only', 'SE r50-layer4')
    assert result['suite'] == 'blocks' and result['quick'] and result['threads'] == 1
    assert 'loadavg_before' in result['machine']
    (row,) = result['rows']
    assert row['case'] == 'SE r50-layer4' and row['shape'] == [2, 256, 4, 4]
    check_row(row)
    line = next(l for l in stdout.splitlines() if l.startswith('SE r50-layer4'))
    assert line.count('[') == 3 and f"{row['speedup']['ratio']:.2f}x" in line   # both spreads, the ratio's


def test_unknown_case_is_a_clear_error(tmp_path):
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'benchmark.py'), '--only', 'Nope'],
                          capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 2 and '--only Nope: no blocks case matches' in proc.stderr


@pytest.mark.slow
@pytest.mark.parametrize('suite', ['blocks', 'seg'])
def test_quick_suite_runs_every_case_interleaved(tmp_path, suite):
    """Every case of the suite, PAM, NonLocal and the whole-image DANet included, is timed the same way."""
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    try:
        import benchmark
    finally:
        sys.path.pop(0)
    result, _ = run_benchmark(tmp_path, '--suite', suite)
    assert [r['case'] for r in result['rows']] == list(benchmark.SEG_CASES if suite == 'seg' else benchmark.CASES)
    for row in result['rows']:
        check_row(row)


def test_quick_train_benchmark_json(tmp_path):
    """Suite 'train': a PAM training step against mmseg's and against the bmm ceiling, with ours / peer ratios."""
    result, stdout = run_benchmark(tmp_path, '--suite', 'train', '--only', 'PAM train fp32')
    assert [row['case'] for row in result['rows']] == ['PAM train fp32', 'PAM train fp32 vs bmm ceiling']
    for row in result['rows']:
        check_row(row)
        assert row['ours_over_peer']['time'] == pytest.approx(1 / row['speedup']['ratio'])
        assert row['ours_over_peer']['memory'] == pytest.approx(row['ours_peak_mb'] / max(row['peer_peak_mb'], 1e-3))
        assert f"{row['case']}: ours / peer time {row['ours_over_peer']['time']:.2f}x" in stdout


def test_bmm_ceiling_has_the_flops_of_our_training_step():
    """The ceiling row's bmm calls do exactly the matmul FLOPs of our PAM training step (quick shape,
    which takes the chunked flash path), in the step's precision."""
    import torch
    from torch.utils._python_dispatch import TorchDispatchMode
    sys.path.insert(0, os.path.join(ROOT, 'tools'))
    import benchmark

    class BmmFlops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.flops, self.dtypes = 0, set()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.overloadpacket.__name__ == 'bmm':
                a, b = args[:2]
                self.flops += 2 * a.shape[0] * a.shape[1] * a.shape[2] * b.shape[2]
                self.dtypes.add(a.dtype)
            return func(*args, **(kwargs or {}))

    for name in ('PAM train fp32 vs bmm ceiling', 'PAM train bf16 vs bmm ceiling'):
        ours, peer_import, peer, _, shape = benchmark.TRAIN_CASES[name]
        scope = {}
        exec(benchmark.PRELUDE.format(threads=1, imports=benchmark.BLOCK_IMPORTS.format(peer_import=peer_import),
                                      shape=shape) + benchmark.TRAIN_HELPERS, scope)
        counts = []
        for impl in (eval(ours, scope), eval(peer, scope)):
            with BmmFlops() as mode:
                impl(scope['x'])
            counts.append((mode.flops, mode.dtypes))
        b, c, n = shape[0], shape[1], shape[2] * shape[3]
        assert counts[0] == counts[1], (name, counts)
        assert counts[0][0] == 2 * b * n * n * (3 * c + 4 * 64)
        assert counts[0][1] == {torch.bfloat16 if 'bf16' in name else torch.float32}
