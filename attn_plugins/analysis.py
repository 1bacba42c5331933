"""What attention blocks cost: parameters and FLOPs of a model and of each block in it.

FLOPs are counted at the ATen level (a `TorchDispatchMode` sees every operator a forward runs,
whatever the model), so nothing a block computes is free:

    macs   multiply-adds of convolutions and matrix products (convolution, mm, addmm, bmm,
           baddbmm, mv, addmv, dot; matmul, linear and einsum arrive as these), one per multiply-add: the
           numbers mmengine.analysis gives for those operators
    other  the operators mmengine.analysis skips or counts elsewhere, one per element:
           element-wise arithmetic and activations (add, mul, div, sigmoid, relu, exp, ...) one
           per output element (addcmul, addcdiv 2: product and sum; lerp 3: difference, product,
           sum); reductions (mean, sum, amax, ...) one per input element (norm 2: the powers and
           their sum; var, std 4: the mean, the deviations, their squares and their sum);
           softmax 5 per element (max, subtract, exp, sum, divide); norms as mmengine counts
           them (batch norm 2 per element in eval with affine, 5 when training; group/layer
           norm 5); bilinear resize 4 per output element, nearest 1; pools one per window
           element of each output
    flops  macs + other

Operators that move data only (views, copies, cat, indexing, creation) are free; any other
operator not in the tables is listed in `OpCount.uncounted` rather than guessed at.
Attribution: forward hooks on each attention block put the operators run inside it on its
account, so a block's count includes its gating multiply and residual add.
`attention_blocks(model)` finds the blocks: instances of the registered block classes and of the
peers' attention layers (mmcv, timm, mmseg; `PEER_BLOCKS`).
"""
from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
import torch.nn as nn
from torch.utils._python_dispatch import TorchDispatchMode

from .registry import BLOCKS

SOFTMAX_FLOPS_PER_ELEMENT = 5          # max, subtract, exp, sum, divide

_MATMUL = {'mm', 'addmm', 'bmm', 'baddbmm'}
_MATVEC = {'mv', 'addmv', 'dot', 'vdot'}
_ELEMENTWISE = {
    'add', 'sub', 'rsub', 'mul', 'div', 'neg', 'reciprocal', 'pow', 'sqrt', 'rsqrt', 'exp', 'log', 'abs',
    'relu', 'relu6', 'sigmoid', 'hardsigmoid', 'tanh', 'hardtanh', 'gelu', 'silu', 'hardswish', 'mish',
    'leaky_relu', 'elu', 'softplus', 'clamp', 'clamp_min', 'clamp_max', 'threshold', 'square', 'addcmul',
    'addcdiv', 'lerp', 'where', 'erf', 'log2', 'log10', 'log1p', 'expm1', 'sin', 'cos', 'floor_divide', 'remainder', 'maximum', 'minimum'}
_REDUCTIONS = {'sum', 'mean', 'amax', 'amin', 'max', 'min', 'var', 'std', 'var_mean', 'std_mean', 'prod',
               'logsumexp', 'norm', 'linalg_vector_norm', 'cumsum', 'argmax', 'argmin'}
# element-wise ops and reductions that are several ops per element (the rest are one)
_OPS_PER_ELEMENT = {'addcmul': 2, 'addcdiv': 2, 'lerp': 3, 'norm': 2, 'linalg_vector_norm': 2,
                    'var': 4, 'std': 4, 'var_mean': 4, 'std_mean': 4}
_SOFTMAX = {'_softmax', '_log_softmax', 'softmax', 'log_softmax'}
# F.scaled_dot_product_attention's fused kernels, (B, H, N, C) inputs: counted as the formula they
# compute (scale, Q Kᵀ, softmax, P V), what the same attention costs on our chunked path
_FUSED_ATTENTION = {'_scaled_dot_product_flash_attention_for_cpu', '_scaled_dot_product_flash_attention',
                    '_scaled_dot_product_efficient_attention', '_scaled_dot_product_cudnn_attention'}
_BATCH_NORM = {'native_batch_norm', '_native_batch_norm_legit', '_native_batch_norm_legit_no_training',
               '_batch_norm_with_update', '_batch_norm_no_update', 'batch_norm'}
