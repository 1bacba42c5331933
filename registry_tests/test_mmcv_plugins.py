"""OpenMMLab ResNet `plugins` (mmcv plugin specs) are checked before the model is built, by
`attn-plugins plan`, train and test: one line naming the config key, with a did-you-mean, where
mmdet/mmseg assert without a message, ignore a key silently or raise a TypeError naming no key."""
import os

import pytest

from attn_plugins import ConfigError
from attn_plugins.cli import main, train_main
from attn_plugins.plan import check_mmcv_plugins

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SE_FCN = os.path.join(ROOT, 'configs', 'seg', 'toy', 'se_fcn_r50-d8_toy.yaml')
KEY = 'model.backbone.plugins.0'


@pytest.mark.parametrize('option, message', [
    (f'{KEY}.position=after_conv33', f"{KEY}.position: 'after_conv33' is not a plugin position; did you mean "
                                     "'after_conv3'"),
    (f'{KEY}.stage=[False,True,True,True]', f"{KEY}.stage: unknown key of an mmcv plugin spec (the backbone would "
                                            "ignore it); did you mean 'stages'?"),
    (f'{KEY}.cfg.reductoin=8', f"{KEY}.cfg.reductoin: unknown option for SE; did you mean 'reduction'?"),
    (f'{KEY}.stages=[True,True]', f"{KEY}.stages: expected 4 booleans, one per stage (num_stages=4), got [True, True]"),
    ('model.backbone.depth=18', "model.backbone.plugins: a depth-18 ResNetV1c is built of BasicBlocks, which take "
                                "no mmcv plugins"),
])
def test_plan_names_the_plugin_key(capsys, option, message):
    assert main(['plan', SE_FCN, '--cfg-options', option]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith('attn-plugins plan: error: ') and message in err, err


def test_train_names_the_plugin_key(tmp_path, capsys):
    assert train_main([SE_FCN, '--work-dir', str(tmp_path / 'w'), '--cfg-options',
                       f'{KEY}.stage=[False,True,True,True]'], prog='train.py') == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"train.py: error: {SE_FCN}: {KEY}.stage: unknown key of an mmcv plugin spec") and \
        "did you mean 'stages'?" in err


def test_check_mmcv_plugins_specs():
    ok = dict(cfg=dict(type='ContextBlock', ratio=1 / 16), stages=(False, True, True, True), position='after_conv3')
    ours = dict(cfg=dict(type='attn_plugins.CBAM', reduction=8, postfix='_1'), position='after_conv2')
    check_mmcv_plugins(dict(backbone=dict(type='ResNet', depth=50, plugins=[ok, ours])))
    injector = dict(type='InjectAttention', module=dict(type='ResNet', depth=18), plugins=[
        dict(type='SE', where='layer1.*', position='after:bn2')])
    check_mmcv_plugins(dict(backbone=injector))                   # injector specs are not mmcv plugin specs
    with pytest.raises(ConfigError, match=r"^model\.backbone\.plugins\.1\.cfg: missing \(the block goes in 'cfg': "
                                          r"\{cfg: \{type: CBAM, \.\.\.\}, position: \.\.\.\}\)"):
        check_mmcv_plugins(dict(backbone=dict(type='ResNet', plugins=[ok, dict(type='CBAM', position='after_conv3')])))
    with pytest.raises(ConfigError, match=r"^model\.backbones\.1\.plugins\.0\.cfg\.reductoin: unknown option for CBAM"):
        check_mmcv_plugins(dict(backbones=[{}, dict(plugins=[dict(cfg=dict(type='attn_plugins.CBAM', reductoin=8),
                                                                   position='after_conv3')])]))
    with pytest.raises(ConfigError, match=r"^model\.backbone\.plugins\.0\.position: missing; Positions: after_conv1"):
        check_mmcv_plugins(dict(backbone=dict(plugins=[dict(cfg=dict(type='SE'))])))
