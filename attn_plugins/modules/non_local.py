"""Non-local block (Wang et al., "Non-local Neural Networks", CVPR 2018).

    y_i = 1/C(x) Σ_j f(x_i, x_j) g(x_j),    z = BN(W_z y) + x

θ, φ, g are 1x1 convs to C/2 channels. f and C(x) by mode:
    gaussian            softmax_j(x_iᵀ x_j)            (no θ/φ convs)
    embedded_gaussian   softmax_j(θ_iᵀ φ_j)
    dot_product         θ_iᵀ φ_j / N
    concatenation       ReLU(wᵀ[θ_i; φ_j]) / N
`use_scale` divides embedded-gaussian energies by √(C/2), as the authors' code and mmcv
do (the plain gaussian is never scaled, as in the paper and mmcv). The BN
after W_z starts with γ = 0, so a new block is exactly the identity. `sub_sample` max-pools
the φ and g paths (2 in 1D, 2x2 in 2D, 1x2x2 in 3D).

Memory: no mode materialises the N x N map unless `record_attention` is set. Softmax modes
run in query chunks; dot_product uses associativity, θ (φᵀ g) / N, which is O(N·C²);
concatenation splits wᵀ[θ_i; φ_j] = a_i + b_j and forms ReLU(a_i + b_j) chunk by chunk.
Under autograd the chunks run in autograd functions that keep no chunk and recompute each
chunk's scores in backward (`_flash`), so training keeps no N x N map either.
"""
from __future__ import annotations

from typing import Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import _helpers
from ._helpers import (records_attention, HostInit, place, DEFAULT_CHUNK_ELEMENTS, attention, check_channels,
                       check_positions)
from ._flash import chunked_concat_attention

MODES = ('gaussian', 'embedded_gaussian', 'dot_product', 'concatenation')
_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_BN = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d, 3: nn.BatchNorm3d}
_POOL_KERNEL = {1: (2,), 2: (2, 2), 3: (1, 2, 2)}


