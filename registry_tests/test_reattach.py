"""Blocks injected after / before a module run from hooks on it; tools that rebuild the module
(SyncBatchNorm conversion either way) drop those hooks. `reattach_blocks` registers them again,
and `build_runner` does it after mmengine's Runner reverted SyncBN."""
import copy
import pickle

import pytest
import torch
import torch.nn as nn
from conftest import randomize

from attn_plugins.injector import inject

X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3))


class Host(nn.Module):
    def __init__(self, norm=nn.BatchNorm2d):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.bn = norm(8)
        self.out = nn.Conv2d(8, 4, 1)

    def forward(self, x):
        return self.out(self.bn(self.conv(x)))


def _mmengine_revert(model):
    from mmengine.model.utils import revert_sync_batchnorm
    return revert_sync_batchnorm(model)


def _mmengine_convert(model):
    from mmengine.model.utils import convert_sync_batchnorm
    return convert_sync_batchnorm(model)


def _timm_convert(model):
    from timm.layers import convert_sync_batchnorm
    return convert_sync_batchnorm(model)


def _timm_norm(channels):
    from timm.layers import BatchNormAct2d
    return BatchNormAct2d(channels)


# (norm the model is built with, the conversion a tool applies, the norm type it leaves)
CONVERSIONS = {
    'mmengine revert_sync_batchnorm': (nn.SyncBatchNorm, _mmengine_revert, nn.modules.batchnorm._BatchNorm),
    'torch SyncBatchNorm.convert_sync_batchnorm': (nn.BatchNorm2d, nn.SyncBatchNorm.convert_sync_batchnorm,
                                                   nn.SyncBatchNorm),
    'mmengine convert_sync_batchnorm': (nn.BatchNorm2d, _mmengine_convert, nn.SyncBatchNorm),
    'timm convert_sync_batchnorm (BatchNormAct2d)': (_timm_norm, _timm_convert, nn.SyncBatchNorm),
}
SPECS = [dict(type='SE', where='.', position='after:bn', reduction=2),
         dict(type='CBAM', where='bn', position='before', reduction=2)]


def _count_calls(*blocks):
    calls = []
    for block in blocks:
        block.register_forward_hook(lambda module, args, out: calls.append(type(module).__name__))
    return calls


def _injected_host(norm):
    model = randomize(Host(norm)).eval()
    inject(model, SPECS, example_input=torch.zeros(1, 3, 8, 8))
    randomize(model, seed=2).eval()  # (new blocks start in training mode)
    with torch.no_grad():
        return model, model(X)


@pytest.mark.parametrize('conversion', list(CONVERSIONS))
def test_reattach_after_a_syncbn_conversion(conversion):
    from attn_plugins import detached_blocks, reattach_blocks
    norm, convert, converted_type = CONVERSIONS[conversion]
    model, reference = _injected_host(norm)
    old_bn, se, cbam = model.bn, model.bn.attn_se, model.bn.attn_cbam
    model = convert(model).eval()    # mmengine's convert leaves the new norm in training mode
    assert model.bn is not old_bn and isinstance(model.bn, converted_type)
    del old_bn                       # the old module is referenced nowhere
    assert model.bn.attn_se is se and model.bn.attn_cbam is cbam     # the children survive, not the hooks
    calls = _count_calls(se, cbam)
    with torch.no_grad():
        model(X)
    assert calls == []               # what the conversion did: both blocks silently skipped
    assert [p.split(':')[0] for p in detached_blocks(model)] == ['bn.attn_se', 'bn.attn_cbam']
    assert 'reattach_blocks' in detached_blocks(model)[0]

    assert reattach_blocks(model) == ['bn.attn_se', 'bn.attn_cbam']
    assert detached_blocks(model) == []
    with torch.no_grad():
        out = model(X)
    assert sorted(calls) == ['CBAM', 'SE']
    torch.testing.assert_close(out, reference, rtol=0, atol=0)


