"""VGG-att3: VGG-16 with Learn-to-Pay-Attention at layers 7, 10 and 13 (Jetley et al., ICLR 2018).

Layout of the authors' CIFAR model (their Torch code, `3_level_atten_1global`; the same
resolutions as SaoYan/LearnToPayAttention's `AttnVGG_before`), 3x3 conv + BN + ReLU layers:

    conv 1-7    64 64 128 128 256 256 256, no pooling   -> l^1 (256, H,    W)     (32x32 on CIFAR)
    pool, conv 8-10    512                              -> l^2 (512, H/2,  W/2)   (16x16)
    pool, conv 11-13   512                              -> l^3 (512, H/4,  W/4)   (8x8)
    pool, conv 14, pool, conv 15   512                  -> (512, H/16, W/16)
    global max pool, dropout, fc 512 -> 512             -> g

Each PayAttention block gives g^s = Σ_i a_i l^s_i with a = softmax_i ⟨u, l̂^s_i + g⟩ ('pc') or
softmax_i ⟨l̂^s_i, g⟩ ('dp'), l̂ = l (layers 10, 13) or a 1x1 projection of l to g's width
(layer 7, compatibility only, so g^1 stays 256-wide as in the authors' 1280-input classifier).
Every g^s passes BN + ReLU + dropout (p = 0.5 in the authors' code) before the classifier:
'concat' classifies [g^1; g^2; g^3] with one linear layer, 'indep' averages one linear
classifier per g^s (the authors' code sums them: the same ranking, scores 3x smaller here).
Dropout inside the trunk follows the authors' VGG (0.3 after conv 1, 0.4 after the convs that
are not followed by pooling or attention); `conv_dropout=False` removes it.
"""
import torch
import torch.nn as nn

from ..modules.pay_attention import PayAttention

# (output channels, dropout after the layer) per conv layer; 'M' = 2x2 max pooling.
VGG_ATT3_LAYERS = ((64, 0.3), (64, 0.0), (128, 0.4), (128, 0.0), (256, 0.4), (256, 0.4), (256, 0.0), 'M',
                   (512, 0.4), (512, 0.4), (512, 0.0), 'M',
                   (512, 0.4), (512, 0.4), (512, 0.0), 'M',
                   (512, 0.4), 'M', (512, 0.4))
ATTENTION_LAYERS = (7, 10, 13)   # 1-based conv indices whose outputs are attended
BN_EPS = 1e-3                    # the authors' SpatialBatchNormalization(n, 1e-3)
GLOBAL_POOLS = ('attention', '')


def scaled_width(width: int, multiplier: float) -> int:
    if not isinstance(multiplier, (int, float)) or isinstance(multiplier, bool) or multiplier <= 0:
        raise ValueError(f"width_multiplier: expected a positive number, got {multiplier!r}")
    return max(1, round(width * multiplier))


