"""Detection (mmdet): every config under configs/det builds with its blocks where its header says;
a checkpoint of the detector without attention loads into each variant with only the block keys
missing; every toy config trains and evaluates on generated COCO / VOC data; a toy Faster R-CNN +
CBAM learns; resolved configs round-trip through YAML; the AttentionNeck wrapper (errors, numerics,
init); SE / CBAM as mmdet ResNet plugins compute the block on the conv3 output."""
import copy
import glob
import os
import re

import pytest
import torch
from mmengine.registry import init_default_scope

import attn_plugins
from attn_plugins import BLOCKS, ConfigError
from attn_plugins.config import load_config
from attn_plugins.runner import build_runner
from conftest import randomize
from test_init import assert_like_new, new_like

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FULL = sorted(glob.glob(os.path.join(ROOT, 'configs', 'det', '*.yaml')))
TOY = sorted(glob.glob(os.path.join(ROOT, 'configs', 'det', 'toy', '*.yaml')))
CBAM_TOY = os.path.join(ROOT, 'configs', 'det', 'toy', 'faster-rcnn_r50-cbam_fpn_toy-coco.yaml')
ATTENTION_TYPES = (*BLOCKS, 'ContextBlock', 'NonLocal2d', 'GeneralizedAttention')

R50_BLOCKS = [f'layer{stage}.{block}' for stage, count in enumerate((3, 4, 6, 3), 1) for block in range(count)]
RES4_BLOCKS = [f'layer3.{block}' for block in range(6)]
# variant (from the file name) -> (block type, module paths of the blocks, channels of each)
EXPECTED = {
    'se': ('SE', [f'backbone.{b}.se' for b in R50_BLOCKS], None),
    'cbam': ('CBAM', [f'backbone.{b}.cbam' for b in R50_BLOCKS], None),
    'nonlocal': ('NonLocal', ['backbone.layer3.4.attn_non_local'], [1024]),
    'danet-c5': ('DualAttention', ['neck.attn_blocks.0'], [2048]),
    'gcb-r16': ('ContextBlock', [f'backbone.{b}.context_block' for b in R50_BLOCKS], None),
    'nonlocal-res4': ('NonLocal', [f'backbone.{b}.non_local' for b in RES4_BLOCKS], [1024] * 6),
    # the non-local paper's 5-block layout: res3 blocks 1, 3 and res4 blocks 1, 3, 5
    'nonlocal-res34': ('NonLocal', ['backbone.layer2.1.attn_non_local', 'backbone.layer2.3.attn_non_local',
                                    'backbone.layer3.1.attn_non_local', 'backbone.layer3.3.attn_non_local',
                                    'backbone.layer3.5.attn_non_local'], [512, 512, 1024, 1024, 1024]),
    'nl2d-res4': ('NonLocal2d', [f'backbone.{b}.nonlocal_block' for b in RES4_BLOCKS], [1024] * 6),
    'gen-attn-0010-res4': ('GeneralizedAttention', [f'backbone.{b}.gen_attention_block' for b in RES4_BLOCKS],
                           [1024] * 6),
}
# timm ConvNeXt-T (depths 3-3-9-3) through TimmBackbone: CBAM before the drop_path of every block
CONVNEXT_T_BLOCKS = [(stage, block, width) for stage, (depth, width) in enumerate(zip((3, 3, 9, 3), (96, 192, 384, 768)))
                     for block in range(depth)]
EXPECTED['convnext-tiny-cbam'] = ('CBAM', [f'backbone.timm_model.stages_{s}.blocks.{b}.drop_path.attn_cbam'
                                           for s, b, _ in CONVNEXT_T_BLOCKS], [w for _, _, w in CONVNEXT_T_BLOCKS])
R50_WIDTHS = {'layer1': 256, 'layer2': 512, 'layer3': 1024, 'layer4': 2048}


def variant_of(path: str) -> str:
    name = os.path.basename(path)
    return re.match(r'[a-z-]+_(?:r50[-_]|timm-)(.+?)(?:_fpn|-fpn)_', name).group(1)


from conftest import load_tool as tool  # noqa: E402


