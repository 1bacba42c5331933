"""`attn-plugins plan`: unknown task-util types named by their config key with a did-you-mean,
--input-shape errors quoting the value as given, timm's EfficientNet / MobileNetV3 SE layers found
as attention blocks, and each block's channels taken from the map it is given."""
import json
import os

import pytest

from attn_plugins.cli import main
from attn_plugins.plan import parse_shape
from attn_plugins.registry import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DET_TOY = os.path.join(ROOT, 'configs', 'det', 'toy')
SEG_TOY = os.path.join(ROOT, 'configs', 'seg', 'toy')


def plan_error(capsys, args) -> str:
    assert main(['plan', *args]) == 2
    # (only the error line: an mmengine logger of an earlier test may still write to its closed capsys stream)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith('attn-plugins plan: ')]
    assert len(errors) == 1 and errors[0].startswith('attn-plugins plan: error: '), errors
    return errors[0]


def plan_json(tmp_path, args) -> dict:
    out = tmp_path / 'p.json'
    assert main(['plan', *args, '--json', str(out)]) == 0
    return json.loads(out.read_text())


def write(tmp_path, name, text) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# ---------------------------------------------------------------- A: task-util types
@pytest.mark.parametrize('config, option, message', [
    ('faster-rcnn_r50-se_fpn_toy-coco.yaml', 'model.rpn_head.anchor_generator.type=AnchorGenerater',
     "model.rpn_head.anchor_generator.type: unknown task util type 'AnchorGenerater' (not registered in scope "
     "'mmdet'); did you mean 'AnchorGenerator'"),
    # the key as written, not the copy mmdet's detector puts into bbox_head before it fails
    ('retinanet_r50-se_fpn_toy-coco.yaml', 'model.train_cfg.assigner.type=MaxIoUAssignr',
     "model.train_cfg.assigner.type: unknown task util type 'MaxIoUAssignr' (not registered in scope 'mmdet'); "
     "did you mean 'MaxIoUAssigner'"),
    ('retinanet_r50-se_fpn_toy-coco.yaml', 'model.bbox_head.bbox_coder.type=DeltaXYWHBBoxCodr',
     "model.bbox_head.bbox_coder.type: unknown task util type 'DeltaXYWHBBoxCodr' (not registered in scope "
     "'mmdet'); did you mean 'DeltaXYWHBBoxCoder'"),
    # a MODELS type keeps its message
    ('retinanet_r50-se_fpn_toy-coco.yaml', 'model.bbox_head.loss_cls.type=FocalLos',
     "model.bbox_head.loss_cls.type: unknown type 'FocalLos' (not registered in scope 'mmdet'); "
     "did you mean 'FocalLoss'"),
])
def test_plan_unknown_task_util_type_names_the_key(capsys, config, option, message):
    err = plan_error(capsys, [os.path.join(DET_TOY, config), '--cfg-options', option])
    assert message in err and 'registry. Please check' not in err


# ---------------------------------------------------------------- B: --input-shape
@pytest.mark.parametrize('given, shown', [(['0,64'], "'0,64'"), (['3', 'a'], "'3 a'"), ('1', "'1'")])
def test_input_shape_error_quotes_the_value_as_given(given, shown):
    with pytest.raises(ConfigError) as info:
        parse_shape(given)
    assert str(info.value).endswith(f"got {shown}") and '[' not in str(info.value)


def test_plan_input_shape_error_on_the_command_line(tmp_path, capsys):
    config = write(tmp_path, 'r18.yaml', "model:\n  type: timm/resnet18\n")
    err = plan_error(capsys, [config, '--input-shape', '0,64'])
    assert err.endswith("--input-shape: expected H,W or C,H,W (positive), got '0,64'")


# ---------------------------------------------------------------- C: timm EfficientNet / MobileNetV3 SE
@pytest.mark.parametrize('name, blocks, first', [
    ('efficientnet_b0', 16, ('blocks.0.0.se', 32, 2 * 32 * 8 + 8 + 32)),      # SE 32 -> 8 -> 32, biases
    ('mobilenetv3_small_100', 9, ('blocks.0.0.se', 16, 2 * 16 * 8 + 8 + 16)),  # 16 -> 8 (rounded to 8) -> 16
])
def test_plan_finds_timm_efficientnet_squeeze_excite(tmp_path, name, blocks, first):
    config = write(tmp_path, 'm.yaml', f"model:\n  type: timm/{name}\n")
    plan = plan_json(tmp_path, [config, '--input-shape', '64,64'])
    rows = plan['insertions']
    assert len(rows) == blocks and {r['type'] for r in rows} == {'SqueezeExcite'}
    assert (rows[0]['path'], rows[0]['channels'], rows[0]['params']) == first
    assert all(r['calls'] == 1 and r['flops'] > 0 for r in rows)


