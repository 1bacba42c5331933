"""A block hooked on the stem norm of an mmdet ResNet (`bn1`, owned by the backbone itself) with
`frozen_stages >= 0`: `_freeze_stages` puts the stem norm in eval and freezes its parameters, the
block's included (it is the norm's child). The backbone, the norm's owner, still trains, so
following the owner alone trained a frozen block (its BN statistics moved, its weights did not)."""
import torch

import attn_plugins


def test_block_in_a_frozen_stem_stays_in_eval_while_a_trainable_one_follows_the_owner():
    from mmdet.models.backbones import ResNet
    spec = [dict(type='CBAM', where='bn1', position='after', reduction=2),
            dict(type='CBAM', where='layer2.0', position='after:bn1', reduction=2)]
    x = torch.randn(2, 3, 32, 32)
    for frozen_stages, stem_trains in ((-1, True), (0, False), (1, False)):
        model = attn_plugins.inject(ResNet(depth=18, base_channels=8, stem_channels=8, norm_eval=True,
                                           frozen_stages=frozen_stages), spec)
        model.train()
        stem, layer2 = model.bn1.attn_cbam, model.layer2[0].bn1.attn_cbam
        stem_mean = stem.spatial_gate.bn.running_mean.clone()
        model(x)
        assert all(p.requires_grad for p in stem.parameters()) == stem_trains
        assert {m.training for m in stem.modules()} == {stem_trains}, frozen_stages
        assert torch.equal(stem.spatial_gate.bn.running_mean, stem_mean) != stem_trains
        assert {m.training for m in layer2.modules()} == {True}          # layer2 is never frozen here
        assert not model.bn1.training and not model.layer2[0].bn1.training