def build_detector(model_cfg):
    init_default_scope('mmdet')
    from mmdet.registry import MODELS
    return MODELS.build(copy.deepcopy(model_cfg))


def attention_modules(model) -> dict:
    """Qualified name -> module of every outermost attention block (ours or mmcv's) in `model`."""
    found = {}

    def visit(module, prefix):
        for name, child in module.named_children():
            path = f'{prefix}.{name}' if prefix else name
            if any(type(child).__name__ == t or t in [c.__name__ for c in type(child).__mro__]
                   for t in ATTENTION_TYPES):
                found[path] = child
            else:
                visit(child, path)
    visit(model, '')
    return found


def base_config_of(path: str) -> str:
    """The mmdet:: base the config inherits (directly or through its parent YAML)."""
    with open(path) as f:
        text = f.read()
    return re.search(r'^_base_: (mmdet::\S+)', text, re.M).group(1)


_BASE_STATES = {}


def plain_state(base: str) -> dict:
    """State dict of the detector of mmdet's own config `base` (no attention), built once."""
    if base not in _BASE_STATES:
        from mmengine.config import Config
        from mmdet.utils import register_all_modules
        register_all_modules()
        cfg = Config.fromfile(Config._get_cfg_path(base, '')[0])
        _BASE_STATES[base] = randomize(build_detector(cfg.model)).state_dict()
    return _BASE_STATES[base]


def plain_timm_state(cfg) -> dict:
    """State dict of `cfg`'s detector on the same timm backbone without its plugins."""
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.backbone.plugins = None
    model = build_detector(model_cfg)
    assert not attention_modules(model)
    return randomize(model).state_dict()


@pytest.mark.parametrize('config', FULL, ids=os.path.basename)
def test_full_config_builds_with_its_blocks_and_loads_the_plain_checkpoint(config):
    cfg = load_config(config)
    assert cfg.default_scope == 'mmdet' and cfg.model.type in ('FasterRCNN', 'RetinaNet', 'MaskRCNN')
    model = build_detector(cfg.model)
    block_type, paths, channels = EXPECTED[variant_of(config)]
    blocks = attention_modules(model)
    assert sorted(blocks) == sorted(paths)
    assert {type(b).__name__ for b in blocks.values()} == {block_type}
    widths = [getattr(b, 'channels', getattr(b, 'in_channels', None)) for b in blocks.values()]
    if channels is None:        # every bottleneck: the conv3 width of its stage
        channels = [R50_WIDTHS[p.split('.')[1]] for p in blocks]
    assert widths == channels
    if config.endswith('voc0712.yaml'):
        assert cfg.val_evaluator.type == 'VOCMetric' and cfg.model.roi_head.bbox_head.num_classes == 20
        assert cfg.train_cfg.max_epochs == 4 and cfg.train_dataloader.dataset.type == 'RepeatDataset'
    else:
        assert cfg.val_evaluator.type == 'CocoMetric' and cfg.train_cfg.max_epochs == 12
    # the plain detector's checkpoint: every key fits, only the blocks' own keys are missing
    plain = plain_state(base_config_of(config)) if cfg.model.backbone.type != 'TimmBackbone' else plain_timm_state(cfg)
    result = model.load_state_dict(plain, strict=False)
    # (BN's num_batches_tracked is filled in by torch when absent, never reported missing)
    block_keys = {k for k in model.state_dict() if any(k.startswith(p + '.') for p in paths)
                  and not k.endswith('num_batches_tracked')}
    assert block_keys and not result.unexpected_keys
    assert set(result.missing_keys) == block_keys
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in plain.items())


def test_every_full_config_has_a_toy_variant_with_the_same_blocks():
    toys = {os.path.basename(p) for p in TOY}
    for config in FULL:
        name = os.path.basename(config)
        toy = re.sub(r'_1x_(coco|voc0712)\.yaml$', lambda m: '_toy-' + ('coco' if m.group(1) == 'coco' else 'voc') + '.yaml', name)
        assert toy in toys, name
    assert len(TOY) == len(FULL)


