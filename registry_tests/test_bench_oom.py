"""The models suite's resolution sweep skips a peer as 'out of memory' from an estimate of its N x N
maps (`bench_models.peer_map_bytes`, against the machine's memory): the estimate is what the peer
really allocates, measured in a child process as the sweep measures it."""
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, 'tools'))
import bench_models  # noqa: E402


def test_peer_map_estimate_is_mmseg_pams_measured_peak():
    shape = (1, 16, 48, 64)         # N = 3072: 72 MB of maps, far above the block's other buffers
    ours, peer, peer_import, _ = bench_models.SWEEP_BLOCKS['PAM']
    spec = json.dumps(dict(factories=dict(ours=ours, peer=peer),
                           imports=dict(ours=bench_models.OURS_IMPORT, peer=peer_import), shape=shape))
    measured = bench_models.run_child(['block', spec, '--memory-of', 'peer', '--threads', '1'])['peak_mb']
    estimate = bench_models.peer_map_bytes('PAM', shape) / 2 ** 20
    assert estimate == 2 * 3072 ** 2 * 4 / 2 ** 20
    assert 0.95 * estimate <= measured <= 1.25 * estimate, (measured, estimate)   # measured 75 MB for 72
