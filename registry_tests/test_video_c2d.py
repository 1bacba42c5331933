"""Why the non-local C2D toy does not learn the motion toy while the I3D toy does (issue 9): in C2D
every kernel is 1x1x1 in time, the non-local blocks (as in the paper) have no temporal position
term, mmaction2's pool2 is a max over frame pairs and the head averages over time, so the network
gives the same scores for a clip played backwards. Backwards, a blob moving right moves left (and
down becomes up): C2D can tell only the axis of the motion (at most 50% on the 4 classes)."""
import os

import pytest
import torch
from mmengine.registry import init_default_scope

from attn_plugins import NonLocal, load_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def toy_recognizer(name):
    init_default_scope('mmaction')
    from mmaction.registry import MODELS
    model = MODELS.build(load_config(os.path.join(ROOT, 'configs', 'video', 'toy', f'{name}_r50_toy.yaml')).model)
    model.init_weights()
    torch.manual_seed(0)
    blocks = [m for m in model.modules() if isinstance(m, NonLocal)]
    assert len(blocks) == 5
    for block in blocks:                       # blocks that act (they start as the identity)
        torch.nn.init.normal_(block.out_norm.weight)
    return model.eval()


@pytest.mark.parametrize('name, reversible', [('nonlocal_c2d', True), ('nonlocal_i3d', False)])
def test_c2d_scores_a_clip_and_its_time_reversal_alike(name, reversible):
    model = toy_recognizer(name)
    clip = torch.rand(2, 3, 8, 32, 32, generator=torch.Generator().manual_seed(1)) * 4 - 2
    with torch.no_grad():
        forward = model.cls_head(model.backbone(clip))
        backward = model.cls_head(model.backbone(clip.flip(2)))
        shuffled = model.cls_head(model.backbone(clip[:, :, [3, 1, 0, 2, 7, 5, 6, 4]]))
    scale = forward.abs().max()
    assert scale > 0.1
    gap = (forward - backward).abs().max() / scale
    if reversible:
        assert gap < 1e-4, gap
        assert (forward - shuffled).abs().max() / scale > 1e-2    # not blind to order: pool2 pairs frames
    else:
        assert gap > 1e-2, gap
