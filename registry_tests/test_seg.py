"""Segmentation on generated Cityscapes data: every toy config trains and evaluates with mmseg's
IoUMetric; a longer run learns; resume continues exactly; DDP on gloo; checkpoint converters."""
import glob
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from mmengine.registry import init_default_scope

import attn_plugins
from attn_plugins.checkpoint import load_state_dict_file
from attn_plugins.integrations.convert import convert_dahead_state_dict, convert_nlhead_state_dict
from attn_plugins.runner import build_runner
from conftest import randomize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = sorted(glob.glob(os.path.join(ROOT, 'configs', 'seg', 'toy', '*.yaml')))
DEMO = os.path.join(ROOT, 'configs', 'seg', 'toy', 'cbam_danet_r50-d8_toy.yaml')
DETERMINISTIC = {'train_dataloader.dataset.pipeline': [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations'),
                                                       dict(type='PackSegInputs')],
                 'model.decode_head.dropout_ratio': 0.0, 'model.auxiliary_head.dropout_ratio': 0.0}


@pytest.fixture(scope='session')
def toy_data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp('data') / 'toy_cityscapes')
    subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'make_toy_cityscapes.py'), '--out', out,
                    '--train', '12', '--val', '6'], check=True)
    return out


def options(data_root, iters):
    """--cfg-options strings: the toy data location and a schedule of `iters` iterations."""
    return [f'train_dataloader.dataset.data_root={data_root}', f'val_dataloader.dataset.data_root={data_root}',
            f'test_dataloader.dataset.data_root={data_root}', f'train_cfg.max_iters={iters}',
            f'train_cfg.val_interval={iters}', f'param_scheduler.0.end={iters}',
            f'default_hooks.checkpoint.interval={iters}', 'log_level=WARNING', 'randomness.seed=0']


def options_dict(data_root, iters, **extra):
    from attn_plugins.config import parse_overrides
    return {**parse_overrides(options(data_root, iters)), **extra}


def test_toy_dataset_layout_and_determinism(toy_data, tmp_path):
    imgs = sorted(glob.glob(os.path.join(toy_data, 'leftImg8bit', 'train', '*', '*_leftImg8bit.png')))
    gts = sorted(glob.glob(os.path.join(toy_data, 'gtFine', 'train', '*', '*_gtFine_labelTrainIds.png')))
    assert len(imgs) == len(gts) == 12
    import cv2
    labels = np.unique(np.concatenate([np.unique(cv2.imread(p, cv2.IMREAD_UNCHANGED)) for p in gts]))
    assert set(labels) <= set(range(19)) | {255} and 255 in labels and len(labels) >= 10
    again = str(tmp_path / 'again')
    subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'make_toy_cityscapes.py'), '--out', again,
                    '--train', '12', '--val', '6'], check=True)
    for p in gts[:3]:
        twin = p.replace(toy_data, again)
        assert np.array_equal(cv2.imread(p, cv2.IMREAD_UNCHANGED), cv2.imread(twin, cv2.IMREAD_UNCHANGED))


@pytest.mark.parametrize('config', TOY, ids=os.path.basename)
def test_every_toy_config_trains_and_evaluates(config, toy_data, tmp_path):
    runner = build_runner(config, work_dir=str(tmp_path), cfg_options=options(toy_data, 3))
    runner.train()
    metrics = runner.test()
    assert set(metrics) >= {'aAcc', 'mIoU', 'mAcc'} and 0 <= metrics['mIoU'] <= 100
    assert os.path.exists(tmp_path / 'iter_3.pth')
    dumped = glob.glob(str(tmp_path / '*.py'))        # the resolved config, reloadable
    assert len(dumped) == 1 and attn_plugins.load_config(dumped[0]).model.type == 'EncoderDecoder'


def constant_class_miou(data_root):
    """mIoU (as IoUMetric computes it) of always predicting the most frequent val class."""
    import cv2
    gts = [cv2.imread(p, cv2.IMREAD_UNCHANGED) for p in glob.glob(os.path.join(data_root, 'gtFine', 'val', '*', '*.png'))]
    labels = np.concatenate([g[g != 255] for g in gts])
    counts = np.bincount(labels, minlength=19)
    present = counts > 0
    best = counts.argmax()
    iou = np.zeros(19)
    iou[best] = counts[best] / len(labels)           # union = all valid pixels
    return 100 * iou[present].mean()


@pytest.mark.slow
def test_cbam_danet_learns_far_above_constant_baseline(toy_data, tmp_path):
    runner = build_runner(DEMO, work_dir=str(tmp_path), cfg_options=options(toy_data, 200))
    runner.train()
    miou = runner.test()['mIoU']
    baseline = constant_class_miou(toy_data)
    assert baseline < 5
    assert miou > 4 * baseline and miou > 15, (miou, baseline)


def test_resume_continues_exactly(toy_data, tmp_path):
    straight = build_runner(DEMO, work_dir=str(tmp_path / 'a'), cfg_options=options_dict(toy_data, 6, **DETERMINISTIC))
    straight.train()
    first = build_runner(DEMO, work_dir=str(tmp_path / 'b'), cfg_options=options_dict(
        toy_data, 6, **DETERMINISTIC, **{'default_hooks.checkpoint.interval': 3}))
    first.train_loop._max_iters = 3                 # stop half-way, as an interrupted run would
    first.train()
    resumed = build_runner(DEMO, work_dir=str(tmp_path / 'b'), cfg_options=options_dict(toy_data, 6, **DETERMINISTIC),
                           resume=str(tmp_path / 'b' / 'iter_3.pth'))
    resumed.train()
    assert resumed.iter == 6
    a = load_state_dict_file(str(tmp_path / 'a' / 'iter_6.pth'))
    b = load_state_dict_file(str(tmp_path / 'b' / 'iter_6.pth'))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


