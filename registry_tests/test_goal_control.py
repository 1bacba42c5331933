"""The goal's control (a second instance of the peer): a copy measuring faster than the peer must
not turn a tie with the peer into a FAIL (FAIL needs ours slower than both instances)."""
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
import bench_models  # noqa: E402


def test_a_control_below_one_does_not_lower_the_fail_floor():
    case = bench_models.MODEL_CASES['ResNet-50 + SE']
    labels = list(case['variants'])
    rounds = 21
    complexity = {k: dict(params=1, flops_mmengine=1, flops_gates=0, flops=1, blocks={}, uncounted={}) for k in labels}
    memory = {k: dict(peak_mb=1.0, process_peak_mb=1.0) for k in labels}
    times = dict(base=[0.9] * rounds, peer=[1.0] * rounds,
                 ours=[0.996 + 0.0004 * (i % 21) for i in range(rounds)],             # 0.996-1.004: a tie
                 peer_copy=[0.99 + 0.0002 * (i % 5) for i in range(rounds)])          # the copy ~1% faster
    timing = dict(times=times, order=[labels] * rounds, complexity=complexity)
    goal = bench_models.case_row('ResNet-50 + SE', (1, 3, 8, 8), timing, memory, 0)['goal']
    low, high = goal['ours_vs_peer_ci']
    assert goal['control_ci'][1] < low < 1 < high <= 1.02
    assert 1 < goal['ours_vs_peer_copy_ci'][0] and goal['ours_vs_peer_copy_ci'][1] <= 1.02
    assert goal['status'] == 'PASS' and goal['verdict'] == 'slower than one instance of the peer only'
