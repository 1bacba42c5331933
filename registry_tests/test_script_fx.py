"""TorchScript and torch.fx: every block scripts (and saves), injected models script and pickle,
blocks are FX leaves in timm's tracer. timm's own model tests over the ap_* models are in
timm_model_tests/ (slow)."""
import copy
import functools
import io
import subprocess
import sys

import pytest
import timm
import torch
from torchvision.models.feature_extraction import create_feature_extractor, get_graph_node_names

import attn_plugins
from conftest import randomize

SHAPE = (2, 16, 5, 6)
BLOCKS = [
    ('SE', dict(), SHAPE), ('CBAM', dict(), SHAPE), ('CBAM', dict(use_spatial=False), SHAPE),
    ('SpatialWeights', dict(), SHAPE), ('ChannelAttention', dict(), SHAPE), ('PositionAttention', dict(), SHAPE),
    ('DualAttention', dict(), SHAPE),
    *[('NonLocal', dict(mode=mode), SHAPE) for mode in ('gaussian', 'embedded_gaussian', 'dot_product', 'concatenation')],
    ('NonLocal', dict(dim=1, sub_sample=True), (2, 16, 7)), ('NonLocal', dict(dim=3, sub_sample=True), (2, 16, 3, 4, 5)),
]


def _recorders(module):
    return [m for m in module.modules() if hasattr(m, 'record_attention')]


@pytest.mark.parametrize('name,options,shape', BLOCKS, ids=lambda v: str(v) if not isinstance(v, tuple) else None)
def test_every_block_scripts_saves_and_records(name, options, shape):
    block = randomize(attn_plugins.build(dict(type=name, channels=shape[1], **options))).eval()
    x = torch.randn(shape)
    scripted = torch.jit.script(block)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.jit.load(buffer)(x), block(x))
    for module in _recorders(block):
        module.record_attention = True
    scripted = torch.jit.script(block)
    scripted(x)
    names = [n for n, m in block.named_modules() if hasattr(m, 'record_attention')]
    maps = [functools.reduce(getattr, n.split('.') if n else [], scripted).attention_map for n in names]
    block(x)
    for recorded, module in zip(maps, _recorders(block)):
        if module.attention_map is None:
            assert recorded is None                                   # channel-only CBAM keeps no map
        else:
            torch.testing.assert_close(recorded, module.attention_map)
    assert any(m is not None for m in maps) or options == dict(use_spatial=False)
    with pytest.raises(torch.jit.Error, match=f'expected input of shape \\(B, {shape[1]}'):
        scripted(torch.randn(shape[0], shape[1] + 1, *shape[2:]))    # the channel check is kept


def test_pay_attention_scripts():
    block = randomize(attn_plugins.PayAttention(16, 32)).eval()
    local, global_feat = torch.randn(2, 16, 5, 6), torch.randn(2, 32)
    scripted = torch.jit.script(block)
    for got, expected in zip(scripted(local, global_feat), block(local, global_feat)):
        torch.testing.assert_close(got, expected)
    with pytest.raises(torch.jit.Error, match='global feature must be \\(B, 32\\)'):
        scripted(local, torch.randn(2, 31))


def test_scripted_chunked_attention_matches_eager_with_gradients():
    """Above the dense limit the scripted blocks take the chunked path (without checkpointing)."""
    for block in (attn_plugins.PositionAttention(8, chunk_elements=1 << 20),
                  attn_plugins.NonLocal(8, mode='concatenation', chunk_elements=1 << 20)):
        randomize(block)
        x = torch.randn(1, 8, 64, 64)                                  # 4096² scores > 2**22
        scripted = torch.jit.script(block)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), block(x))
        x1, x2 = x.clone().requires_grad_(), x.clone().requires_grad_()
        scripted(x1).square().sum().backward()
        block(x2).square().sum().backward()
        torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-4, atol=1e-5)