@records_attention
class NonLocal(HostInit, nn.Module):
    """Non-local block for sequences (dim=1), images (dim=2) or videos (dim=3).

    Args:
        channels: input (and output) channels C.
        dim: 1, 2 or 3 spatial dims.
        mode: one of 'gaussian', 'embedded_gaussian' (default), 'dot_product', 'concatenation'.
        reduction: inner width C // reduction (paper: 2).
        inter_channels: explicit inner width.
        use_scale: scale embedded_gaussian energies by inter_channels^-0.5.
        sub_sample: max-pool the φ and g paths.
        norm: BN after W_z (paper: True; its γ starts at 0). Without it W_z starts at 0.
        norm_layer: the norm after W_z instead of BN: a callable taking the channel count, e.g.
            nn.SyncBatchNorm or functools.partial(nn.GroupNorm, 32). Its weight starts at 0 too.
        init_std: std of the θ, φ, g weights at init (authors: 0.01).
        chunk_elements: memory bound (score elements per chunk and sample).
    """

    def __init__(self, channels: int, dim: int = 2, mode: str = 'embedded_gaussian', reduction: int = 2,
                 inter_channels: int | None = None, use_scale: bool = True, sub_sample: bool = False,
                 norm: bool = True, norm_layer=None, init_std: float = 0.01, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS, device=None, dtype=None):
        super().__init__()
        if mode not in MODES:
            raise ValueError(f"mode: expected one of {MODES}, got {mode!r}")
        if dim not in _CONV:
            raise ValueError(f"dim: expected 1, 2 or 3, got {dim!r}")
        conv = _CONV[dim]
        self.channels, self.dim, self.mode = channels, dim, mode
        self.inter_channels = _helpers.inner_width(channels, reduction, inter_channels, 'inter_channels')
        self.use_scale, self.sub_sample = use_scale, sub_sample
        self.chunk_elements = chunk_elements
        self.pool_kernel = list(_POOL_KERNEL[dim])
        self.g = conv(channels, self.inter_channels, 1)
        # a layer a mode does not use is None (TorchScript compiles only the branches it needs)
        self.theta = conv(channels, self.inter_channels, 1) if mode != 'gaussian' else None
        self.phi = conv(channels, self.inter_channels, 1) if mode != 'gaussian' else None
        self.concat_project = (nn.Conv2d(2 * self.inter_channels, 1, 1, bias=False)
                               if mode == 'concatenation' else None)
        self.out_conv = conv(self.inter_channels, channels, 1, bias=not norm)
        if norm_layer is not None and not (norm and callable(norm_layer)):
            raise ValueError(f"norm_layer: expected a callable building the norm from the channel count "
                             f"(with norm=True), got {norm_layer!r} with norm={norm!r}")
        self.out_norm = (norm_layer or _BN[dim])(channels) if norm else nn.Identity()
        self.record_attention = False
        self.attention_map: torch.Tensor | None = None
        self.init_std = init_std
        self._init_parameters(defaults_fresh=True)
        place(self, device, dtype)

    def reset_parameters(self) -> None:
        """The authors' init: θ, φ, g weights ~ N(0, init_std²), zero biases; the norm after W_z
        (W_z itself without an affine norm) starts at 0, so a new block is the identity; the other
        convs get PyTorch's default."""
        self._init_parameters(defaults_fresh=False)

    def _init_parameters(self, defaults_fresh: bool) -> None:
        for conv in (self.g, self.theta, self.phi):
            if conv is not None:
                nn.init.normal_(conv.weight, std=self.init_std)
                nn.init.zeros_(conv.bias)
        if not defaults_fresh:      # in the constructor they have PyTorch's default already (no second draw)
            for layer in (self.concat_project, self.out_conv, self.out_norm):
                if hasattr(layer, 'reset_parameters'):
                    layer.reset_parameters()
        zero = self.out_norm if getattr(self.out_norm, 'weight', None) is not None else self.out_conv
        nn.init.zeros_(zero.weight)
        if zero.bias is not None:
            nn.init.zeros_(zero.bias)

    def pool(self, x: torch.Tensor) -> torch.Tensor:
        """Max-pool sub-sampling of the φ/g paths; the kernel shrinks on dims smaller than it."""
        if not self.sub_sample:
            return x
        kernel = [min(k, s) for k, s in zip(self.pool_kernel, x.shape[2:])]
        if self.dim == 1:
            return F.max_pool1d(x, kernel, kernel)
        if self.dim == 2:
            return F.max_pool2d(x, kernel, kernel)
        return F.max_pool3d(x, kernel, kernel)

    def _pairwise(self, x: torch.Tensor):
        """Query features (B, N, ·) and key features (B, ·, Nk) of the pairwise function."""
        if self.theta is None or self.phi is None:     # gaussian: the input itself
            return x.flatten(2).transpose(1, 2), self.pool(x).flatten(2)
        return self.theta(x).flatten(2).transpose(1, 2), self.pool(self.phi(x)).flatten(2)

    def _softmax_scale(self, query: torch.Tensor) -> float:
        return query.shape[-1] ** -0.5 if self.use_scale and self.mode == 'embedded_gaussian' else 1.0

    def _concat_terms(self, query: torch.Tensor, key: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """wᵀ[θ_i; φ_j] = a_i + b_j: a (B, N) from the θ half of w, b (B, Nk) from the φ half."""
        if self.concat_project is None:
            raise RuntimeError("NonLocal: only mode 'concatenation' has concatenation terms")
        else:
            weight = self.concat_project.weight.flatten()
            a = query @ weight[:self.inter_channels]
            b = torch.einsum('bck,c->bk', key, weight[self.inter_channels:])
            return a, b

    def _dense_weights(self, query: torch.Tensor, key: torch.Tensor) -> torch.Tensor:
        """f(x_i, x_j) / C(x) of the dot_product and concatenation modes, (B, N, Nk)."""
        if self.mode == 'concatenation':
            a, b = self._concat_terms(query, key)
            return torch.relu(a[:, :, None] + b[:, None, :]) / key.shape[-1]
        return torch.bmm(query, key) / key.shape[-1]

    @staticmethod
    def input_rank(dim: int) -> int:
        """Dims of the input maps, (B, C, *spatial) with `dim` spatial dims: what forward checks and
        `inject` requires."""
        return dim + 2

    def _features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Query (B, N, ·), key (B, ·, Nk) and value (B, Ci, Nk): θ, φ and g as one product of x
        (`pointwise_convs`), φ and g max-pooled with `sub_sample`; the convs themselves where
        hooked or replaced (`fusable_convs`)."""
        if self.theta is None or self.phi is None:     # gaussian: the input itself is query and key
            query, key = self._pairwise(x)
            return query, key, self.pool(self.g(x)).flatten(2)
        if not torch.jit.is_scripting():
            if not _helpers.fusable_convs(self.theta, self.phi, self.g):
                query, key = self._pairwise(x)
                return query, key, self.pool(self.g(x)).flatten(2)
        inner = self.inter_channels
        features = _helpers.pointwise_convs(x, [self.theta.weight, self.phi.weight, self.g.weight],
                                            [self.theta.bias, self.phi.bias, self.g.bias])
        # split, not slices: backward concatenates the three gradients in one pass (each slice's
        # backward zero-filled a gradient of the whole product, and the three were then summed)
        query, key_value = features.split([inner, 2 * inner], dim=1)
        if self.sub_sample:
            key_value = self.pool(key_value.unflatten(2, x.shape[2:])).flatten(2)
        key, value = key_value.split([inner, inner], dim=1)
        return query.transpose(1, 2), key, value

    def context(self, x: torch.Tensor) -> torch.Tensor:
        """y = 1/C(x) Σ_j f(x_i, x_j) g(x_j), shaped (B, inter_channels, *spatial)."""
        check_channels('NonLocal', x, self.channels, min_dim=self.input_rank(self.dim))
        check_positions('NonLocal', x)
        query, key, value = self._features(x)                           # value: B, Ci, Nk
        if self.mode == 'gaussian' or self.mode == 'embedded_gaussian':
            y, attn = attention(query, key, value, self._softmax_scale(query), self.chunk_elements,
                                self.record_attention)
            if attn is not None:
                self.attention_map = attn
        elif self.record_attention:
            weights = self._dense_weights(query, key)
            self.attention_map = weights.detach()
            y = torch.bmm(value, weights.transpose(1, 2))
        elif self.mode == 'dot_product':
            # yᵀ = (gᵀ φᵀ) θᵀ / N: O(N·C²), the N x N map never exists
            y = torch.bmm(torch.bmm(value, key.transpose(1, 2)), query.transpose(1, 2)) / key.shape[-1]
        else:
            y = self._concat_context(query, key, value)
        return y.unflatten(2, x.shape[2:])                               # y is (B, Ci, N)

    def _concat_context(self, query, key, value):
        num_queries, num_keys = query.shape[1], key.shape[-1]
        if _helpers.use_dense(num_queries, num_keys):
            return torch.bmm(value, self._dense_weights(query, key).transpose(1, 2))
        a, b = self._concat_terms(query, key)
        chunk = _helpers.chunk_rows(num_queries, self.chunk_elements // num_keys)
        if torch.jit.is_scripting():   # TorchScript cannot script an autograd.Function: chunks only
            pieces = [_concat_chunk(a[:, s:s + chunk], b, value) for s in range(0, num_queries, chunk)]
        elif torch.is_grad_enabled() and (a.requires_grad or b.requires_grad or value.requires_grad):
            # as the softmax modes: each chunk's (Nk x chunk) map is recomputed in backward, not saved
            rows = _helpers.chunk_rows(num_queries, min(self.chunk_elements, _helpers.FLASH_CHUNK_ELEMENTS) // num_keys)
            return chunked_concat_attention(a, b, value, rows) / num_keys
        else:
            pieces = [_concat_chunk(a[:, s:s + chunk], b, value) for s in range(0, num_queries, chunk)]
        return torch.cat(pieces, dim=2) / num_keys

    @torch.jit.unused
    def query_attention(self, x: torch.Tensor, queries: torch.Tensor) -> torch.Tensor:
        """f(x_q, x_j) / C(x) for the flat input positions `queries` over all key positions j
        (sub-sampled with `sub_sample`: the grid of `self.pool(x)`): (B, Q, Nk), computed for those
        queries only (O(Q·Nk) memory, for pictures). Positions are row-major over the spatial
        dims: for dim=3, query t·H·W + y·W + x, and a row reshaped to the key grid (T, H', W') is
        that query's attention across the frames (sub_sample pools 1x2x2: every frame is kept)."""
        check_channels('NonLocal', x, self.channels, min_dim=self.input_rank(self.dim))
        check_positions('NonLocal', x)
        query, key = self._pairwise(x)
        query = query[:, queries]
        if self.mode == 'gaussian' or self.mode == 'embedded_gaussian':
            return torch.softmax(self._softmax_scale(query) * torch.bmm(query, key), dim=-1)
        return self._dense_weights(query, key)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.context(x)
        if not torch.jit.is_scripting():
            if not _helpers.fusable_convs(self.out_conv):       # hooked, pruned or replaced: called
                return x + self.out_norm(self.out_conv(y))
        # W_z as a product (`pointwise_convs`): forward + backward of 256 -> 512 channels on 2x64x128
        # positions, bf16 autocast, 2 threads: 54 ms against 82 ms as a 1x1 convolution
        z = _helpers.pointwise_convs(y, [self.out_conv.weight], [self.out_conv.bias])
        return x + self.out_norm(z.view(z.shape[:2] + y.shape[2:]))


def _concat_chunk(a: torch.Tensor, b: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """Σ_j ReLU(a_i + b_j) g_j for the queries of one chunk: a (B, n), b (B, Nk), value (B, Ci, Nk) -> (B, Ci, n)."""
    return torch.bmm(value, torch.relu(b[:, :, None] + a[:, None, :]))