class PayAttentionVGG(nn.Module):
    """VGG-att3 from the paper (CIFAR-100 defaults: 100 classes, 32x32 inputs).

    Args:
        num_classes: classifier outputs (0: no classifier, forward returns the pre-logits).
        in_chans: input channels.
        aggregation: 'concat' or 'indep'.
        compatibility: 'pc' or 'dp'.
        normalize: 'softmax' (paper) or 'sigmoid' (public variant).
        global_channels: width of g (paper: 512).
        drop_rate: dropout on each attended vector and before the fc giving g (authors: 0.5).
        conv_dropout: the authors' dropout between the trunk's conv layers.
        width_multiplier: scales every trunk width (paper: 1; e.g. 0.125 for quick CPU runs).
        global_pool: 'attention' (default) or '' (timm's "no pooling": forward returns the
            (B, 1280, 1, 1) descriptor map of `forward_features`, unclassified, as timm's
            models return their unpooled map; the classifier is kept for reset_classifier).

    forward(x) -> logits. forward_attention(x) -> ([g^1, g^2, g^3], [a^1, a^2, a^3]) with the
    attention maps a^s (B, 1, H_s, W_s). timm interface: `forward_features(x)` returns the
    attended vectors [g^1; g^2; g^3] as a (B, num_features, 1, 1) map (attention is this model's
    pooling), `forward_head(f, pre_logits)` applies BN + ReLU + dropout and the classifier;
    `num_features` = 1280, `feature_info` lists the four trunk stages (`stages.0` ... `stages.3`).
    """
    __constants__ = ['split_heads']   # 'indep' heads: TorchScript compiles the branch of the head in use

    def __init__(self, num_classes: int = 100, in_chans: int = 3, aggregation: str = 'concat',
                 compatibility: str = 'pc', normalize: str = 'softmax', global_channels: int = 512,
                 drop_rate: float = 0.5, conv_dropout: bool = True, global_pool: str = 'attention',
                 width_multiplier: float = 1.0, **kwargs):
        super().__init__()
        if aggregation not in ('concat', 'indep'):
            raise ValueError(f"aggregation: expected 'concat' or 'indep', got {aggregation!r}")
        if kwargs:
            raise TypeError(f"PayAttentionVGG: unexpected options {sorted(kwargs)}")
        self.aggregation, self.drop_rate, self.in_chans = aggregation, drop_rate, in_chans
        stages, layers, conv_idx, in_c, reduction, self.feature_info = [], [], 0, in_chans, 1, []
        for spec in VGG_ATT3_LAYERS:
            if spec == 'M':
                if conv_idx in ATTENTION_LAYERS:     # a stage ends at each attended layer
                    stages.append(nn.Sequential(*layers))
                    self.feature_info.append(dict(num_chs=in_c, reduction=reduction, module=f'stages.{len(stages) - 1}'))
                    layers = []
                layers.append(nn.MaxPool2d(2))
                reduction *= 2
                continue
            width, p = scaled_width(spec[0], width_multiplier), spec[1]
            layers += [nn.Conv2d(in_c, width, 3, padding=1), nn.BatchNorm2d(width, eps=BN_EPS), nn.ReLU(inplace=True)]
            if p and conv_dropout:
                layers.append(nn.Dropout(p))
            in_c, conv_idx = width, conv_idx + 1
        stages.append(nn.Sequential(*layers))
        self.feature_info.append(dict(num_chs=in_c, reduction=reduction, module=f'stages.{len(stages) - 1}'))
        self.stages = nn.Sequential(*stages)
        self.local_channels = [info['num_chs'] for info in self.feature_info[:len(ATTENTION_LAYERS)]]
        self.head_bounds = [sum(self.local_channels[:i]) for i in range(len(self.local_channels) + 1)]
        self.global_fc = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(drop_rate),
                                       nn.Linear(in_c, global_channels))
        self.attention = nn.ModuleList(PayAttention(c, global_channels, compatibility, normalize)
                                       for c in self.local_channels)
        self.num_features = self.head_hidden_size = sum(self.local_channels)
        # BN + ReLU + dropout on each g^s; BN is per channel, so one BN over [g^1; g^2; g^3] is
        # exactly one BN per attended vector
        self.head_norm = nn.Sequential(nn.BatchNorm1d(self.num_features), nn.ReLU(inplace=True),
                                       nn.Dropout(drop_rate))
        self.global_pool = 'attention'
        self.reset_classifier(num_classes, global_pool)
        self._init_trunk()

    def _init_trunk(self) -> None:
        """The authors' MSR init of the trunk convs: N(0, 2 / (k·k·C_out)), zero bias."""
        for module in self.stages.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
                nn.init.zeros_(module.bias)

    # ------------------------------------------------------------------ timm interface
    def get_classifier(self) -> nn.Module:
        return self.head

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        if global_pool is not None:
            if global_pool not in GLOBAL_POOLS:
                raise ValueError(f"global_pool: expected 'attention' or '' (no pooling), got {global_pool!r}")
            self.global_pool = global_pool
        self.num_classes = num_classes
        ref = self.head_norm[0].weight   # a new classifier follows the model's device, dtype and mode
        if not num_classes:
            self.head = nn.Identity()
        elif self.aggregation == 'concat':
            self.head = nn.Linear(self.num_features, num_classes, device=ref.device, dtype=ref.dtype)
        else:
            self.head = nn.ModuleList(nn.Linear(c, num_classes, device=ref.device, dtype=ref.dtype)
                                      for c in self.local_channels)
        self.head.train(self.training)
        self.split_heads = isinstance(self.head, nn.ModuleList)
        cfg = dict(getattr(self, 'pretrained_cfg', None) or {
            'input_size': (self.stages[0][0].in_channels, 32, 32), 'pool_size': (1, 1), 'first_conv': 'stages.0.0'})
        cfg.update(num_classes=num_classes,
                   classifier='head' if self.aggregation == 'concat' else tuple(f'head.{i}' for i in range(3)))
        self.pretrained_cfg = self.default_cfg = cfg

    # ------------------------------------------------------------------ forward
    def forward_attention(self, x: torch.Tensor):
        """(attended vectors [g^1, g^2, g^3], attention maps [a^1, a^2, a^3])."""
        locals_ = []
        for stage in self.stages:
            x = stage(x)
            locals_.append(x)
        g = self.global_fc(x)
        vectors, maps = [], []
        for i, attention in enumerate(self.attention):
            vector, attn = attention(locals_[i], g)
            vectors.append(vector)
            maps.append(attn)
        return vectors, maps

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[g^1; g^2; g^3] as a (B, num_features, 1, 1) map."""
        vectors, _ = self.forward_attention(x)
        return torch.cat(vectors, dim=1)[:, :, None, None]

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        if self.global_pool == '':
            return x
        x = self.head_norm(x.flatten(1))
        if pre_logits:
            return x
        if self.split_heads:   # a TorchScript constant: only this head's branch is compiled
            logits = []
            for i, head in enumerate(self.head):   # g^s is x[:, bounds[s]:bounds[s + 1]]
                logits.append(head(x[:, self.head_bounds[i]:self.head_bounds[i + 1]]))
            x = torch.stack(logits).mean(0)
        else:
            x = self.head(x)   # Linear, or Identity without a classifier
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# The paper's baseline "VGG" (its CIFAR-100 top-1 error 30.62): cifar.torch's vgg_bn_drop, which the
# authors' code builds VGG-att3 from. Conv widths with dropout after each; 'M' = 2x2 max pooling (ceil).
VGG_BN_DROP_LAYERS = ((64, 0.3), (64, 0.0), 'M', (128, 0.4), (128, 0.0), 'M',
                      (256, 0.4), (256, 0.4), (256, 0.0), 'M', (512, 0.4), (512, 0.4), (512, 0.0), 'M',
                      (512, 0.4), (512, 0.4), (512, 0.0), 'M')


class VGGBNDrop(nn.Module):
    """VGG-16 with BN and dropout for 32x32 inputs (Zagoruyko's cifar.torch `vgg_bn_drop`): the
    no-attention baseline of Learn to Pay Attention. 13 conv + BN(eps 1e-3) + ReLU layers, five
    poolings to 1x1, then dropout 0.5, fc 512 -> 512, BN, ReLU, dropout 0.5, fc -> classes. MSR init.

    Args: num_classes (0: forward returns the 512-d pre-logits), in_chans, drop_rate (0.5),
    conv_dropout (the dropout between convs), width_multiplier (scales every width, paper: 1).
    timm-style `forward_features` -> (B, C, 1, 1) map, `forward_head(x, pre_logits)`, `num_features`.
    """

    def __init__(self, num_classes: int = 100, in_chans: int = 3, drop_rate: float = 0.5,
                 conv_dropout: bool = True, width_multiplier: float = 1.0):
        super().__init__()
        layers, in_c = [], in_chans
        for spec in VGG_BN_DROP_LAYERS:
            if spec == 'M':
                layers.append(nn.MaxPool2d(2, ceil_mode=True))
                continue
            width, p = scaled_width(spec[0], width_multiplier), spec[1]
            layers += [nn.Conv2d(in_c, width, 3, padding=1), nn.BatchNorm2d(width, eps=BN_EPS), nn.ReLU(inplace=True)]
            if p and conv_dropout:
                layers.append(nn.Dropout(p))
            in_c = width
        self.features = nn.Sequential(*layers)
        self.num_features = self.head_hidden_size = in_c
        self.pre_logits = nn.Sequential(nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(drop_rate),
                                        nn.Linear(in_c, in_c), nn.BatchNorm1d(in_c), nn.ReLU(inplace=True),
                                        nn.Dropout(drop_rate))
        self.num_classes = num_classes
        self.head = nn.Linear(in_c, num_classes) if num_classes else nn.Identity()
        for module in self.features.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode='fan_out', nonlinearity='relu')
                nn.init.zeros_(module.bias)

    def get_classifier(self) -> nn.Module:
        return self.head

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.pre_logits(x)
        return x if pre_logits else self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))
