"""Segmentation on generated Cityscapes data: every toy config trains and evaluates with mmseg's
IoUMetric and reloads its checkpoint strictly; toy models learn; resume continues exactly; DDP on
gloo; checkpoint converters; the tools as a user runs them (clear errors, paths from the cwd)."""
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
from blocks_zoo import assert_chunked, set_chunk_rows
from conftest import randomize

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = sorted(glob.glob(os.path.join(ROOT, 'configs', 'seg', 'toy', '*.yaml')))
DEMO = os.path.join(ROOT, 'configs', 'seg', 'toy', 'cbam_danet_r50-d8_toy.yaml')
CONVNEXT = next(p for p in TOY if 'convnext' in p)


from conftest import load_tool as tool  # noqa: E402


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
            f'default_hooks.checkpoint.interval={iters}', 'log_level=WARNING']


def options_dict(data_root, iters, **extra):
    from attn_plugins.config import parse_overrides
    return {**parse_overrides(options(data_root, iters)), **extra}


def test_toy_dataset_layout_and_determinism(toy_data, tmp_path):
    imgs = sorted(glob.glob(os.path.join(toy_data, 'leftImg8bit', 'train', '*', '*_leftImg8bit.png')))
    gts = sorted(glob.glob(os.path.join(toy_data, 'gtFine', 'train', '*', '*_gtFine_labelTrainIds.png')))
    assert len(imgs) == len(gts) == 12
    import cv2
    labels = np.unique(np.concatenate([np.unique(cv2.imread(p, cv2.IMREAD_UNCHANGED)) for p in gts]))
    assert set(labels) == set(range(19)) | {255}        # all 19 train ids (an absent class biases mIoU)
    val = glob.glob(os.path.join(toy_data, 'gtFine', 'val', '*', '*_gtFine_labelTrainIds.png'))
    assert set(np.unique(np.concatenate([np.unique(cv2.imread(p, cv2.IMREAD_UNCHANGED)) for p in val]))) >= set(range(19))
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
    assert set(metrics) >= {'aAcc', 'mIoU', 'mAcc'}
    dumped = glob.glob(str(tmp_path / '*.py'))        # the resolved config, reloadable
    assert len(dumped) == 1 and attn_plugins.load_config(dumped[0]).model.type == 'EncoderDecoder'
    # tools/test.py's path: the checkpoint fits a freshly built model key for key, and gives the same metrics
    again = build_runner(config, work_dir=str(tmp_path / 'test'), cfg_options=options(toy_data, 3),
                         load_from=str(tmp_path / 'iter_3.pth'))
    assert again.test() == pytest.approx(metrics, abs=1e-6)


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


def test_convnext_toy_learns_above_constant_baseline(toy_data, tmp_path):
    """20 iterations of the fastest-learning toy config beat predicting the most frequent class."""
    runner = build_runner(CONVNEXT, work_dir=str(tmp_path), cfg_options=options(toy_data, 20))
    runner.train()
    metrics = runner.test()
    baseline = constant_class_miou(toy_data)
    assert metrics['mIoU'] > 3 * baseline, (metrics, baseline)


@pytest.mark.slow
def test_cbam_danet_learns_far_above_constant_baseline(toy_data, tmp_path):
    runner = build_runner(DEMO, work_dir=str(tmp_path), cfg_options=options(toy_data, 200))
    runner.train()
    miou = runner.test()['mIoU']
    baseline = constant_class_miou(toy_data)
    assert baseline < 5
    assert miou > 4 * baseline and miou > 15, (miou, baseline)


@pytest.mark.parametrize('config', [DEMO, CONVNEXT], ids=os.path.basename)
def test_resume_continues_exactly(config, toy_data, tmp_path):
    """The shipped toy configs as they are (seeded; random resize, crop and flip; dropout, drop path)."""
    straight = build_runner(config, work_dir=str(tmp_path / 'a'), cfg_options=options(toy_data, 6))
    straight.train()
    first = build_runner(config, work_dir=str(tmp_path / 'b'), cfg_options=options_dict(
        toy_data, 6, **{'default_hooks.checkpoint.interval': 3}))
    first.train_loop._max_iters = 3                 # stop half-way, as an interrupted run would
    first.train()
    resumed = build_runner(config, work_dir=str(tmp_path / 'b'), cfg_options=options(toy_data, 6), resume='auto')
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


