"""attn_plugins.runner.build_runner: runs in one process keep their own logs."""
import os

from attn_plugins.runner import build_runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, 'configs', 'seg', 'toy', 'se_fcn_r50-d8_toy.yaml')


def test_two_runs_of_one_config_in_a_process_log_into_their_own_work_dirs(tmp_path):
    """mmengine keys its logger / MessageHub / Visualizer singletons by experiment name: a second
    run of the same config must get its own, or its scalars land in the first run's work dir."""
    first = build_runner(TOY, work_dir=str(tmp_path / 'a'))
    second = build_runner(TOY, work_dir=str(tmp_path / 'b'))
    assert first.experiment_name != second.experiment_name
    assert first.experiment_name.startswith('se_fcn_r50-d8_toy_')
    assert second.visualizer is not first.visualizer
    assert second.visualizer._vis_backends['LocalVisBackend']._save_dir.startswith(str(tmp_path / 'b'))