def test_reattach_is_idempotent_and_leaves_attached_hooks_alone():
    from attn_plugins import reattach_blocks
    model, reference = _injected_host(nn.SyncBatchNorm)
    bn = model.bn
    with torch.no_grad():            # the model without its blocks
        plain = model.out(nn.functional.batch_norm(model.conv(X), bn.running_mean, bn.running_var, bn.weight,
                                                   bn.bias, False, 0.0, bn.eps))
    assert not torch.allclose(reference, plain, atol=1e-3)     # the blocks change the output
    assert reattach_blocks(model) == []          # nothing replaced: nothing added
    assert len(model.bn._forward_hooks) == 1 and len(model.bn._forward_pre_hooks) == 1
    model = _mmengine_revert(model)
    assert len(reattach_blocks(model)) == 2
    assert reattach_blocks(model) == [] and reattach_blocks(model) == []
    assert len(model.bn._forward_hooks) == 1 and len(model.bn._forward_pre_hooks) == 1
    # the same hook functions as inject registers: a re-attached model deep-copies, pickles and scripts
    for twin in (copy.deepcopy(model), pickle.loads(pickle.dumps(model))):
        with torch.no_grad():
            torch.testing.assert_close(twin(X), reference, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(torch.jit.script(model)(X), reference, rtol=0, atol=0)
    calls = _count_calls(model.bn.attn_se, model.bn.attn_cbam)
    with torch.no_grad():
        out = model(X)
    assert sorted(calls) == ['CBAM', 'SE']       # each once
    torch.testing.assert_close(out, reference, rtol=0, atol=0)


def test_a_block_appended_to_a_sequential_gets_no_hook():
    from attn_plugins import detached_blocks, reattach_blocks
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.Sequential(nn.Conv2d(8, 8, 1), nn.SyncBatchNorm(8)))
    inject(model, [dict(type='SE', where='1', position='after', reduction=2),          # appended: '1.attn_se'
                   dict(type='SE', where='1', position='after:1', reduction=2)],       # hook on the norm
           example_input=torch.zeros(1, 3, 8, 8))
    randomize(model).eval()
    with torch.no_grad():
        reference = model(X)
    model = _mmengine_revert(model)
    assert reattach_blocks(model) == ['1.1.attn_se'] and detached_blocks(model) == []
    assert not model[1]._forward_hooks
    with torch.no_grad():
        torch.testing.assert_close(model(X), reference, rtol=0, atol=0)


class Pyramid(nn.Module):
    """Two feature maps, as a tuple or a dict."""

    def __init__(self, as_dict=False):
        super().__init__()
        self.as_dict = as_dict
        self.c1 = nn.Conv2d(3, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1)

    def forward(self, x):
        f1 = self.c1(x)
        f2 = self.c2(f1)
        return {'res1': f1, 'res2': f2} if self.as_dict else (f1, f2)


class Net(nn.Module):
    def __init__(self, as_dict=False):
        super().__init__()
        self.body = Pyramid(as_dict)

    def forward(self, x):
        out = self.body(x)
        return list(out.values()) if isinstance(out, dict) else list(out)


def _rebuilt(module):
    """What the SyncBN converters do to a module: a new one with the old weights and children."""
    new = type(module)(module.as_dict)
    for name, child in module.named_children():
        new.add_module(name, child)
    return new


