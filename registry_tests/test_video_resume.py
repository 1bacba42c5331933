"""Video (issue 9): tools/train.py --resume continues a non-local video run exactly as if it had
never stopped (optimizer state, LR schedule, and the random frame offsets of SampleFrames)."""
import glob
import importlib.util
import json
import os

import pytest
import torch

from attn_plugins.checkpoint import load_state_dict_file
from attn_plugins.runner import build_runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
C2D_TOY = os.path.join(ROOT, 'configs', 'video', 'toy', 'nonlocal_c2d_r50_toy.yaml')


def tool(name):
    spec = importlib.util.spec_from_file_location(f'tool_{name}', os.path.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def trained_iterations(work_dir):
    """Iterations that the latest run in `work_dir` trained (its scalars.json, one record each)."""
    latest = sorted(p for p in glob.glob(os.path.join(work_dir, '*', 'vis_data', 'scalars.json')))[-1]
    with open(latest) as f:
        return [record['iter'] for record in map(json.loads, f) if 'loss' in record]


@pytest.mark.slow
def test_resume_with_the_tools_continues_exactly(tmp_path):
    """An epoch-based run of the toy C2D non-local config stopped after epoch 1 and resumed with
    --resume ends with the weights (and AdamW moments) of the run that was never stopped."""
    data = str(tmp_path / 'toy_rawframes')
    assert tool('make_toy_rawframes').main(['--out', data, '--train-per-class', '4', '--val-per-class', '1']) == 0
    options = [f'{loader}.dataset.data_root={data}' for loader in ('train_dataloader', 'val_dataloader',
                                                                   'test_dataloader')] + [
        'train_dataloader.dataset.indices=8', 'train_dataloader.batch_size=4',   # 2 iterations an epoch
        'val_dataloader.dataset.indices=4',
        'train_cfg.max_epochs=2', 'train_cfg.val_interval=1', 'default_hooks.checkpoint.interval=1',
        'param_scheduler.0.T_max=2', 'param_scheduler.0.end=2', 'default_hooks.logger.interval=1',
        'log_level=WARNING']
    train = tool('train').main
    assert train([C2D_TOY, '--work-dir', str(tmp_path / 'a'), '--cfg-options', *options]) == 0
    first = build_runner(C2D_TOY, work_dir=str(tmp_path / 'b'), cfg_options=options)
    first.train_loop._max_epochs = 1                 # stop after epoch 1, as an interrupted run would
    first.train()
    assert os.path.exists(tmp_path / 'b' / 'epoch_1.pth') and not os.path.exists(tmp_path / 'b' / 'epoch_2.pth')
    assert train([C2D_TOY, '--work-dir', str(tmp_path / 'b'), '--resume', '--cfg-options', *options]) == 0
    assert trained_iterations(tmp_path / 'a') == [1, 2, 3, 4]
    assert trained_iterations(tmp_path / 'b') == [3, 4]          # went on from epoch 1, not from scratch
    a = torch.load(str(tmp_path / 'a' / 'epoch_2.pth'), map_location='cpu', weights_only=True)
    b = torch.load(str(tmp_path / 'b' / 'epoch_2.pth'), map_location='cpu', weights_only=True)
    assert a['meta']['iter'] == b['meta']['iter'] == 4
    weights_a, weights_b = load_state_dict_file(str(tmp_path / 'a' / 'epoch_2.pth')), \
        load_state_dict_file(str(tmp_path / 'b' / 'epoch_2.pth'))
    assert weights_a.keys() == weights_b.keys() and any('attn_non_local' in k for k in weights_a)
    for key in weights_a:
        torch.testing.assert_close(weights_a[key], weights_b[key], rtol=0, atol=1e-6, msg=key)
    moments_a, moments_b = a['optimizer']['state'], b['optimizer']['state']
    assert moments_a.keys() == moments_b.keys() and moments_a
    for index in moments_a:
        for name in ('exp_avg', 'exp_avg_sq', 'step'):
            torch.testing.assert_close(moments_a[index][name], moments_b[index][name], rtol=0, atol=1e-6,
                                       msg=f'{index}.{name}')
