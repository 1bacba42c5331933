"""Learn to Pay Attention (Jetley et al., ICLR 2018): VGG-att3 as in the authors' code."""
import pytest
import torch
import torch.nn as nn

from attn_plugins.models import PayAttentionVGG

# The authors' CIFAR VGG-att3, written out from their Torch code (conv widths; 'M' = 2x2 max pool):
# conv 1-7 unpooled, attention on conv 7, 10 and 13, two more convs for the global feature.
PAPER_CONVS = [64, 64, 128, 128, 256, 256, 256, 'M', 512, 512, 512, 'M', 512, 512, 512, 'M', 512, 'M', 512]


def test_vgg_att3_trunk_matches_the_authors_layout():
    model = PayAttentionVGG()
    layout = []
    for module in model.stages.modules():
        if isinstance(module, nn.Conv2d):
            layout.append(module.out_channels)
        elif isinstance(module, nn.MaxPool2d):
            layout.append('M')
    assert layout == PAPER_CONVS
    assert [info['num_chs'] for info in model.feature_info] == [256, 512, 512, 512]
    assert [info['reduction'] for info in model.feature_info] == [1, 2, 4, 16]


@pytest.mark.parametrize('aggregation,compatibility', [('concat', 'pc'), ('indep', 'dp')])
def test_attended_maps_are_32_16_8_on_cifar_inputs(aggregation, compatibility):
    model = PayAttentionVGG(aggregation=aggregation, compatibility=compatibility).eval()
    x = torch.randn(2, 3, 32, 32)
    vectors, maps = model.forward_attention(x)
    assert [tuple(v.shape) for v in vectors] == [(2, 256), (2, 512), (2, 512)]
    assert [tuple(a.shape) for a in maps] == [(2, 1, 32, 32), (2, 1, 16, 16), (2, 1, 8, 8)]
    torch.testing.assert_close(torch.stack([a.flatten(1).sum(1) for a in maps]), torch.ones(3, 2))
    assert model.forward_head(torch.cat(vectors, 1)[:, :, None, None]).shape == (2, 100)


def n_params(model):
    return sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize('aggregation,compatibility', [('concat', 'pc'), ('concat', 'dp'), ('indep', 'pc')])
def test_parameter_count_from_the_paper_layout(aggregation, compatibility):
    convs, in_c = 0, 3
    for width in (w for w in PAPER_CONVS if w != 'M'):
        convs += 9 * in_c * width + width + 2 * width          # 3x3 conv + bias, BN affine
        in_c = width
    global_fc = 512 * 512 + 512
    projector = 256 * 512                                       # layer 7: 1x1, no bias (l to g's width)
    u = 3 * 512 if compatibility == 'pc' else 0                 # ⟨u, l + g⟩, one u per attended layer
    head_bn = 2 * 1280                                          # BN before the classifier(s)
    classifier = 1280 * 100 + (100 if aggregation == 'concat' else 3 * 100)
    expected = convs + global_fc + projector + u + head_bn + classifier
    model = PayAttentionVGG(aggregation=aggregation, compatibility=compatibility)
    assert n_params(model) == expected


def test_each_attended_vector_gets_bn_relu_dropout_before_the_classifier():
    model = PayAttentionVGG(drop_rate=0.5)
    bn, relu, drop = model.head_norm
    assert isinstance(bn, nn.BatchNorm1d) and isinstance(relu, nn.ReLU) and drop.p == 0.5
    with torch.no_grad():                                       # a BN that visibly does something
        bn.running_mean.uniform_(-1, 1), bn.running_var.uniform_(0.5, 2), bn.weight.uniform_(0.5, 2)
    model.eval()
    x = torch.randn(2, 3, 16, 16)                               # any multiple of 16; small for speed
    vectors, _ = model.forward_attention(x)
    g = torch.cat(vectors, 1)
    normed = torch.relu((g - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps) * bn.weight + bn.bias)
    torch.testing.assert_close(model(x), normed @ model.head.weight.t() + model.head.bias)

    indep = PayAttentionVGG(aggregation='indep').eval()
    vectors, _ = indep.forward_attention(x)
    bn = indep.head_norm[0]
    scores = [torch.relu((v - m) / torch.sqrt(s + bn.eps) * w + b) @ head.weight.t() + head.bias
              for v, m, s, w, b, head in zip(vectors, *(t.split([256, 512, 512]) for t in (
                  bn.running_mean, bn.running_var, bn.weight, bn.bias)), indep.head)]
    torch.testing.assert_close(indep(x), torch.stack(scores).mean(0))


def test_training_step_and_timm_head_interface():
    model = PayAttentionVGG(num_classes=10)
    model.train()
    logits = model(torch.randn(2, 3, 16, 16))
    logits.logsumexp(1).mean().backward()
    assert all(p.grad is not None for p in model.parameters())
    model.eval()
    x = torch.randn(1, 3, 16, 16)
    features = model.forward_features(x)
    assert features.shape == (1, model.num_features, 1, 1) and model.num_features == 1280
    assert model.forward_head(features, pre_logits=True).shape == (1, 1280)
    torch.testing.assert_close(model.forward_head(features), model(x))
    model.reset_classifier(0)
    torch.testing.assert_close(model(x), model.forward_head(features, pre_logits=True))
    assert model.default_cfg['num_classes'] == 0
    model.reset_classifier(0, '')
    assert torch.equal(model.forward_head(features), features)
    with pytest.raises(ValueError, match="global_pool"):
        PayAttentionVGG(global_pool='avg')