def test_dahead_checkpoint_converts_with_output_parity(force_chunks, bmm_spy):
    peer = randomize(build_head(dict(type='DAHead', pam_channels=4, **HEAD_CFG))).eval()
    ours = build_head(dict(type='DualAttentionHead', pam_channels=4, **HEAD_CFG)).eval()
    ours.load_state_dict(convert_dahead_state_dict(peer.state_dict()))
    x = [torch.randn(2, 32, 9, 13)]
    sizes = set_chunk_rows(ours, x, rows=10)          # 117 positions: 12 chunks
    bmm_spy.shapes.clear()
    with torch.no_grad():
        got = ours(x)
        assert_chunked(bmm_spy, sizes, rows=10)
        for a, b in zip(got, peer(x)):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('mode', ['embedded_gaussian', 'dot_product', 'concatenation', 'gaussian'])
def test_nlhead_checkpoint_converts_with_output_parity(mode, force_chunks, bmm_spy):
    peer = randomize(build_head(dict(type='NLHead', mode=mode, **HEAD_CFG))).eval()
    ours = build_head(dict(type='NonLocalHead', mode=mode, **HEAD_CFG)).eval()
    ours.load_state_dict(convert_nlhead_state_dict(peer.state_dict()))
    x = [torch.randn(2, 32, 9, 13)]
    sizes = set_chunk_rows(ours, x, rows=10)
    bmm_spy.shapes.clear()
    with torch.no_grad():
        got = ours(x)
        if mode != 'dot_product':      # dot_product never forms the map
            assert_chunked(bmm_spy, sizes, rows=10)
        torch.testing.assert_close(got, peer(x), rtol=1e-5, atol=1e-5)


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


# ---------------------------------------------------------------- the ConvNeXt config
def build_segmentor(config, **overrides):
    cfg = attn_plugins.load_config(config, overrides)
    init_default_scope('mmseg')
    from mmseg.registry import MODELS
    model = MODELS.build(cfg.model)
    model.init_weights()
    return model.eval()


def test_convnext_cbam_keeps_the_backbone_output_scale():
    """CBAM on ConvNeXt's residual branch leaves the identity path alone: at init the backbone's
    outputs keep the scale of the plain model (CBAM after each whole block shrank it ~1e5-fold)."""
    x = torch.randn(2, 3, 96, 96)
    with torch.no_grad():
        ours = build_segmentor(CONVNEXT).backbone(x)
        plain = build_segmentor(CONVNEXT, **{'model.backbone.plugins': []}).backbone(x)
    assert len(ours) == len(plain)
    for level, (a, b) in enumerate(zip(ours, plain)):
        assert a.std() > 0.5 * b.std(), (level, a.std().item(), b.std().item())


def test_convnext_config_uses_mmseg_stage_wise_lr_decay():
    """mmseg's ConvNeXt rule (decay 0.9, num_layers 6 -> 8 ids): stem and downsampling layers id 0,
    stage k id k+1, everything else id 7; lr = base * 0.9 ** (7 - id); no weight decay on 1-D
    parameters and biases. A CBAM inside a block goes with its block."""
    from mmengine.optim import build_optim_wrapper
    full = attn_plugins.load_config(glob.glob(os.path.join(ROOT, 'configs', 'seg', '*convnext*.yaml'))[0])
    assert full.optim_wrapper.optimizer == dict(type='AdamW', lr=1e-4, betas=[0.9, 0.999], weight_decay=0.05)
    assert full.optim_wrapper.paramwise_cfg == dict(decay_rate=0.9, decay_type='stage_wise', num_layers=6)
    model = build_segmentor(CONVNEXT)
    optim_cfg = attn_plugins.load_config(CONVNEXT).optim_wrapper
    optimizer = build_optim_wrapper(model, optim_cfg).optimizer
    base = optim_cfg.optimizer.lr
    group_of = {id(p): g for g in optimizer.param_groups for p in g['params']}
    params = dict(model.named_parameters())
    assert len(group_of) == len(params)
    expect = {'backbone.timm_model.stem_0.weight': (7, 0.05), 'backbone.timm_model.stem_1.weight': (7, 0.0),
              'backbone.timm_model.stages_1.downsample.1.weight': (7, 0.05),
              'backbone.timm_model.stages_0.blocks.0.conv_dw.weight': (6, 0.05),
              'backbone.timm_model.stages_2.blocks.1.mlp.fc1.weight': (4, 0.05),
              'backbone.timm_model.stages_3.blocks.1.gamma': (3, 0.0),
              'decode_head.conv_seg.weight': (0, 0.05), 'decode_head.conv_seg.bias': (0, 0.0)}
    cbam = next(n for n in params if n.startswith('backbone.timm_model.stages_1.blocks.0.drop_path.')
                and params[n].ndim > 1)
    expect[cbam] = (5, 0.05)
    for name, (power, decay) in expect.items():
        group = group_of[id(params[name])]
        assert group['lr'] == pytest.approx(base * 0.9 ** power), name
        assert group['weight_decay'] == decay, name


