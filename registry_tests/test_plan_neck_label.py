"""`attn-plugins plan` says where an AttentionNeck block runs: on backbone outputs, before the neck."""
import torch.nn as nn

from attn_plugins.plan import _via


def test_plan_labels_attention_neck_blocks_by_the_backbone_outputs_they_read():
    from mmdet.registry import MODELS
    import attn_plugins.integrations.mmdet  # noqa: F401  (registers AttentionNeck)
    # in mmdet's scope whatever an earlier test left as the default scope (a seg plan leaves 'mmseg')
    neck = MODELS.build(dict(_scope_='mmdet', type='AttentionNeck', neck=dict(type='FPN', in_channels=[8, 16, 16], out_channels=8,
                                                             num_outs=3),
                             blocks=[dict(type='SE', in_indices=[0, 2]),
                                     dict(type='PyramidAttention', in_indices=[1, 2], target_index=1)]))
    model = nn.Module()
    model.neck = neck
    assert [_via(model, f'neck.attn_blocks.{i}', {}) for i in range(3)] == [
        'AttentionNeck on backbone output 0, before FPN', 'AttentionNeck on backbone output 2, before FPN',
        'AttentionNeck on backbone outputs [1, 2] -> 2, before FPN']