@pytest.mark.slow
def test_ddp_two_processes_on_gloo(toy_data, tmp_path):
    cmd = [os.path.join(os.path.dirname(sys.executable), 'torchrun'), '--nproc_per_node=2', '--master_port=29533',
           os.path.join(ROOT, 'tools', 'train.py'), DEMO, '--launcher', 'pytorch', '--work-dir', str(tmp_path),
           '--cfg-options', *options(toy_data, 2), 'log_level=INFO']
    env = dict(os.environ, OMP_NUM_THREADS='1')
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.exists(tmp_path / 'iter_2.pth')
    log = out.stdout + out.stderr
    assert 'Distributed training: True' in log and 'GPU number: 2' in log   # mmengine's words for world size


@pytest.mark.slow
def test_mmseg_own_train_script_runs_our_yaml(toy_data, tmp_path):
    import mmseg
    script = os.path.join(os.path.dirname(mmseg.__file__), '.mim', 'tools', 'train.py')
    cfg = os.path.join(ROOT, 'configs', 'seg', 'toy', 'danet_r50-d8_toy.yaml')
    out = subprocess.run([sys.executable, script, cfg, '--work-dir', str(tmp_path), '--cfg-options',
                          *options(toy_data, 2)], capture_output=True, text=True, timeout=600, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.exists(tmp_path / 'iter_2.pth')


def build_head(cfg):
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    return MODELS.build(cfg)


HEAD_CFG = dict(in_channels=32, channels=16, num_classes=5, norm_cfg=dict(type='BN'), dropout_ratio=0.1)


def test_dahead_checkpoint_converts_with_output_parity():
    peer = randomize(build_head(dict(type='DAHead', pam_channels=4, **HEAD_CFG))).eval()
    ours = build_head(dict(type='DualAttentionHead', pam_channels=4, chunk_elements=64, **HEAD_CFG)).eval()
    ours.load_state_dict(convert_dahead_state_dict(peer.state_dict()))
    x = [torch.randn(2, 32, 9, 13)]
    with torch.no_grad():
        for a, b in zip(ours(x), peer(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('mode', ['embedded_gaussian', 'dot_product', 'concatenation', 'gaussian'])
def test_nlhead_checkpoint_converts_with_output_parity(mode):
    peer = randomize(build_head(dict(type='NLHead', mode=mode, **HEAD_CFG))).eval()
    ours = build_head(dict(type='NonLocalHead', mode=mode, chunk_elements=64, **HEAD_CFG)).eval()
    ours.load_state_dict(convert_nlhead_state_dict(peer.state_dict()))
    x = [torch.randn(2, 32, 9, 13)]
    with torch.no_grad():
        torch.testing.assert_close(ours(x), peer(x), rtol=1e-5, atol=1e-5)


def test_test_tool_converts_an_mmseg_danet_checkpoint(toy_data, tmp_path):
    """A user's mmseg DANet checkpoint evaluates with our config through tools/test.py's path."""
    cfg_path = os.path.join(ROOT, 'configs', 'seg', 'toy', 'danet_r50-d8_toy.yaml')
    cfg = attn_plugins.load_config(cfg_path)
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    peer_cfg = cfg.model.copy()
    peer_cfg.decode_head = dict(peer_cfg.decode_head, type='DAHead')
    peer_cfg.decode_head.pop('loss_weights')
    peer_cfg.decode_head.pop('chunk_elements', None)
    peer = MODELS.build(peer_cfg)
    ckpt = str(tmp_path / 'mmseg_danet.pth')
    torch.save({'state_dict': randomize(peer).state_dict(), 'meta': {}}, ckpt)
    runner = build_runner(cfg_path, work_dir=str(tmp_path / 'w'), cfg_options=options(toy_data, 1), load_from=ckpt)
    metrics = runner.test()
    assert 'mIoU' in metrics and os.path.basename(runner.cfg.load_from).startswith('converted_')
    peer.eval(), runner.model.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(runner.model(x, mode='tensor')[0], peer(x, mode='tensor')[0], rtol=1e-4, atol=1e-4)


def test_progress_hook_prints_iterations(toy_data, tmp_path, capsys):
    runner = build_runner(DEMO, work_dir=str(tmp_path), cfg_options=options(toy_data, 2), progress_interval=1)
    runner.train()
    lines = [l for l in capsys.readouterr().out.splitlines() if l.startswith('[train]')]
    assert len(lines) == 2 and lines[-1].split()[2] == '2/2' and 'eta' in lines[-1]


@pytest.mark.skipif(torch.cuda.is_available(), reason='the error is for CPU-only machines')
def test_amp_on_cpu_is_a_clear_error(toy_data, tmp_path):
    with pytest.raises(attn_plugins.ConfigError, match="--amp: mmengine's AmpOptimWrapper trains on a GPU only"):
        build_runner(DEMO, work_dir=str(tmp_path), cfg_options=options(toy_data, 1), amp=True)


def test_numpy_meta_loads_with_weights_only(tmp_path):
    path = str(tmp_path / 'np.pth')
    torch.save({'state_dict': {'w': torch.ones(2)}, 'meta': {'a': np.arange(3), 's': np.float64(1.5)}}, path)
    assert torch.equal(load_state_dict_file(path)['w'], torch.ones(2))