_NORMS = {'native_group_norm', 'native_layer_norm', 'group_norm', 'layer_norm', 'instance_norm'}
_POOLS = {'max_pool1d', 'max_pool2d', 'max_pool3d', 'max_pool2d_with_indices', 'max_pool3d_with_indices',
          'avg_pool1d', 'avg_pool2d', 'avg_pool3d'}
_ADAPTIVE_POOLS = {'_adaptive_avg_pool2d', '_adaptive_avg_pool3d', 'adaptive_max_pool2d', 'adaptive_max_pool3d',
                   'adaptive_avg_pool1d', 'adaptive_max_pool1d'}
_RESIZE = {'upsample_bilinear2d': 4, 'upsample_trilinear3d': 8, 'upsample_bicubic2d': 16,
           'upsample_nearest1d': 1, 'upsample_nearest2d': 1, 'upsample_nearest3d': 1, 'upsample_linear1d': 2,
           '_upsample_bilinear2d_aa': 4, 'grid_sampler_2d': 4, 'grid_sampler_3d': 8, 'grid_sampler': 4}
_FREE = {
    'view', '_unsafe_view', 'reshape', 'permute', 'transpose', 't', 'expand', 'squeeze', 'unsqueeze', 'slice',
    'select', 'cat', 'stack', 'copy', 'clone', 'contiguous', 'detach', 'alias', 'empty', 'empty_like',
    'empty_strided', 'zeros', 'zeros_like', 'ones', 'ones_like', 'full', 'full_like', 'fill',
    'arange', 'as_strided', 'split', 'split_with_sizes', 'unbind', 'chunk', 'index_select', 'index', 'gather',
    'scatter', 'index_put', 'new_empty', 'new_zeros', 'new_ones', 'new_full', '_to_copy',
    'lift_fresh', 'masked_fill', 'constant_pad_nd', 'flip', 'roll', 'eq', 'ne', 'lt', 'le',
    'gt', 'ge', 'logical_and', 'logical_or', 'logical_not', 'bitwise_and', 'bitwise_or', 'bitwise_not', 'unfold',
    'pixel_shuffle', 'pixel_unshuffle', 'repeat', 'tile', 'diagonal', 'tril', 'triu', 'eye', 'randperm',
    'rand', 'randn', 'native_dropout', 'dropout', 
    'item', '_local_scalar_dense', 'sort', 'topk', 'nonzero', 'unique', '_unique2', 'sym_size', 'sym_stride',
    'sym_numel', 'is_nonzero', 'any', 'all', 'isnan', 'isinf', 'sign', 'floor', 'ceil', 'round', 'trunc',
    'to', 'narrow', 'split_copy', 'view_as_real', 'view_as_complex', 'col2im', 'im2col', 'mean_backward',
    'unflatten', 'flatten', 'expand_as', 'movedim', 'unsafe_split', 'unsafe_chunk', 'linspace',
    'bucketize', 'searchsorted', 'masked_select', 'one_hot', 'embedding', 'zero', 'normal', 'uniform', 'bernoulli', 'set',
    'resize', 'exponential', 'random', 'lift_fresh_copy', 'scalar_tensor', 'stride', 'size', 'numel', 'dim',
    'promote_types', 'result_type'}


def _numel(value) -> int:
    return value.numel() if isinstance(value, torch.Tensor) else 0


def _first_tensor(value):
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, (list, tuple)):
        for item in value:
            found = _first_tensor(item)
            if found is not None:
                return found
    return None