# ---------------------------------------------------------------- toy runs on generated data
@pytest.fixture(scope='session')
def det_data(tmp_path_factory):
    """Small toy COCO and VOC0712 datasets (real formats), shared by the runs."""
    root = tmp_path_factory.mktemp('det_data')
    tool('make_toy_coco').make_toy_coco(str(root / 'toy_coco'), num_train=4, num_val=2, seed=0)
    tool('make_toy_voc').make_toy_voc(str(root / 'toy_voc'), voc2007_trainval=2, voc2007_test=2, voc2012_trainval=2)
    return root


def data_overrides(config: str, root, epochs: int = 1) -> dict:
    """--cfg-options (as a dict) moving every `data/toy_*` path of the config under `root`, and an
    `epochs`-epoch schedule without validation during training (the tests evaluate afterwards)."""
    cfg = load_config(config)
    out = {}

    def walk(value, path):
        if isinstance(value, dict):
            for key, item in value.items():
                walk(item, f'{path}.{key}' if path else key)
        elif isinstance(value, (list, tuple)):
            for index, item in enumerate(value):
                walk(item, f'{path}.{index}')
        elif isinstance(value, str) and value.startswith('data/toy_'):
            out[path] = os.path.join(str(root), value[len('data/'):])
    walk(cfg.to_dict(), '')
    assert out, f'{config}: no data/toy_* path to redirect'
    out.update({'train_cfg.max_epochs': epochs, 'train_cfg.val_interval': epochs + 1, 'param_scheduler.1.end': epochs,
                'param_scheduler.1.milestones': [max(epochs - 1, 1)], 'default_hooks.checkpoint.interval': epochs,
                'log_level': 'WARNING'})
    return out


@pytest.mark.slow
@pytest.mark.parametrize('config', TOY, ids=os.path.basename)
def test_every_toy_config_trains_and_evaluates(config, det_data, tmp_path):
    runner = build_runner(config, work_dir=str(tmp_path), cfg_options=data_overrides(config, det_data))
    runner.train()
    assert runner.iter >= 2
    metrics = runner.test()
    if config.endswith('toy-voc.yaml'):
        assert set(metrics) == {'pascal_voc/mAP', 'pascal_voc/AP50'}
    else:
        expected = {'coco/bbox_mAP', 'coco/bbox_mAP_50'} | ({'coco/segm_mAP'} if 'mask-rcnn' in config else set())
        assert set(metrics) >= expected, metrics
    assert all(0 <= v <= 1 or v == -1 for v in metrics.values()), metrics
    block_type, paths, _ = EXPECTED[variant_of(config)]
    blocks = attention_modules(runner.model)
    assert sorted(blocks) == sorted(paths) and {type(b).__name__ for b in blocks.values()} == {block_type}


@pytest.fixture(scope='session')
def det_data_large(tmp_path_factory):
    root = tmp_path_factory.mktemp('det_data_large')
    tool('make_toy_coco').make_toy_coco(str(root / 'toy_coco'), num_train=64, num_val=16, seed=0)
    return root


EPOCHS = 4   # 2 epochs ended at mAP 0.074 alone but 0.02 once inside the full suite: too close to chance


@pytest.mark.slow
def test_toy_faster_rcnn_cbam_learns_far_above_an_untrained_model(det_data_large, tmp_path):
    # every epoch at the config's full lr (no step). The toy config's schedule (lr 0.01, clipped):
    # bbox mAP 0.193 / mAP_50 0.657 after 4 epochs (1 and 2 threads alike); mmdet's lr 0.02
    # unclipped: NaN losses from the second epoch on in a 10-epoch run
    options = {**data_overrides(CBAM_TOY, det_data_large, epochs=EPOCHS), 'param_scheduler.1.milestones': [EPOCHS]}
    untrained = build_runner(CBAM_TOY, work_dir=str(tmp_path / 'untrained'), cfg_options=options).test()
    runner = build_runner(CBAM_TOY, work_dir=str(tmp_path / 'trained'), cfg_options=options)
    runner.train()
    trained = runner.test()
    assert untrained['coco/bbox_mAP'] < 0.01, untrained
    assert trained['coco/bbox_mAP'] > 0.1 and trained['coco/bbox_mAP_50'] > 0.4, (trained, untrained)
    assert trained['coco/bbox_mAP'] > 10 * untrained['coco/bbox_mAP'], (trained, untrained)


