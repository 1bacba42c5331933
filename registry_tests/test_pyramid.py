"""PyramidAttention as documented in its module (Du et al., ECCV 2018): the interaction-aware
score per position, the attended features, the PCA loss that cannot collapse the features, and
its collection from every host (inject into timm, mmengine's Runner with a backbone plugin,
PyramidAttentionHead)."""
import pickle
import warnings

import pytest
import torch
import torch.nn as nn

import attn_plugins
from attn_plugins import modules as m
from attn_plugins.losses import auxiliary_losses, total_auxiliary_loss


def identity_fusion(c, **kw):
    """A one-map block whose fused features are its input (1x1 reduce = identity, no bias)."""
    block = m.PyramidAttention(c, fuse_channels=c, **kw)
    with torch.no_grad():
        block.reduce[0].weight.copy_(torch.eye(c)[:, :, None, None])
        block.reduce[0].bias.zero_()
        block.gamma.fill_(0.5)
    return block


def attention(block, x):
    block.record_attention = True
    with torch.no_grad():
        block(x)
    return block.attention_map.flatten(1)


def test_scores_and_output_follow_the_documented_formula():
    """Per level: its own whitened principal-component score and softmax map a^l (Sec. 3: attention at
    each scale); fusion a = Σ_l β_l a^l; y = x + γ N a ⊙ V x."""
    block = m.PyramidAttention(8, in_channels=[8, 6], fuse_channels=6, num_components=3).eval()
    with torch.no_grad():
        block.gamma.fill_(0.7)
        block.fusion.copy_(torch.tensor([0.3, -0.4]))
    x, coarse = torch.randn(2, 8, 5, 7), torch.randn(2, 6, 10, 14)
    block.record_attention = True
    with torch.no_grad():
        y = block([x, coarse])
        levels = [block.reduce[0](x), nn.functional.adaptive_avg_pool2d(block.reduce[1](coarse), (5, 7))]
        maps = []
        for l, level in enumerate(levels):
            f = level.flatten(2)
            z = torch.einsum('ck,bcn->bkn', block.components[l], f - f.mean(-1, keepdim=True))   # W_lᵀ(f_i − μ)
            sigma = (z.pow(2).mean(-1, keepdim=True) + block.eps).sqrt()
            maps.append(torch.softmax(torch.einsum('k,bkn->bn', block.score[l], z / sigma), -1))
        beta = torch.softmax(torch.tensor([0.3, -0.4]), 0)
        a = beta[0] * maps[0] + beta[1] * maps[1]
        expected = x + 0.7 * block.value(x) * (35 * a).view(2, 1, 5, 7)
    assert block.attention_map.shape == (2, 1, 5, 7) and block.level_attention_map.shape == (2, 2, 5, 7)
    torch.testing.assert_close(block.level_attention_map.flatten(2).transpose(0, 1), torch.stack(maps))
    torch.testing.assert_close(block.level_attention([x, coarse]), torch.stack(maps))
    torch.testing.assert_close(block.attention_map.flatten(1), a)
    torch.testing.assert_close(y, expected)


def test_each_level_attends_on_its_own_then_the_maps_are_fused():
    """Sec. 3 (attention at each scale, then a fusion function): a level's map a^l depends on that
    level's features only, and the block's map is the β-mixture of the levels' maps. A block that
    fuses the levels' features before one score (the former reading) fails both."""
    torch.manual_seed(0)
    block = m.PyramidAttention(8, in_channels=[8, 4, 4], fuse_channels=6, num_components=3).eval()
    x, mid, coarse = torch.randn(2, 8, 6, 6), torch.randn(2, 4, 6, 6), torch.randn(2, 4, 3, 3)
    with torch.no_grad():
        maps = block.level_attention([x, mid, coarse])
        moved = block.level_attention([x, mid * 3 + torch.randn_like(mid), coarse])
    torch.testing.assert_close(moved[0], maps[0])
    torch.testing.assert_close(moved[2], maps[2])
    assert (moved[1] - maps[1]).abs().max() > 1e-3
    block.record_attention = True
    with torch.no_grad():
        block([x, mid, coarse])
    torch.testing.assert_close(block.attention_map.flatten(1), maps.mean(0))      # b = 0 at init: β uniform
    assert torch.equal(block.level_weights(), torch.full((3,), 1 / 3))