def _injected_resnet18():
    model = timm.create_model('resnet18', num_classes=5)
    attn_plugins.inject(model, [dict(type='NonLocal', where='layer2.1'),
                                dict(type='SE', where='layer3.0.conv1', position='before', channels=128),
                                dict(type='CBAM', where='layer1.*', position='after:bn2')])
    return randomize(model).eval()


def test_injected_models_script_and_pickle():
    """Blocks run from forward hooks ('after', 'before', 'after:<child>'): TorchScript compiles
    them; deepcopy and pickling (a new process) keep them."""
    model = _injected_resnet18()
    x = torch.randn(1, 3, 64, 64)
    expected = model(x)
    scripted = torch.jit.script(model)
    torch.testing.assert_close(scripted(x), expected)
    buffer = io.BytesIO()
    torch.jit.save(scripted, buffer)
    buffer.seek(0)
    torch.testing.assert_close(torch.jit.load(buffer)(x), expected)
    torch.testing.assert_close(copy.deepcopy(model)(x), expected)
    buffer = io.BytesIO()
    torch.save({'model': model, 'x': x, 'expected': expected}, buffer)
    code = ("import sys, io, torch\n"
            "d = torch.load(io.BytesIO(sys.stdin.buffer.read()), weights_only=False)\n"
            "torch.testing.assert_close(d['model'](d['x']), d['expected'], rtol=1e-4, atol=1e-5)\n")
    out = subprocess.run([sys.executable, '-c', code], input=buffer.getvalue(), capture_output=True)
    assert out.returncode == 0, out.stderr.decode()[-2000:]


@pytest.mark.parametrize('name', ['ap_nonlocal_resnet50', 'ap_vgg16_att3_indep_dp'])
def test_ap_models_script(name, ours_attention):
    # eager runs our attention as the scripted model does (SDPA's fused CPU kernel is eager-only and
    # sums in another order: on these randomized weights' huge activations, 5e-4 relative apart)
    model = randomize(timm.create_model(name)).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(torch.jit.script(model)(x), model(x))


def test_blocks_are_fx_leaves_in_timm_feature_extraction():
    """timm's tracer (torchvision's, with timm's leaf modules) keeps each block as one call, so the
    traced graph runs the block's own (chunked, checked) forward. A block hooked on a leaf layer
    (after:bn2, before conv1) runs inside that layer's call, with it."""
    model = _injected_resnet18()
    leaves = dict(leaf_modules=timm.models.get_notrace_modules(), autowrap_functions=timm.models.get_notrace_functions())
    _, nodes = get_graph_node_names(model, tracer_kwargs=leaves)
    assert 'layer2.1.attn_non_local' in nodes
    assert not any(n.startswith('layer2.1.attn_non_local.') for n in nodes)   # not traced into
    extractor = create_feature_extractor(model, return_nodes=['layer2.1.attn_non_local', 'fc'], tracer_kwargs=leaves)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(extractor(x)['fc'], model(x))
        torch.testing.assert_close(torch.jit.script(extractor)(x)['fc'], model(x))
    fx_features = timm.create_model('ap_seresnet50', features_only=True, feature_cls='fx', out_indices=(1, 2))
    assert [f.shape[1] for f in fx_features(torch.randn(1, 3, 64, 64))] == [256, 512]


def test_plain_fx_traces_through_the_gates():
    """SE, CBAM and SpatialWeights have no data-dependent control flow: torch.fx traces through
    them (the channel check is skipped on proxies), as through timm's own SE and CBAM."""
    model = randomize(timm.create_model('resnet18', num_classes=5, block_args=dict(attn_layer=attn_plugins.CBAM)))
    attn_plugins.inject(model, [dict(type='SpatialWeights', where='layer4')])
    model.eval()
    graph = torch.fx.symbolic_trace(model)
    x = torch.randn(1, 3, 64, 64)
    torch.testing.assert_close(graph(x), model(x))