# ---------------------------------------------------------------- D: channels of the map a block takes
def test_plan_channels_of_timm_eca_are_its_input_channels(tmp_path):
    """ecaresnet26t's EcaModule declares no channels and its first layer is a 1-channel Conv1d;
    it gates each Bottleneck's output (256..2048 channels)."""
    config = write(tmp_path, 'eca.yaml', "model:\n  type: timm/ecaresnet26t\n")
    plan = plan_json(tmp_path, [config, '--input-shape', '64,64'])
    assert [(r['path'], r['type'], r['channels']) for r in plan['insertions']] == [
        (f'layer{i + 1}.{j}.se', 'EcaModule', 256 << i) for i in range(4) for j in range(2)]


def test_plan_channels_of_mmseg_pam_and_cam_are_their_input_channels(tmp_path):
    """DAHead(channels=32, pam_channels=8): PAM's `channels` is its query/key width (8), CAM declares none."""
    config = write(tmp_path, 'dahead.yaml', f"_base_: {os.path.join(SEG_TOY, 'danet_r50-d8_toy.yaml')}\n"
                   "model:\n  decode_head:\n    _delete_: true\n    type: DAHead\n    in_channels: 512\n"
                   "    in_index: 3\n    channels: 32\n    pam_channels: 8\n    num_classes: 19\n"
                   "    norm_cfg: {type: BN, requires_grad: true}\n"
                   "    loss_decode: {type: CrossEntropyLoss, use_sigmoid: false, loss_weight: 1.0}\n")
    plan = plan_json(tmp_path, [config, '--trust-config'])
    rows = {r['path']: (r['type'], r['channels']) for r in plan['insertions']}
    assert rows == {'decode_head.pam': ('PAM', 32), 'decode_head.cam': ('CAM', 32)}


def test_plan_of_the_toy_video_configs_uses_their_32x32_frames(tmp_path):
    """Every toy video config is planned at its clips' size (8 frames of 32x32); the pyramid toy was
    planned at 224x224 by default, overstating its FLOPs about 49x."""
    for name in ('nonlocal_c2d_r50_toy.yaml', 'nonlocal_i3d_r50_toy.yaml', 'pyramid_attention_i3d_r50_toy.yaml'):
        plan = plan_json(tmp_path, [os.path.join(ROOT, 'configs', 'video', 'toy', name)])
        assert plan['input_shape'][-3:] == [8, 32, 32], (name, plan['input_shape'], plan['input_shape_from'])


@pytest.mark.parametrize('config, option, message', [
    ('faster-rcnn_r50-se_fpn_toy-coco.yaml', 'model.backbone.plugins.0.cfg.reduction=-3',
     'model.backbone.plugins.0.cfg.reduction: reduction: expected > 0, got -3'),
    ('faster-rcnn_r50-cbam_fpn_toy-coco.yaml', 'model.backbone.plugins.0.cfg.spatial_kernel=4',
     'model.backbone.plugins.0.cfg.spatial_kernel: spatial_kernel: expected an odd positive int (paper: 7), got 4'),
])
def test_plan_names_the_key_of_a_bad_option_in_an_openmmlab_plugin(capsys, config, option, message):
    """A block of ours built by mmdet's ResNet `plugins` refusing an option: one line naming the config
    key (it was a ValueError traceback; the same option in an injector spec already gave one line)."""
    err = plan_error(capsys, [os.path.join(DET_TOY, config), '--cfg-options', option])
    assert err == f'attn-plugins plan: error: {message}'


def test_a_container_with_its_own_forward_is_refused_for_the_right_reason(tmp_path, capsys):
    """timm's features_only model (FeatureListNet, an nn.ModuleDict whose forward runs every child)
    as `where: '.'`: refused because a block added to it would run as one of its layers (the message
    said it had no forward); its stages take blocks."""
    config = write(tmp_path, 'f.yaml', "model:\n  type: timm/resnet18\n  features_only: true\n  plugins:\n"
                   "    - {type: SE, where: '.', position: after, output_index: [0, 1, 2, 3]}\n")
    err = plan_error(capsys, [config, '--input-shape', '64,64'])
    assert "'.' is a FeatureListNet, an nn.ModuleDict with a forward of its own" in err
    assert 'no forward' not in err
    stages = write(tmp_path, 's.yaml', "model:\n  type: timm/resnet18\n  features_only: true\n  plugins:\n"
                   "    - {type: SE, where: 'layer*', position: after}\n")
    plan = plan_json(tmp_path, [stages, '--input-shape', '64,64'])
    assert [row['channels'] for row in plan['insertions']] == [64, 128, 256, 512], plan['insertions']


def test_plan_names_the_heads_key_of_a_bad_pam_width(capsys):
    """DualAttentionHead's `pam_channels` is PAM's qk_channels: the error names the head's key (it named
    'model' and an argument the config does not have)."""
    err = plan_error(capsys, [os.path.join(SEG_TOY, 'danet_r50-d8_toy.yaml'), '--cfg-options',
                              'model.decode_head.pam_channels=0'])
    assert err == 'attn-plugins plan: error: model.decode_head.pam_channels: pam_channels: expected a positive int, got 0'