# ---------------------------------------------------------------- the tools, as a user runs them
def one_error_line(capsys, prog):
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith(f'{prog}: error: ') and 'Traceback' not in err, err
    return err


def test_tools_report_user_errors_in_one_line(tmp_path, capsys):
    train, test = tool('train'), tool('test')
    config = os.path.join(ROOT, 'configs', 'seg', 'toy', 'danet_r50-d8_toy.yaml')
    assert train.main([str(tmp_path / 'missing.yaml')]) == 2
    assert 'missing.yaml' in one_error_line(capsys, 'train.py')
    assert test.main([config, str(tmp_path / 'missing.pth'), '--work-dir', str(tmp_path / 'w')]) == 2
    assert "checkpoint" in one_error_line(capsys, 'test.py')
    text = tmp_path / 'notes.pth'
    text.write_text('hello, this is not a checkpoint\n')
    assert test.main([config, str(text), '--work-dir', str(tmp_path / 'w')]) == 2
    err = one_error_line(capsys, 'test.py')
    assert 'not a PyTorch checkpoint' in err and 'weights_only=False' not in err
    a_file = tmp_path / 'a_file'
    a_file.write_text('')
    assert train.main([config, '--work-dir', str(a_file)]) == 2
    assert 'is not a directory' in one_error_line(capsys, 'train.py')
    assert train.main([config, '--work-dir', str(tmp_path / 'empty'), '--resume']) == 2
    assert 'no checkpoint to resume' in one_error_line(capsys, 'train.py')
    assert train.main([config, '--work-dir', str(tmp_path / 'empty'), '--resume', str(text)]) == 2
    assert 'not a PyTorch checkpoint' in one_error_line(capsys, 'train.py')
    assert train.main([config, '--work-dir', str(tmp_path / 'w2'), '--cfg-options', 'model.nonsense=1']) == 2
    err = one_error_line(capsys, 'train.py')
    assert "unexpected keyword argument 'nonsense'" in err and 'EncoderDecoder' in err


def test_test_tool_refuses_a_checkpoint_of_another_model(toy_data, tmp_path, capsys):
    """A DANet checkpoint against the CBAM + DANet config: the CBAM weights are missing."""
    danet = os.path.join(ROOT, 'configs', 'seg', 'toy', 'danet_r50-d8_toy.yaml')
    ckpt = str(tmp_path / 'danet.pth')
    torch.save({'state_dict': build_segmentor(danet).state_dict(), 'meta': {}}, ckpt)
    args = [DEMO, ckpt, '--work-dir', str(tmp_path / 'w'), '--cfg-options', *options(toy_data, 1)]
    assert tool('test').main(args) == 2
    err = one_error_line(capsys, 'test.py')
    assert 'model keys missing' in err and 'cbam' in err and '--allow-partial-checkpoint' in err
    assert tool('test').main(args + ['--allow-partial-checkpoint']) == 0
    assert '"mIoU"' in capsys.readouterr().out


def test_demo_paths_are_relative_to_the_current_directory(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out, data = 'demo_cwd_test_out', 'demo_cwd_test_data'
    assert tool('demo').main(['--parts', 'seg', '--iters', '1', '--work-dir', out, '--data-root', data]) == 0
    assert (tmp_path / data / 'gtFine').is_dir()
    assert (tmp_path / out / 'metrics.json').is_file() and (tmp_path / out / 'attention_0.png').is_file()
    assert not os.path.exists(os.path.join(ROOT, out)) and not os.path.exists(os.path.join(ROOT, data))