@pytest.mark.parametrize('old_report', [False, True], ids=['report', 'report-without-output_index'])
@pytest.mark.parametrize('as_dict', [False, True], ids=['tuple', 'dict'])
def test_reattach_on_a_multi_output_host(as_dict, old_report):
    from attn_plugins import detached_blocks, reattach_blocks
    first, second = ('res1', 'res2') if as_dict else (0, 1)
    model = Net(as_dict).eval()
    inject(model, [dict(type='SE', where='body', output_index=[first, second], reduction=2),
                   dict(type='SE', where='body', output_index=[first], reduction=2, stack=True)],
           example_input=torch.zeros(1, 3, 8, 8))
    randomize(model)
    with torch.no_grad():
        reference = model(X)
    blocks = [n for n, m in model.body.named_children() if n.startswith('attn_')]
    assert len(blocks) == 3
    assert [r.output_index for r in model.attn_plugins_report] == [first, second, first]
    if old_report:                   # pickled before the report recorded it: read from the position
        for record in model.attn_plugins_report:
            del record.output_index
    model.body = _rebuilt(model.body)
    with torch.no_grad():
        stale = model(X)
    assert not torch.allclose(stale[0], reference[0], atol=1e-3)
    assert len(detached_blocks(model)) == 3
    assert sorted(reattach_blocks(model)) == sorted(f'body.{n}' for n in blocks)
    assert reattach_blocks(model) == [] and detached_blocks(model) == []
    assert len(model.body._forward_hooks) == 2       # one hook per run of distinct outputs
    with torch.no_grad():
        out = model(X)
    for got, want in zip(out, reference):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


def test_a_block_that_is_gone_is_named():
    from attn_plugins import detached_blocks, reattach_blocks
    model, _ = _injected_host(nn.BatchNorm2d)
    model.bn = nn.Identity()         # e.g. a BN fused into its conv: the block went with it
    assert reattach_blocks(model) == []
    problems = detached_blocks(model)
    assert len(problems) == 2 and problems[0].startswith("bn.attn_se: no longer a child of 'bn' (Identity)")
    del model.bn
    assert "bn.attn_se: its host module 'bn' is no longer in the model" in detached_blocks(model)


# ---------------------------------------------------------------- through build_runner
TINY_SEG = """\
default_scope: mmseg
norm: &norm {type: SyncBN, requires_grad: true}
model:
  type: EncoderDecoder
  data_preprocessor: {type: SegDataPreProcessor, mean: [0, 0, 0], std: [1, 1, 1], size: [32, 32]}
  backbone: {type: ResNetV1c, depth: 18, stem_channels: 8, base_channels: 8, norm_cfg: *norm}
  decode_head: {type: FCNHead, in_channels: 64, in_index: 3, channels: 8, num_convs: 1, concat_input: false,
                num_classes: 2, norm_cfg: *norm}
  plugins:
    - {type: SE, where: 'backbone.layer*.*', position: 'after:bn2', reduction: 4}
"""


@pytest.fixture
def tiny_runner(tmp_path):
    from attn_plugins.runner import build_runner
    path = tmp_path / 'tiny_syncbn_seg.yaml'
    path.write_text(TINY_SEG)
    return build_runner(str(path), work_dir=str(tmp_path / 'work'))


def test_build_runner_keeps_blocks_after_syncbn_on_its_reverted_norms(tiny_runner):
    from attn_plugins import SE
    from attn_plugins.integrations.mmengine import _InitThenResetBlocks
    model = tiny_runner.model
    norms = [model.backbone.get_submodule(f'layer{i}.{j}.bn2') for i in range(1, 5) for j in range(2)]
    assert not any(isinstance(n, nn.SyncBatchNorm) for n in norms)    # the Runner reverted SyncBN (one process)
    blocks = [n.attn_se for n in norms]
    assert all(isinstance(b, SE) for b in blocks)
    calls = _count_calls(*blocks)
    model.eval()
    with torch.no_grad():
        model(torch.zeros(1, 3, 32, 32), mode='tensor')
    assert calls == ['SE'] * 8
    # the blocks keep their own init through the new norms' init_weights (mmengine's Kaiming would zero
    # their biases)
    assert all(isinstance(n.__dict__.get('init_weights'), _InitThenResetBlocks) for n in norms)
    model.init_weights()
    assert all(b.fc1.bias.abs().sum() > 0 for b in blocks)


