"""Runs whose result cannot be trusted end with a clear error and a non-zero status: a training
loss that became NaN / inf (mmengine trains on silently; a diverged detector then evaluates to no
metrics), and a test whose evaluator gives no metrics (mmdet's CocoMetric only logs an ERROR)."""
import os
import subprocess
import sys
from types import SimpleNamespace

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, 'configs', 'seg', 'toy', 'se_fcn_r50-d8_toy.yaml')


def test_finite_loss_hook_stops_at_the_first_non_finite_loss_and_names_it():
    from attn_plugins.integrations.mmengine import FiniteLossHook, TrainingDiverged
    hook, runner = FiniteLossHook(), SimpleNamespace(iter=4, epoch=1)
    hook.after_train_iter(runner, 0, outputs={'loss': torch.tensor(2.5), 'loss_cls': torch.tensor(1.0),
                                              'acc': torch.tensor(float('nan'))})    # not a loss: ignored
    for bad in (float('nan'), float('inf')):
        with pytest.raises(TrainingDiverged, match=r'iteration 5 \(epoch 2\).*loss_bbox=(nan|inf).*lr'):
            hook.after_train_iter(runner, 0, outputs={'loss': torch.tensor(bad), 'loss_bbox': torch.tensor(bad),
                                                      'loss_cls': torch.tensor(0.3)})


def test_every_run_of_our_tools_checks_its_loss(tmp_path):
    from attn_plugins.integrations.mmengine import FiniteLossHook
    from attn_plugins.runner import build_runner
    runner = build_runner(TOY, work_dir=str(tmp_path))
    assert any(isinstance(h, FiniteLossHook) for h in runner.hooks)


def test_a_test_without_metrics_fails(monkeypatch, tmp_path, capsys):
    import attn_plugins.runner as runner_module
    from attn_plugins.cli import test_main
    fake = SimpleNamespace(test=lambda: {})
    monkeypatch.setattr(runner_module, 'build_runner', lambda *a, **k: fake)
    assert test_main([TOY, str(tmp_path / 'model.pth')], prog='test.py') == 1
    assert 'gave no metrics' in capsys.readouterr().err
    fake.test = lambda: {'mIoU': 41.5}
    assert test_main([TOY, str(tmp_path / 'model.pth')], prog='test.py') == 0


@pytest.mark.slow
def test_train_tool_stops_a_diverging_run(tmp_path):
    """tools/train.py at an absurd learning rate: one line naming the divergence, status 1, no traceback."""
    data = str(tmp_path / 'toy_cityscapes')
    subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'make_toy_cityscapes.py'), '--out', data,
                    '--train', '4', '--val', '2'], check=True)
    options = [f'train_dataloader.dataset.data_root={data}', f'val_dataloader.dataset.data_root={data}',
               'train_cfg.max_iters=6', 'train_cfg.val_interval=6', 'param_scheduler.0.end=6',
               'optim_wrapper.optimizer.lr=1e30', 'log_level=WARNING']
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'train.py'), TOY, '--work-dir',
                           str(tmp_path / 'work'), '--cfg-options', *options],
                          capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert done.returncode == 1, done.stderr[-2000:]
    assert 'train.py: error: training diverged at iteration' in done.stderr
    assert 'Traceback' not in done.stderr