def test_resolved_det_config_round_trips_through_mmengine_yaml(tmp_path):
    """mmengine's YAML dump writes `!!python/tuple`; our safe loader reads it back equal."""
    from attn_plugins.config import load_config as safe_load
    for config in (CBAM_TOY, os.path.join(ROOT, 'configs', 'det', 'toy', 'mask-rcnn_r50_danet-c5-fpn_toy-coco.yaml'),
                   os.path.join(ROOT, 'configs', 'det', 'faster-rcnn_r50-se_fpn_1x_voc0712.yaml')):
        runner = build_runner(config, work_dir=str(tmp_path / os.path.basename(config)),
                              cfg_options={'log_level': 'WARNING'}, check_data=())     # config only: no data here
        resolved = runner.cfg.to_dict()
        dumped = tmp_path / (os.path.basename(config) + '.dump.yaml')
        runner.cfg.dump(str(dumped))
        assert '!!python/tuple' in dumped.read_text()
        again = safe_load(str(dumped)).to_dict()
        assert again == resolved
        scale = [t for t in again['train_dataloader']['dataset'].get('pipeline', [])
                 if t.get('type') == 'Resize'] if 'pipeline' in again['train_dataloader']['dataset'] else []
        assert all(isinstance(t['scale'], tuple) for t in scale)


from conftest import without_scope as _without_scope  # noqa: E402


def test_mmengine_reads_every_det_config_as_our_loader_does():
    """mmdet's own tools read YAML with mmengine's Config.fromfile (yaml.Loader): it knows
    `!!python/tuple` but not our short `!tuple`. Every det YAML parses there; resolved with their
    bases, mmengine's and our loader's configs are equal, tuples included (one config per kind)."""
    from mmengine.config import Config
    from mmengine.fileio import load
    for config in FULL + TOY:
        load(config, file_format='yaml')            # mmengine's YAML reading, as in Config.fromfile
    for name in ('toy/faster-rcnn_r50-cbam_fpn_toy-coco.yaml', 'toy/faster-rcnn_r50-se_fpn_toy-voc.yaml',
                 'toy/mask-rcnn_r50_danet-c5-fpn_toy-coco.yaml', 'faster-rcnn_r50-nonlocal_fpn_1x_coco.yaml',
                 'toy/faster-rcnn_timm-convnext-tiny-cbam_fpn_toy-coco.yaml'):
        config = os.path.join(ROOT, 'configs', 'det', name)
        theirs = _without_scope(Config.fromfile(config).to_dict())
        assert theirs == _without_scope(load_config(config).to_dict()), name

# ---------------------------------------------------------------- AttentionNeck
WIDTHS = [16, 32, 64, 128]
FPN = dict(type='FPN', in_channels=WIDTHS, out_channels=16, num_outs=5)


def neck(blocks, fpn=None, **extra):
    return build_detector(dict(type='AttentionNeck', blocks=blocks, neck=dict(fpn or FPN), **extra))