def test_check_blocks_hook_heals_or_names_a_detached_block(tiny_runner):
    from attn_plugins.integrations.mmengine import BlocksDetached, CheckBlocksHook
    hooks = [h for h in tiny_runner.hooks if isinstance(h, CheckBlocksHook)]
    assert len(hooks) == 1
    backbone = tiny_runner.model.backbone
    block = backbone.layer2[0].bn2.attn_se
    backbone.layer2[0].bn2 = _mmengine_convert(backbone.layer2[0].bn2)     # replaced after build_runner
    hooks[0].before_train(tiny_runner)
    calls = _count_calls(block)
    with torch.no_grad():
        tiny_runner.model.eval()(torch.zeros(1, 3, 32, 32), mode='tensor')
    assert calls == ['SE']
    backbone.layer3[1].bn2 = nn.BatchNorm2d(32)                     # a norm without the block
    for stage in (hooks[0].before_run, hooks[0].before_train, hooks[0].before_val, hooks[0].before_test):
        with pytest.raises(BlocksDetached, match=r"1 injected block\(s\) would not run: "
                                                  r"backbone\.layer3\.1\.bn2\.attn_se: no longer a child"):
            stage(tiny_runner)


def test_check_blocks_hook_refuses_efficient_conv_bn_eval_over_hooked_norms(tmp_path):
    """mmengine's `efficient_conv_bn_eval` fuses conv+BN in eval: blocks hooked on the BN would be
    skipped in validation, so training stops first with the key and the blocks named."""
    from attn_plugins import ConfigError
    from attn_plugins.integrations.mmengine import CheckBlocksHook
    from attn_plugins.runner import build_runner
    path = tmp_path / 'tiny_syncbn_seg.yaml'
    path.write_text(TINY_SEG)
    runner = build_runner(str(path), work_dir=str(tmp_path / 'work'),
                          cfg_options={'efficient_conv_bn_eval': ['backbone.layer2']})
    hook = next(h for h in runner.hooks if isinstance(h, CheckBlocksHook))
    with pytest.raises(ConfigError, match=r"efficient_conv_bn_eval: \['backbone.layer2'\]: .* skipped in eval mode "
                                          r"\(every validation of this run\): backbone\.layer2\.0\.bn2\.attn_se, "
                                          r"backbone\.layer2\.1\.bn2\.attn_se; remove"):
        hook.before_train(runner)
    runner.cfg.efficient_conv_bn_eval = 'decode_head'      # no block there
    hook.before_train(runner)


def test_check_blocks_hook_heals_a_runner_of_openmmlab_tools_before_init(tmp_path):
    """OpenMMLab's own tools/train.py: Runner.from_cfg reverts SyncBN and nothing re-attaches until
    the hook's before_run, which comes before the model's init_weights (blocks keep their own init)."""
    import yaml
    from mmengine.config import Config
    from mmengine.runner import Runner

    from attn_plugins import SE
    from attn_plugins.integrations.mmengine import CheckBlocksHook
    cfg = yaml.safe_load(TINY_SEG)
    cfg['model'] = dict(type='InjectAttention', plugins=cfg['model'].pop('plugins'), module=cfg['model'])
    cfg.update(custom_imports=dict(imports=['attn_plugins']), custom_hooks=[dict(type='CheckBlocksHook')],
               work_dir=str(tmp_path))
    runner = Runner.from_cfg(Config(cfg))
    blocks = [m for m in runner.model.modules() if isinstance(m, SE)]
    calls = _count_calls(*blocks)
    with torch.no_grad():
        runner.model.eval()(torch.zeros(1, 3, 32, 32), mode='tensor')
    assert len(blocks) == 8 and calls == []          # what mmengine alone leaves
    next(h for h in runner.hooks if isinstance(h, CheckBlocksHook)).before_run(runner)
    with torch.no_grad():
        runner.model(torch.zeros(1, 3, 32, 32), mode='tensor')
    assert calls == ['SE'] * 8
    runner.model.init_weights()
    assert all(b.fc1.bias.abs().sum() > 0 for b in blocks)