def test_diversity_loss_penalises_overlapping_level_maps():
    """(6): the mean squared overlap of the L2-normalised level maps (off-diagonal Gram entries):
    1 for identical maps, 0 for disjoint ones; its gradient trains the scores and the level convs."""
    same = torch.softmax(torch.randn(2, 10), -1).expand(2, 2, 10)            # L = 2 equal maps, B = 2
    assert m.PyramidAttention.diversity_loss_of(same).item() == pytest.approx(1.0)
    disjoint = torch.zeros(2, 1, 10)
    disjoint[0, 0, :5], disjoint[1, 0, 5:] = 0.2, 0.2
    assert m.PyramidAttention.diversity_loss_of(disjoint).item() == 0
    maps = torch.softmax(torch.randn(3, 2, 12), -1)
    unit = maps / maps.norm(dim=-1, keepdim=True)
    overlaps = [(unit[l] * unit[k]).sum(-1).pow(2) for l in range(3) for k in range(3) if l != k]
    assert m.PyramidAttention.diversity_loss_of(maps).item() == pytest.approx((sum(overlaps) / 6).mean().item())
    assert m.PyramidAttention.diversity_loss_of(maps[:1]) is None

    block = m.PyramidAttention(8, in_channels=[8, 4], fuse_channels=6, num_components=2,
                               pca_loss_weight=0.5, diversity_loss_weight=0.25).train()
    x, coarse = torch.randn(2, 8, 6, 6, requires_grad=True), torch.randn(2, 4, 3, 3)
    block([x, coarse])
    torch.testing.assert_close(block.diversity_loss, m.PyramidAttention.diversity_loss_of(
        block.level_attention([x, coarse])))
    losses = auxiliary_losses(block)
    assert set(losses) == {'loss_pca', 'loss_diversity'}
    torch.testing.assert_close(losses['loss_diversity'], 0.25 * block.diversity_loss)
    grads = torch.autograd.grad(losses['loss_diversity'], [x, block.score, block.reduce[1].weight])
    assert all(g.abs().sum() > 0 for g in grads)
    single = m.PyramidAttention(8).train()
    single(torch.randn(1, 8, 4, 4))
    assert single.diversity_loss is None and set(auxiliary_losses(single)) == {'loss_pca'}
    with pytest.raises(ValueError, match='diversity_loss_weight'):
        m.PyramidAttention(8, diversity_loss_weight=-1)


def test_diversity_loss_makes_the_level_maps_complementary():
    """Minimising L_div alone on fixed features drives two levels' maps apart."""
    torch.manual_seed(0)
    block = m.PyramidAttention(8, in_channels=[8, 8], fuse_channels=8, num_components=4).train()
    x = torch.randn(2, 8, 6, 6)
    feats = [x, x + 0.1 * torch.randn_like(x)]            # nearly the same maps at both levels
    opt = torch.optim.Adam([block.score, block.components], lr=0.1)
    block(feats)
    start = block.diversity_loss.item()
    for _ in range(20):
        block(feats)
        opt.zero_grad()
        block.diversity_loss.backward()
        opt.step()
    block(feats)
    assert block.diversity_loss.item() < 0.1 * start, (start, block.diversity_loss.item())


def test_other_positions_change_a_positions_weight():
    """With f_0 and f_1 fixed, a_0 / a_1 depends on the other positions (through the principal
    spreads σ_k): not a per-position score of the vector alone, nor removable by the softmax."""
    block = identity_fusion(8, num_components=4).eval()
    fixed = torch.randn(8, 2)
    ratios = []
    for spread in (0.3, 1.0, 3.0):
        x = torch.cat([fixed, torch.randn(8, 62) * spread], 1).view(1, 8, 8, 8)
        a = attention(block, x)[0]
        assert block.attention_map.shape == (1, 1, 8, 8), 'one weight per position, not a pairwise map'
        ratios.append((a[0] / a[1]).log().item())
    assert max(ratios) - min(ratios) > 0.1, ratios


