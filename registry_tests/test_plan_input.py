"""`attn-plugins plan`'s default input: the test pipeline's clip or crop comes before InjectAttention's
`example_input` (a probing input), so a full Kinetics config is planned at its test clips
(32 frames, ThreeCrop 256), not at the probe's 8x64x64; a toy config whose pipeline sets no size keeps its example_input."""
import os

import torch.nn as nn

from attn_plugins.config import load_config
from attn_plugins.plan import default_input_shape

VIDEO = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'configs', 'video')


def test_video_configs_planned_at_the_test_clip_not_the_probe():
    full = load_config(os.path.join(VIDEO, 'nonlocal_c2d_r50_8xb8-32x2x1-100e_kinetics400-rawframes.yaml'))
    assert full.model.backbone.example_input == [1, 3, 8, 64, 64]
    assert default_input_shape(full, nn.Identity()) == ((1, 3, 32, 256, 256), 'the test pipeline')
    toy = load_config(os.path.join(VIDEO, 'toy', 'nonlocal_i3d_r50_toy.yaml'))      # frames read at their size
    assert default_input_shape(toy, nn.Identity()) == ((1, 3, 8, 32, 32), 'the example_input in model')
