"""Installing into an existing environment, as the README says: `import attn_plugins` is light
(it imports none of timm, mmengine, mmcv, mmseg, mmdet) and registers into each framework when that
is imported; the core install (no OpenMMLab extras) runs the timm and injector features; the
`attn-plugins train` / `test` commands run tools/train.py's and tools/test.py's code."""
import glob
import json
import os
import site
import subprocess
import sys
import textwrap

import numpy as np
import pytest
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FRAMEWORKS = ('timm', 'mmengine', 'mmcv', 'mmseg', 'mmdet')
DANET = 'configs/seg/toy/danet_r50-d8_toy.yaml'



@pytest.fixture(scope='module')
def core_site(tmp_path_factory) -> str:
    """A site-packages of the core install (pip install attn_plugins, no extra): links to every
    entry of this environment's site-packages but mmcv, mmseg, mmdet and their metadata."""
    target = tmp_path_factory.mktemp('core_site')
    for source in site.getsitepackages():
        for entry in os.listdir(source):
            if entry.split('-')[0].split('.')[0].lower() not in ('mmcv', 'mmseg', 'mmsegmentation', 'mmdet'):
                os.symlink(os.path.join(source, entry), target / entry)
    return str(target)


def core_python(site_dir: str) -> list:
    """A python that sees only `site_dir` as its site-packages (-S: no other site directory)."""
    return [sys.executable, '-S', '-c', f'import site, sys; site.addsitedir({site_dir!r}); exec(sys.argv[1])']


def run_python(code: str, python=(sys.executable, '-c')) -> str:
    out = subprocess.run([*python, textwrap.dedent(code)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, 'PYTHONWARNINGS': 'ignore'})
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_import_is_light_and_registers_on_each_frameworks_import():
    out = run_python(f'''
        import sys
        import attn_plugins
        print(sorted(m for m in {FRAMEWORKS!r} if m in sys.modules))
        print(type(attn_plugins.build(dict(type='CBAM', channels=8))).__name__)
        import timm                                   # registers the ap_* entrypoints
        print(len(timm.list_models('ap_*')), type(timm.create_model('ap_seresnet50', reduction=8)).__name__)
        from mmengine.registry import HOOKS, MODEL_WRAPPERS, MODELS
        print(MODELS.get('CBAM').__module__, MODELS.get('attn_plugins.TimmBackbone').__name__,
              HOOKS.get('SafeCheckpointHook').__name__, MODEL_WRAPPERS.get('CPUDistributedDataParallel').__name__)
        print('mmseg' in sys.modules)
    ''')
    assert out.splitlines() == ['[]', 'CBAM', '9 ResNet', 'attn_plugins.integrations.mmengine TimmBackbone '
                                'SafeCheckpointHook CPUDistributedDataParallel', 'False']


def test_openmmlab_config_with_custom_imports_finds_blocks_and_heads(tmp_path):
    """mmseg's tools: the config's custom_imports imports attn_plugins (mmengine is loaded, mmseg's
    models are not yet); mmseg's registry loads its models at the first build, and the heads are there."""
    config = tmp_path / 'cfg.py'
    config.write_text(textwrap.dedent('''
        custom_imports = dict(imports=['attn_plugins'], allow_failed_imports=False)
        head = dict(type='DualAttentionHead', in_channels=16, channels=8, num_classes=3)
        backbone = dict(type='ResNetV1c', depth=50, stem_channels=8, base_channels=8, out_indices=(3,),
                        plugins=[dict(cfg=dict(type='CBAM'), stages=(False, False, False, True),
                                      position='after_conv3')])
    '''))
    out = run_python(f'''
        import sys
        from mmengine.config import Config
        from mmengine.registry import init_default_scope
        cfg = Config.fromfile({str(config)!r})
        print('attn_plugins' in sys.modules, 'mmseg.models' in sys.modules)
        from mmseg.registry import MODELS
        init_default_scope('mmseg')
        head = MODELS.build(cfg.head)
        backbone = MODELS.build(cfg.backbone)
        print(type(head).__module__, type(backbone.layer4[0].cbam).__name__)
    ''')
    assert out.splitlines() == ['True False', 'attn_plugins.integrations.mmseg CBAM']


def test_registration_is_the_same_whichever_module_comes_first():
    """An integration module may itself be what imports its framework first."""
    out = run_python('''
        from attn_plugins.integrations.mmseg import DualAttentionHead      # imports mmseg.models itself
        from mmseg.registry import MODELS
        import timm
        print(MODELS.get('DualAttentionHead') is DualAttentionHead, len(timm.list_models('ap_*')))
    ''')
    assert out.split() == ['True', '9']