def op_cost(name: str, args: tuple, kwargs: dict, out) -> tuple[int, int] | None:
    """(macs, other) of one ATen operator (`name`: its overload packet, trailing '_' of in-place
    variants removed), or None when it is not in the tables (see the module docstring)."""
    result = _first_tensor(out)
    first = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if name == 'convolution':
        x, weight, transposed = args[0], args[1], bool(args[6])
        spatial = (x if transposed else result).shape[2:]
        return x.shape[0] * weight.numel() * math.prod(spatial), 0
    if name in _MATMUL:
        a, b = (args[1], args[2]) if name in ('addmm', 'baddbmm') else (args[0], args[1])
        return math.prod(a.shape) * b.shape[-1], 0
    if name in _MATVEC:                     # matrix x vector, vector . vector: one multiply-add per matrix element
        return math.prod((args[1] if name == 'addmv' else args[0]).shape), 0
    if name in _ELEMENTWISE:
        return 0, (_numel(result) or _numel(first)) * _OPS_PER_ELEMENT.get(name, 1)
    if name in _REDUCTIONS:
        return 0, _numel(first) * _OPS_PER_ELEMENT.get(name, 1)
    if name in _SOFTMAX:
        return 0, SOFTMAX_FLOPS_PER_ELEMENT * _numel(first)
    if name in _FUSED_ATTENTION:
        query, key, value = args[:3]
        scores = math.prod(query.shape[:-1]) * key.shape[-2]
        scale = kwargs.get('scale')
        scaling = 0 if scale == 1.0 else query.numel()           # None: the default 1 / sqrt(C)
        return scores * (query.shape[-1] + value.shape[-1]), SOFTMAX_FLOPS_PER_ELEMENT * scores + scaling
    if name in _BATCH_NORM:
        affine = len(args) > 1 and isinstance(args[1], torch.Tensor)
        training = name in ('_batch_norm_with_update',) or (
            name in ('native_batch_norm', '_native_batch_norm_legit') and len(args) > 5 and bool(args[5]))
        if name == '_native_batch_norm_legit' and len(args) == 7:     # the no-stats overload
            training = bool(args[3])
        return 0, _numel(first) * ((5 if affine else 4) if training else (2 if affine else 1))
    if name in _NORMS:
        affine = len(args) > 1 and any(isinstance(a, torch.Tensor) for a in args[1:3])
        return 0, _numel(first) * (5 if affine else 4)
    if name in _POOLS:
        kernel = args[1] if len(args) > 1 else kwargs.get('kernel_size')
        kernel = [kernel] if isinstance(kernel, int) else list(kernel)
        return 0, _numel(result) * math.prod(kernel)
    if name in _ADAPTIVE_POOLS:
        return 0, _numel(first)
    if name in _RESIZE:
        return 0, _RESIZE[name] * _numel(result)
    if name in _FREE:
        return 0, 0
    return None


@dataclass
class OpCount:
    """FLOPs of one forward: the whole model (`total`) and per attention block (`blocks`, keyed by
    module path), each a Counter with 'macs' and 'other'; `calls` per block; operators not in the
    tables in `uncounted` (name -> calls), those of them run inside a block in `uncounted_in_blocks`;
    `input_channels` per block: dim 1 of its first input on its first call, where that input is a
    4-D or 5-D tensor (a feature map: N, C, H, W or N, C, T, H, W)."""
    total: Counter = field(default_factory=Counter)
    blocks: dict = field(default_factory=dict)
    calls: Counter = field(default_factory=Counter)
    uncounted: Counter = field(default_factory=Counter)
    uncounted_in_blocks: Counter = field(default_factory=Counter)
    input_channels: dict = field(default_factory=dict)


class _Counter(TorchDispatchMode):
    def __init__(self, count: OpCount):
        super().__init__()
        self.count = count
        self.active: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        name = func.overloadpacket.__name__
        if name.endswith('_') and not name.endswith('__'):      # in-place variant: same cost
            name = name[:-1]
        cost = op_cost(name, args, kwargs, out)
        if cost is None:
            self.count.uncounted[name] += 1
            if self.active:
                self.count.uncounted_in_blocks[name] += 1
            return out
        macs, other = cost
        if macs or other:
            self.count.total.update(macs=macs, other=other)
            for path in set(self.active):
                self.count.blocks[path].update(macs=macs, other=other)
        return out