def feats(batch=2, size=32):
    gen = torch.Generator().manual_seed(3)
    return tuple(torch.randn(batch, c, size // 2 ** i, size // 2 ** i, generator=gen) for i, c in enumerate(WIDTHS))


def test_attention_neck_applies_blocks_then_the_neck_with_its_parameter_names():
    wrapped = neck([dict(type='DualAttention', in_indices=[3]), dict(type='CBAM', in_indices=[1, 2]),
                    dict(type='PyramidAttention', in_indices=[1, 2, 3], target_index=-1),
                    dict(type='ContextBlock', in_indices=0, ratio=0.25)])
    plain = build_detector(dict(FPN))
    assert type(wrapped) is type(plain)
    assert [k for k in wrapped.state_dict() if not k.startswith('attn_blocks.')] == list(plain.state_dict())
    blocks = wrapped.attn_blocks
    assert [type(b).__name__ for b in blocks] == ['DualAttention', 'CBAM', 'CBAM', 'PyramidAttention', 'ContextBlock']
    assert blocks.levels == [[3], [1], [2], [1, 2, 3], [0]] and blocks.targets == [-1, -1, -1, 3, -1]
    assert [blocks[0].channels, blocks[1].channels, blocks[2].channels, blocks[4].in_channels] == [128, 32, 64, 16]
    assert blocks[3].in_channels == [32, 64, 128]
    randomize(wrapped)
    plain.load_state_dict({k: v for k, v in wrapped.state_dict().items() if not k.startswith('attn_blocks.')})
    wrapped.eval()
    plain.eval()
    x = feats()
    with torch.no_grad():
        c2, c3, c4, c5 = x
        c5 = blocks[0](c5)
        c3, c4 = blocks[1](c3), blocks[2](c4)
        c5 = blocks[3]([c3, c4, c5])
        c2 = blocks[4](c2)
        expected = plain((c2, c3, c4, c5))
        out = wrapped(x)
    assert len(out) == 5
    for got, ref in zip(out, expected, strict=True):
        torch.testing.assert_close(got, ref)
    with torch.no_grad():
        assert not torch.allclose(plain(x)[0], out[0])      # the blocks did change the maps


def test_attention_neck_blocks_keep_their_init_through_the_necks_init_weights():
    wrapped = neck([dict(type='DualAttention', in_indices=[3]), dict(type='NonLocal', in_indices=[2]),
                    dict(type='CBAM', in_indices=[1]),
                    dict(type='PyramidAttention', in_indices=[2, 3], target_index=1, fuse_channels=64, num_components=64),
                    dict(type='ContextBlock', in_indices=[0], ratio=0.25)])
    randomize(wrapped)
    wrapped.init_weights()          # FPN's init_cfg: Xavier on every Conv2d under it, the blocks' included
    ours = [b for b in wrapped.attn_blocks if type(b).__name__ in BLOCKS]
    assert len(ours) == 4
    for block in ours:
        assert_like_new(block, new_like(block))
    context = wrapped.attn_blocks[4]       # mmcv's own init: last conv of the transform zero
    assert context.channel_add_conv[-1].weight.abs().max() == 0
    # identity at init (DANet, NonLocal): the same output as the plain FPN with the same weights
    identity = neck([dict(type='DualAttention', in_indices=[3]), dict(type='NonLocal', in_indices=[1, 2])])
    identity.init_weights()
    plain = build_detector(dict(FPN))
    plain.load_state_dict({k: v for k, v in identity.state_dict().items() if not k.startswith('attn_blocks.')})
    identity.eval()
    plain.eval()
    with torch.no_grad():
        for got, ref in zip(identity(feats()), plain(feats()), strict=True):
            torch.testing.assert_close(got, ref)


def test_attention_neck_in_a_detector_init_weights_and_pickle(tmp_path):
    import pickle
    cfg = load_config(os.path.join(ROOT, 'configs', 'det', 'toy', 'faster-rcnn_r50_danet-c5-fpn_toy-coco.yaml'))
    model = randomize(build_detector(cfg.model))
    model.init_weights()
    block = model.neck.attn_blocks[0]
    assert_like_new(block, new_like(block))
    clone = pickle.loads(pickle.dumps(model))
    randomize(clone.neck.attn_blocks)
    clone.eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model.neck(model.backbone(x))
        assert not torch.allclose(clone.neck(clone.backbone(x))[0], before[0])    # its own blocks ran


@pytest.mark.parametrize('blocks, extra, match', [
    ([dict(type='DualAtention', in_indices=[3])], {}, r"blocks\[0\]\.type: 'DualAtention' is not registered.*did you mean 'DualAttention'"),
    ([dict(type='CBAM', in_indices=[4])], {}, r"blocks\[0\]\.in_indices: 4 is out of range.*4 backbone outputs.*0\.\.3"),
    ([dict(type='CBAM', in_indices=[])], {}, r"blocks\[0\]\.in_indices: expected a non-empty list"),
    ([dict(type='CBAM', in_indices=[1, 1])], {}, r"lists an output twice"),
    ([dict(type='CBAM', in_indices=['c5'])], {}, r"in_indices: expected a non-empty list of backbone output indices"),
    ([dict(type='CBAM', in_indices=[1], reductoin=4)], {}, r"blocks\[0\]\.reductoin: unknown option.*did you mean 'reduction'"),
    ([dict(type='CBAM', in_indices=[1], channels=32)], {}, r"drop 'channels'"),
    ([dict(type='CBAM')], {}, r"blocks\[0\]: missing 'in_indices' \(the backbone outputs the block reads\)$"),
    ([dict(in_indices=[1])], {}, r"blocks\[0\]: expected a dict with 'type' and 'in_indices'"),
    ([dict(type='CBAM', in_indice=[1])], {}, r"blocks\[0\]: missing 'in_indices'.*'in_indice': did you mean 'in_indices'"),
    ([dict(type='CBAM', in_indices=[1])], dict(block=[]), r"AttentionNeck\.block: unknown option; did you mean 'blocks'"),
    (dict(type='CBAM', in_indices=[1]), {}, r"AttentionNeck\.blocks: expected a non-empty list"),
    ([dict(type='PyramidAttention', in_indices=[1, 2], target_index=2)], {}, r"target_index: expected an index into in_indices"),
    ([dict(type='CBAM', in_indices=[1])], dict(in_channels=[16, 32, 64, 256]), r"in_channels \[16, 32, 64, 256\] disagrees with neck\.in_channels"),
    ([dict(type='CBAM', in_indices=[1])], dict(fpn=dict(FPN, type='FNP')), r"neck\.type: 'FNP' is not registered.*did you mean 'FPN'"),
    ([dict(type='FPN', in_indices=[1])], {}, r"blocks\[0\]: cannot build FPN: .*'out_channels'"),
])
def test_attention_neck_errors_name_the_key(blocks, extra, match):
    extra = dict(extra)
    fpn = extra.pop('fpn', None)
    with pytest.raises(ConfigError, match=match):
        neck(blocks, fpn, **extra)


def test_attention_neck_checks_the_backbone_outputs_it_gets():
    wrapped = neck([dict(type='CBAM', in_indices=[1])]).eval()
    x = list(feats())
    with pytest.raises(ValueError, match=r"backbone output 2 has shape \(2, 48, 8, 8\), in_channels\[2\] says 64"):
        wrapped(tuple(x[:2] + [torch.randn(2, 48, 8, 8)] + x[3:]))
    with pytest.raises(ValueError, match=r"the backbone gave 3 outputs, in_channels lists 4"):
        wrapped(tuple(x[:3]))


# ---------------------------------------------------------------- backbone plugins
def mmdet_backbone(kind='ResNet', plugins=None, **extra):
    cfg = dict(type=kind, depth=50, base_channels=8, num_stages=4, out_indices=(0, 1, 2, 3), **extra)
    if plugins:
        cfg['plugins'] = plugins
    return build_detector(cfg)


@pytest.mark.parametrize('block', ['SE', 'CBAM'])
def test_plugin_after_conv3_is_the_block_on_the_conv3_output_before_the_add(block):
    """The whole bottleneck by hand: relu(Block(bn3(conv3(...))) + identity), Block a fresh attn_plugins
    block with the plugin's weights."""
    model = mmdet_backbone(plugins=[dict(cfg=dict(type=block), stages=(True, True, True, True), position='after_conv3')])
    randomize(model).eval()
    bottleneck = model.layer2[0]                       # with a downsample branch
    plugin = getattr(bottleneck, block.lower())
    by_hand = getattr(attn_plugins, block)(plugin.channels)
    by_hand.load_state_dict(plugin.state_dict())
    by_hand.eval()
    x = torch.randn(2, 32, 16, 16)
    with torch.no_grad():
        out = torch.relu(bottleneck.norm1(bottleneck.conv1(x)))
        out = torch.relu(bottleneck.norm2(bottleneck.conv2(out)))
        out = bottleneck.norm3(bottleneck.conv3(out))
        expected = torch.relu(by_hand(out) + bottleneck.downsample(x))
        torch.testing.assert_close(bottleneck(x), expected)
        without = torch.relu(out + bottleneck.downsample(x))
        assert not torch.allclose(expected, without, atol=1e-3)       # the block did something


@pytest.mark.parametrize('block', ['SE', 'CBAM', 'NonLocal'])
def test_blocks_are_resnext_plugins_too(block):
    model = mmdet_backbone('ResNeXt', groups=4, base_width=4,
                           plugins=[dict(cfg=dict(type=block), stages=(False, True, True, False), position='after_conv3')])
    blocks = attention_modules(model)
    name = {'SE': 'se', 'CBAM': 'cbam', 'NonLocal': 'non_local'}[block]
    assert sorted(blocks) == sorted(f'layer{s}.{i}.{name}' for s, n in ((2, 4), (3, 6)) for i in range(n))
    assert {type(b).__name__ for b in blocks.values()} == {block}
    outs = model(torch.randn(1, 3, 64, 64))
    assert [o.shape[1] for o in outs] == [32, 64, 128, 256]


def test_detector_init_weights_keeps_the_blocks_init_in_every_placement():
    """Plugins, InjectAttention and AttentionNeck blocks after the whole detector's init_weights()."""
    for name in ('faster-rcnn_r50-cbam_fpn_toy-coco.yaml', 'faster-rcnn_r50-nonlocal_fpn_toy-coco.yaml',
                 'retinanet_r50-se_fpn_toy-coco.yaml'):
        cfg = load_config(os.path.join(ROOT, 'configs', 'det', 'toy', name))
        model = randomize(build_detector(cfg.model))
        model.init_weights()
        blocks = attention_modules(model)
        assert blocks
        for path, block in blocks.items():
            assert_like_new(block, new_like(block), f'{name} {path}: ')


# ---------------------------------------------------------------- benchmark suite 'det'
@pytest.mark.slow
def test_quick_det_benchmark_times_variants_interleaved_against_the_base(tmp_path):
    import json
    import statistics
    import subprocess
    import sys
    out = tmp_path / 'det.json'
    proc = subprocess.run([sys.executable, os.path.join(ROOT, 'tools', 'benchmark.py'), '--suite', 'det', '--quick',
                           '--threads', '1', '--only', 'res4 + BN', '--json', str(out)],
                          capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    names = ['base', 'NonLocal res4 + BN', 'mmcv NonLocal2d res4 + BN']
    assert [r['case'] for r in result['rows']] == names
    # interleaved: every variant in every round, each round starting with the next variant
    rounds = result['warmup_order'] + result['order']
    assert len(result['warmup_order']) == 1 and len(result['order']) == 3
    assert all(sorted(r) == sorted(names) for r in rounds) and [r[0] for r in rounds] == names + names[:1]
    base = result['rows'][0]['time_s']['samples']
    for row in result['rows']:
        t = row['time_s']
        assert row['shape'] == [1, 3, 128, 224] and len(t['samples']) == 3 and all(s > 0 for s in t['samples'])
        assert t['median'] == pytest.approx(statistics.median(t['samples']))
        ratio = row['time_over_base']
        assert ratio['ratio'] == pytest.approx(t['median'] / statistics.median(base))
        per_round = [v / b for v, b in zip(t['samples'], base)]
        assert (ratio['paired_min'], ratio['paired_max']) == (pytest.approx(min(per_round)), pytest.approx(max(per_round)))
        assert row['peak_mb'] > 0 and row['memory_over_base'] == pytest.approx(row['peak_mb'] / result['rows'][0]['peak_mb'])
    (pair,) = result['pairs']
    assert pair['case'] == 'NonLocal res4 + BN vs mmcv NonLocal2d res4 + BN'
    assert pair['ours_time_s']['samples'] == result['rows'][1]['time_s']['samples']
    assert pair['peer_time_s']['samples'] == result['rows'][2]['time_s']['samples']
    assert pair['speedup']['ratio'] == pytest.approx(pair['peer_time_s']['median'] / pair['ours_time_s']['median'])
    assert f"peer / ours time {pair['speedup']['ratio']:.3f}x" in proc.stdout