def test_scores_are_invariant_to_a_common_shift_and_scale():
    block = identity_fusion(8).eval()
    x = torch.randn(2, 8, 6, 6)
    a = attention(block, x)
    torch.testing.assert_close(attention(block, x + torch.randn(1, 8, 1, 1) * 5), a, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(attention(block, x * 20), a, rtol=1e-4, atol=1e-6)


def test_average_of_the_output_is_the_score_weighted_sum():
    """mean_i y_i = mean_i x_i + γ V(Σ_i a_i x_i): the paper's attended feature under global pooling."""
    block = identity_fusion(8).eval()
    x = torch.randn(2, 8, 5, 6)
    a = attention(block, x)
    with torch.no_grad():
        pooled = torch.einsum('bn,bcn->bc', a, x.flatten(2))
        expected = x.mean((2, 3)) + 0.5 * block.value(pooled[:, :, None, None]).flatten(1)
        torch.testing.assert_close(block(x).mean((2, 3)), expected)


def test_pca_loss_cannot_collapse_the_features():
    """L_pca trains W only: no gradient reaches the inputs or the pyramid convs, and it does not
    depend on the features' scale (shrinking them cannot lower it)."""
    block = m.PyramidAttention(8, in_channels=[8, 4], fuse_channels=8, num_components=2).train()
    for conv in block.reduce:
        if conv.bias is not None:
            nn.init.zeros_(conv.bias)
    x, coarse = torch.randn(2, 8, 6, 6, requires_grad=True), torch.randn(2, 4, 3, 3, requires_grad=True)
    block([x, coarse])
    loss = block.pca_loss
    reduce_params = [p for conv in block.reduce for p in conv.parameters()]
    grads = torch.autograd.grad(loss, [x, coarse, *reduce_params, block.components], allow_unused=True)
    assert all(g is None or not g.any() for g in grads[:-1])
    assert grads[-1].abs().sum() > 0
    block([x * 0.01, coarse * 0.01])
    torch.testing.assert_close(block.pca_loss, loss.detach(), rtol=1e-4, atol=1e-6)


def test_pca_loss_is_kept_while_training_and_handed_out_once():
    block = m.PyramidAttention(8, pca_loss_weight=0.25).train()
    x = torch.randn(2, 8, 4, 4)
    block(x)
    losses = auxiliary_losses(block)
    assert set(losses) == {'loss_pca'}
    torch.testing.assert_close(losses['loss_pca'], 0.25 * block.pca_loss)
    assert auxiliary_losses(block) == {}, 'a second collection would count it twice'
    block.eval()
    block(x)
    assert block.pca_loss is None and auxiliary_losses(block) == {}
    with torch.no_grad():       # the target is detached anyway: W still trains (re-entrant checkpointing)
        block.train()(x)
    assert auxiliary_losses(block)['loss_pca'].requires_grad
    unweighted = m.PyramidAttention(8, pca_loss_weight=0).train()
    unweighted(x)
    assert unweighted.pca_loss is not None and auxiliary_losses(unweighted) == {}
    with pytest.raises(ValueError, match='pca_loss_weight'):
        m.PyramidAttention(8, pca_loss_weight=-1)


@pytest.mark.parametrize('reentrant', [True, False])
def test_pca_loss_survives_gradient_checkpointing(reentrant):
    """mmcv/mmseg `with_cp=True` and timm's grad checkpointing re-run the block in backward: the loss
    of the forward is collected, trains W, and the recompute neither replaces it nor warns."""
    from torch.utils.checkpoint import checkpoint
    block = m.PyramidAttention(8).train()
    x = torch.randn(2, 8, 4, 4, requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        for _ in range(2):
            out = checkpoint(block, x, use_reentrant=reentrant)
            losses = auxiliary_losses(block)
            assert set(losses) == {'loss_pca'}
            block.components.grad = None
            (out.sum() + losses['loss_pca']).backward()
            assert block.components.grad is not None and block.components.grad.abs().sum() > 0
            assert auxiliary_losses(block) == {}, 'the recompute in backward kept a second loss'


def test_uncollected_loss_warns_once():
    block = m.PyramidAttention(8).train()
    x = torch.randn(1, 8, 4, 4)
    block(x)
    with pytest.warns(UserWarning, match='never collected'):
        block(x)
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        block(x)


def test_inject_into_timm_model_and_collect():
    timm = pytest.importorskip('timm')
    model = timm.create_model('resnet18', num_classes=3)
    attn_plugins.inject(model, [dict(type='PyramidAttention', where='layer3.*', position='after:bn2')])
    blocks = [mod for mod in model.modules() if isinstance(mod, m.PyramidAttention)]
    assert len(blocks) == 2
    model.train()
    x = torch.randn(2, 3, 64, 64)
    model(x).logsumexp(1).mean().backward()
    assert all(b.components.grad is None or not b.components.grad.any() for b in blocks), \
        'γ = 0 at init: the task alone gives W no gradient'
    model.zero_grad()
    out = model(x)
    losses = auxiliary_losses(model)
    assert sorted(losses) == sorted(f'{name}.loss_pca' for name, mod in model.named_modules()
                                    if isinstance(mod, m.PyramidAttention))
    (out.logsumexp(1).mean() + sum(losses.values())).backward()
    assert all(b.components.grad.abs().sum() > 0 for b in blocks)
    model(x)
    total = total_auxiliary_loss(model)
    torch.testing.assert_close(total, sum(0.1 * b.pca_loss for b in blocks))
    assert total_auxiliary_loss(model) is None and attn_plugins.auxiliary_losses is auxiliary_losses


def _seg_batch(n=2, size=32, classes=3):
    from mmengine.structures import PixelData
    from mmseg.structures import SegDataSample
    batch = []
    for _ in range(n):
        sample = SegDataSample()
        sample.gt_sem_seg = PixelData(data=torch.randint(0, classes, (1, size, size)))
        sample.set_metainfo(dict(img_shape=(size, size), ori_shape=(size, size)))
        batch.append(dict(inputs=torch.randint(0, 255, (3, size, size), dtype=torch.uint8), data_samples=sample))
    return batch


def test_mmseg_backbone_plugin_loss_reaches_the_optimiser(tmp_path):
    """One iteration of mmengine's Runner: a PyramidAttention put into mmseg's ResNet by its
    `plugins` cfg gets its PCA loss through AuxiliaryLossHook (γ = 0, so W moves only by it)."""
    pytest.importorskip('mmseg')
    from mmengine.dataset import pseudo_collate
    from mmengine.runner import Runner
    model = dict(
        type='EncoderDecoder',
        data_preprocessor=dict(type='SegDataPreProcessor', mean=[0.] * 3, std=[255.] * 3, size=(32, 32)),
        backbone=dict(type='ResNetV1c', depth=50, stem_channels=8, base_channels=4, out_indices=(3,),
                      strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                      norm_cfg=dict(type='BN'), plugins=[dict(cfg=dict(type='PyramidAttention', pca_loss_weight=0.5),
                                                              stages=(False, False, False, True), position='after_conv3')]),
        decode_head=dict(type='FCNHead', in_channels=128, in_index=0, channels=8, num_convs=1, num_classes=3,
                         norm_cfg=dict(type='BN'), loss_decode=dict(type='CrossEntropyLoss', loss_weight=1.0)))
    loader = torch.utils.data.DataLoader(_seg_batch(), batch_size=2, collate_fn=pseudo_collate)
    runner = Runner(model=model, work_dir=str(tmp_path), train_dataloader=loader,
                    train_cfg=dict(by_epoch=False, max_iters=1), default_scope='mmseg', log_level='WARNING',
                    optim_wrapper=dict(optimizer=dict(type='SGD', lr=1.0)), default_hooks=dict(checkpoint=None),
                    custom_hooks=[dict(type='AuxiliaryLossHook')])
    blocks = [mod for mod in runner.model.modules() if isinstance(mod, m.PyramidAttention)]
    assert len(blocks) == 3
    runner.model.init_weights()          # now, not inside train(): W may then move only by the training step
    before = [b.components.detach().clone() for b in blocks]
    runner.train()
    assert all(not torch.equal(b.components, w) for b, w in zip(blocks, before))
    logged = runner.message_hub.get_scalar('train/plugins.loss_pca').current()
    assert logged == pytest.approx(0.5 * sum(b.pca_loss.item() for b in blocks), rel=1e-4)


def test_mmseg_plugin_without_the_hook_gets_no_pca_gradient_then_with_it():
    """The control for the test above: train_step without the hook leaves W unchanged (and the
    block warns); `add_auxiliary_losses`, what the hook calls, is idempotent and pickles."""
    pytest.importorskip('mmseg')
    from mmengine.dataset import pseudo_collate
    from mmengine.optim import OptimWrapper
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    model = MODELS.build(dict(
        type='EncoderDecoder', data_preprocessor=dict(type='SegDataPreProcessor', mean=[0.] * 3, std=[255.] * 3, size=(32, 32)),
        backbone=dict(type='ResNetV1c', depth=50, stem_channels=8, base_channels=4, out_indices=(3,),
                      strides=(1, 2, 1, 1), dilations=(1, 1, 2, 4),
                      plugins=[dict(cfg=dict(type='PyramidAttention'), stages=(False, False, False, True),
                                    position='after_conv3')], norm_cfg=dict(type='BN')),
        decode_head=dict(type='FCNHead', in_channels=128, in_index=0, channels=8, num_convs=1, num_classes=3,
                         norm_cfg=dict(type='BN'))))
    blocks = [mod for mod in model.modules() if isinstance(mod, m.PyramidAttention)]
    before = [b.components.detach().clone() for b in blocks]
    optim = OptimWrapper(torch.optim.SGD(model.parameters(), lr=1.0))
    log = model.train_step(pseudo_collate(_seg_batch()), optim)
    assert all(torch.equal(b.components, w) for b, w in zip(blocks, before)) and 'plugins.loss_pca' not in log
    with pytest.warns(UserWarning, match='never collected'):
        model.train_step(pseudo_collate(_seg_batch()), optim)
    from attn_plugins.integrations.mmengine import AuxiliaryLossParser, add_auxiliary_losses
    add_auxiliary_losses(add_auxiliary_losses(model))
    assert isinstance(model.parse_losses, AuxiliaryLossParser) and model.parse_losses.model is model   # idempotent
    log = model.train_step(pseudo_collate(_seg_batch()), optim)
    assert log['plugins.loss_pca'] > 0
    clone = pickle.loads(pickle.dumps(model))
    assert clone.parse_losses.model is clone


def test_pyramid_attention_head_adds_its_loss_once():
    pytest.importorskip('mmseg')
    from mmengine.registry import init_default_scope
    from mmseg.registry import MODELS
    init_default_scope('mmseg')
    head = MODELS.build(dict(type='PyramidAttentionHead', in_channels=[8, 16], in_index=[0, 1], channels=8,
                             fuse_channels=8, num_components=2, pca_loss_weight=0.3, num_classes=3,
                             norm_cfg=dict(type='BN'))).train()
    inputs = [torch.randn(2, 8, 8, 8), torch.randn(2, 16, 4, 4)]
    samples = [s['data_samples'] for s in _seg_batch(size=8)]
    losses = head.loss(inputs, samples, train_cfg={})
    torch.testing.assert_close(losses['loss_pca'], 0.3 * head.pyramid.pca_loss)
    features = [p for conv in (head.in_conv, *head.pyramid.reduce) for p in conv.parameters()]
    grads = torch.autograd.grad(losses['loss_pca'], features, retain_graph=True, allow_unused=True)
    assert all(g is None or not g.any() for g in grads), 'the PCA loss does not train the features'
    assert auxiliary_losses(head) == {}, 'a hook collecting after the head adds nothing more'
    sum(v for k, v in losses.items() if 'loss' in k).backward()
    assert head.pyramid.components.grad.abs().sum() > 0


def test_build_runner_adds_the_hook(tmp_path):
    pytest.importorskip('mmseg')
    import os
    from attn_plugins.integrations.mmengine import AuxiliaryLossHook
    from attn_plugins.runner import build_runner
    config = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'seg', 'toy',
                          'pyramid_attention_r50-d8_toy.yaml')
    runner = build_runner(config, work_dir=str(tmp_path), cfg_options=['log_level=WARNING'])
    assert sum(isinstance(h, AuxiliaryLossHook) for h in runner.hooks) == 1