def test_core_install_runs_the_timm_and_injector_features(core_site):
    """Without mmcv, mmseg and mmdet (pip install attn_plugins, no extra)."""
    out = run_python('''
        import timm, torch
        import attn_plugins
        x = torch.randn(1, 3, 64, 64)
        model = attn_plugins.create_model('resnet18', num_classes=4,
                                          plugins=[dict(type='CBAM', where='layer*.*', position='after:bn2')])
        print(len(model.attn_plugins_report), tuple(model(x).shape))
        model = timm.create_model('ap_cbam_resnet50', reduction=8, num_classes=4,
                                  plugins=[dict(type='NonLocal', where='layer3.1')])
        print(model.layer1[0].se.channel_gate.fc1.out_channels, model.attn_plugins_report[-1].type, tuple(model(x).shape))
        feats = timm.create_model('ap_vgg16_att3_concat_pc', features_only=True)(torch.randn(1, 3, 32, 32))
        print([f.shape[-1] for f in feats])
        plain = attn_plugins.inject(timm.create_model('resnet18'), [dict(type='SE', where='layer4')])
        print(plain.attn_plugins_report[0].attr, tuple(torch.jit.script(plain.eval())(x).shape))
        from mmengine.registry import MODELS
        print(type(MODELS.build(dict(type='NonLocal', in_channels=8))).__name__)
        for m in ('mmcv', 'mmseg', 'mmdet'):
            try:
                __import__(m)
            except ImportError:
                print('no', m)
    ''', python=core_python(core_site))
    assert out.splitlines() == ['8 (1, 4)', '32 NonLocal (1, 4)', '[32, 16, 8, 2]', 'layer4.attn_se (1, 1000)',
                                'NonLocal', 'no mmcv', 'no mmseg', 'no mmdet']


def test_core_install_train_command_says_which_extra_to_install(core_site, tmp_path):
    code = f"from attn_plugins.cli import main; sys.exit(main(['train', {DANET!r}, '--work-dir', {str(tmp_path)!r}]))"
    out = subprocess.run(core_python(core_site) + [code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2
    assert out.stderr.startswith('attn-plugins train: error: ') and 'pip install attn_plugins[seg]' in out.stderr
    assert len(out.stderr.strip().splitlines()) == 1, out.stderr


# ---------------------------------------------------------------- attn-plugins train / test
@pytest.mark.slow
def test_cli_train_and_test_commands(tmp_path):
    data = str(tmp_path / 'toy')
    subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'make_toy_cityscapes.py'), '--out', data,
                    '--train', '2', '--val', '1', '--size', '64', '128'], check=True)
    config = os.path.join(ROOT, 'configs', 'seg', 'toy', 'se_fcn_r50-d8_toy.yaml')
    options = [f'{split}_dataloader.dataset.data_root={data}' for split in ('train', 'val', 'test')]
    options += ['train_cfg.max_iters=1', 'train_cfg.val_interval=1', 'param_scheduler.0.end=1',
                'default_hooks.checkpoint.interval=1', 'log_level=WARNING']
    work = str(tmp_path / 'work')
    command = [sys.executable, '-m', 'attn_plugins.cli']
    train = subprocess.run(command + ['train', config, '--work-dir', work, '--cfg-options', *options],
                           capture_output=True, text=True, cwd=str(tmp_path))
    assert train.returncode == 0, train.stderr[-3000:]
    metrics, predictions = str(tmp_path / 'metrics.json'), str(tmp_path / 'predictions')
    test = subprocess.run(command + ['test', config, os.path.join(work, 'iter_1.pth'), '--work-dir', work,
                                     '--metrics-json', metrics, '--out', predictions, '--cfg-options', *options],
                          capture_output=True, text=True, cwd=str(tmp_path))
    assert test.returncode == 0, test.stderr[-3000:]
    with open(metrics) as f:                                   # --metrics-json holds the metrics printed
        written = json.load(f)
    assert {'aAcc', 'mIoU', 'mAcc'} <= set(written) and written == json.loads(test.stdout[test.stdout.index('{'):])
    # --out: one predicted label PNG per val image, as mmseg's tools/test.py --out writes them
    images = sorted(glob.glob(os.path.join(data, 'leftImg8bit', 'val', '*', '*_leftImg8bit.png')))
    assert images and sorted(os.listdir(predictions)) == sorted(os.path.basename(p) for p in images)
    for image in images:
        label = np.array(Image.open(os.path.join(predictions, os.path.basename(image))))
        assert label.shape == Image.open(image).size[::-1] and label.dtype == np.uint8 and label.max() < 19
    missing = subprocess.run(command + ['test', config, os.path.join(work, 'iter_9.pth'), '--work-dir', work],
                             capture_output=True, text=True, cwd=str(tmp_path))
    assert missing.returncode == 2 and missing.stderr.startswith('attn-plugins test: error: ')


@pytest.mark.parametrize('command', ['train', 'test'])
def test_tools_scripts_are_the_cli_commands(command):
    tool = os.path.join(ROOT, 'tools', f'{command}.py')
    via_tool = subprocess.run([sys.executable, tool, '-h'], capture_output=True, text=True).stdout
    via_cli = subprocess.run([sys.executable, '-m', 'attn_plugins.cli', command, '-h'], capture_output=True,
                             text=True).stdout
    assert via_tool.split('options:')[1] == via_cli.split('options:')[1] and '--cfg-options' in via_cli