def count_flops(run: Callable[[], Any], blocks: Iterable[tuple[str, nn.Module]] = ()) -> tuple[OpCount, Any]:
    """Run `run()` (a forward) counting its operators; the operators run inside each of `blocks`
    ((path, module) pairs) are also put on that block's account. Returns (OpCount, run's result)."""
    count = OpCount()
    mode = _Counter(count)
    handles = []
    for path, module in blocks:
        count.blocks[path] = Counter(macs=0, other=0)

        def enter(_module, _args, _path=path):
            mode.active.append(_path)
            count.calls[_path] += 1
            if _path not in count.input_channels and _args and isinstance(_args[0], torch.Tensor) \
                    and _args[0].dim() in (4, 5):
                count.input_channels[_path] = int(_args[0].shape[1])

        def leave(_module, _args, _out, _path=path):
            if _path in mode.active:
                mode.active.reverse()
                mode.active.remove(_path)
                mode.active.reverse()
        handles.append(module.register_forward_pre_hook(enter))
        handles.append(module.register_forward_hook(leave, always_call=True))
    try:
        with torch.no_grad(), mode:
            result = run()
    finally:
        for handle in handles:
            handle.remove()
    return count, result


# Attention blocks of other libraries (the peers of ours), found as blocks too once their module is
# imported: mmcv's plugins (GC block, generalized attention, non-local), timm's attention layers, mmseg's PAM / CAM.
PEER_BLOCKS = (('mmcv.cnn.bricks.context_block', 'ContextBlock'),
               ('mmcv.cnn.bricks.generalized_attention', 'GeneralizedAttention'),
               ('mmcv.cnn.bricks.non_local', '_NonLocalNd'),
               ('timm.layers.squeeze_excite', 'SEModule'), ('timm.layers.squeeze_excite', 'EffectiveSEModule'),
               ('timm.layers.cbam', 'CbamModule'), ('timm.layers.cbam', 'LightCbamModule'),
               ('timm.layers.eca', 'EcaModule'),
               ('timm.models._efficientnet_blocks', 'SqueezeExcite'),     # EfficientNet / MobileNetV3 SE
               ('mmseg.models.decode_heads.da_head', 'PAM'), ('mmseg.models.decode_heads.da_head', 'CAM'))


def block_classes(peers: bool = True) -> tuple[type, ...]:
    """The registered block classes (their OpenMMLab subclasses are instances of these too) and,
    with `peers`, the PEER_BLOCKS classes of libraries already imported."""
    import sys
    classes = list(BLOCKS.values())
    for module_name, name in PEER_BLOCKS if peers else ():
        cls = getattr(sys.modules.get(module_name), name, None)
        if isinstance(cls, type):
            classes.append(cls)
    return tuple(classes)


def block_channels(block: nn.Module, probed: int | None = None) -> int | None:
    """The input channels of a block: `probed` (the channels of the map it took in a forward,
    `OpCount.input_channels`: a declared width can be an inner one, mmseg PAM's `channels` is its
    query/key width, timm's EcaModule declares none and its first layer is a 1-channel Conv1d),
    else its `channels` or `in_channels`, else its first layer's."""
    if probed is not None:
        return probed
    for attr in ('channels', 'in_channels'):
        value = getattr(block, attr, None)
        if isinstance(value, int):
            return value
    for module in block.modules():
        value = getattr(module, 'in_channels', None)
        if isinstance(value, int) and module is not block:
            return value
    return None


def attention_blocks(model: nn.Module, outermost: bool = True, peers: bool = True) -> list[tuple[str, nn.Module]]:
    """(path, block) of every attention block in `model` (registered, and with `peers` those of
    PEER_BLOCKS), in model order; with `outermost`, blocks inside another block (DualAttention's
    PAM and CAM) are left out."""
    classes = block_classes(peers)
    found: list[tuple[str, nn.Module]] = []
    for path, module in model.named_modules():
        if not isinstance(module, classes):
            continue
        if outermost and any(path.startswith(p + '.') or p == '' for p, _ in found):
            continue
        found.append((path, module))
    return found


def count_params(module: nn.Module) -> int:
    """Parameters of `module` (each shared tensor once)."""
    return sum(p.numel() for p in {id(p): p for p in module.parameters()}.values())


def flops(counter: Counter) -> int:
    return int(counter.get('macs', 0) + counter.get('other', 0))
