"""Parameters and FLOPs of a model, with the attention gates counted.

`mmengine.analysis.FlopAnalyzer` (what `get_model_complexity_info` runs) counts one multiply-add
as one FLOP for convolutions, linear layers and matrix products, plus batch/group/layer norm
(1-2 per element), upsampling and `adaptive_avg_pool2d`. It skips everything else: sigmoid,
softmax, ReLU, the elementwise products and sums that apply a gate, `mean` / `amax` pooling.
Those ops are what an attention block mostly adds next to its tiny MLP, so `complexity()` adds
a count of them, made inside the attention blocks only (the host model's own ReLUs and residual
sums stay uncounted, as in every FLOP table of the papers):

    elementwise op (add, mul, div, sigmoid, relu, exp, ...)   1 per output element
    reduction (mean, sum, amax, max, ...)                     1 per input element
    max / avg pooling with a kernel                           kernel size per output element
    adaptive pooling other than adaptive_avg_pool2d           1 per input element
    softmax, log_softmax                                      5 per element (max, subtract, exp, sum, divide)
    baddbmm / addbmm (matmul plus add; mmengine skips them)   multiply-adds + 1 per output element

The count is made with a `torch.overrides.TorchFunctionMode` switched on by forward hooks of the
attention blocks (ours: every class in `attn_plugins.BLOCKS`; peers: timm `SEModule` /
`CbamModule`, mmseg `PAM` / `CAM`, mmcv `NonLocal1d/2d/3d`), so it sees the same torch-level
calls as mmengine's trace and never counts an op twice: the ops mmengine counts are in
`MMENGINE_COUNTED` and are left to it. An op neither counted nor known to be free (views,
concatenation, ...) is listed under `uncounted` in the result rather than silently dropped.
"""
from __future__ import annotations

import importlib
import math
from collections import Counter

import torch
import torch.nn as nn
from torch.overrides import TorchFunctionMode

# torch-level names of the ops mmengine's FlopAnalyzer counts (trace names aten::_convolution,
# aten::linear, aten::matmul, aten::batch_norm, ...): left to it
MMENGINE_COUNTED = frozenset({
    'conv1d', 'conv2d', 'conv3d', 'conv_transpose1d', 'conv_transpose2d', 'conv_transpose3d', 'convolution',
    'linear', 'matmul', '__matmul__', '__rmatmul__', 'mm', 'bmm', 'addmm', 'einsum',
    'batch_norm', 'group_norm', 'layer_norm', 'instance_norm', 'adaptive_avg_pool2d',
    'interpolate', 'upsample', 'upsample_nearest', 'upsample_bilinear', 'grid_sample'})
ELEMENTWISE = frozenset({
    'add', 'add_', '__add__', '__radd__', '__iadd__', 'sub', 'sub_', '__sub__', '__rsub__', '__isub__', 'rsub',
    'mul', 'mul_', '__mul__', '__rmul__', '__imul__', 'div', 'div_', '__truediv__', '__rtruediv__', '__itruediv__',
    'true_divide', 'sigmoid', 'sigmoid_', 'hardsigmoid', 'relu', 'relu_', 'relu6', 'gelu', 'silu', 'hardswish',
    'hardtanh', 'leaky_relu', 'elu', 'softplus', 'tanh', 'tanh_', 'exp', 'exp_', 'log', 'neg', '__neg__', 'abs',
    'sqrt', 'rsqrt', 'reciprocal', 'pow', '__pow__', 'square', 'clamp', 'clamp_', 'clamp_min', 'clamp_max',
    'maximum', 'minimum', 'threshold', 'where', 'addcmul', 'lerp'})
REDUCTIONS = frozenset({'mean', 'sum', 'amax', 'amin', 'max', 'min', 'logsumexp', 'prod', 'norm', 'var', 'std'})
SOFTMAX = frozenset({'softmax', 'log_softmax', '_softmax'})
SOFTMAX_FLOPS_PER_ELEMENT = 5
KERNEL_POOLS = frozenset({'max_pool1d', 'max_pool2d', 'max_pool3d', 'avg_pool1d', 'avg_pool2d', 'avg_pool3d',
                          'max_pool1d_with_indices', 'max_pool2d_with_indices', 'max_pool3d_with_indices'})
ADAPTIVE_POOLS = frozenset({'adaptive_max_pool1d', 'adaptive_max_pool2d', 'adaptive_max_pool3d',
                            'adaptive_avg_pool1d', 'adaptive_avg_pool3d', 'adaptive_max_pool2d_with_indices'})
MATMUL_ADD = frozenset({'baddbmm', 'addbmm'})
# free: layout, copies, casts, constructors, dropout in eval
FREE = frozenset({
    'view', 'view_as', 'reshape', 'reshape_as', 'flatten', 'unflatten', 'permute', 'transpose', 't', 'contiguous',
    'cat', 'concat', 'stack', 'split', 'chunk', 'narrow', '__getitem__', 'unsqueeze', 'squeeze', 'expand',
    'expand_as', 'clone', 'detach', 'to', 'float', 'half', 'type_as', 'new_zeros', 'new_empty', 'zeros_like',
    'ones_like', 'empty_like', 'size', 'dim', 'numel', '__get__', '__len__', 'unbind', 'select', 'flip', 'roll',
    'pad', 'dropout', 'dropout2d', 'dropout3d', 'movedim', 'repeat', 'tile', 'masked_fill', 'fill_', 'zero_',
    'copy_', 'requires_grad_', 'split_with_sizes', 'contiguous', 'is_contiguous', 'dtype', 'device', 'shape',
    '__format__', '__bool__', 'item', 'tolist', 'softmax_scale', 'chunk'})

# peers' attention modules, counted like ours: (module, class name)
PEER_ATTENTION = (('timm.layers.squeeze_excite', 'SEModule'), ('timm.layers.squeeze_excite', 'EffectiveSEModule'),
                  ('timm.layers.cbam', 'CbamModule'), ('timm.layers.cbam', 'LightCbamModule'),
                  ('mmseg.models.decode_heads.da_head', 'PAM'), ('mmseg.models.decode_heads.da_head', 'CAM'),
                  ('mmcv.cnn.bricks.non_local', 'NonLocal1d'), ('mmcv.cnn.bricks.non_local', 'NonLocal2d'),
                  ('mmcv.cnn.bricks.non_local', 'NonLocal3d'))


def attention_types() -> tuple[type, ...]:
    """Classes whose forward counts as an attention block: ours and the installed peers'."""
    from attn_plugins import BLOCKS
    types = list(BLOCKS.values())
    for module, name in PEER_ATTENTION:
        try:
            types.append(getattr(importlib.import_module(module), name))
        except (ImportError, AttributeError):   # a peer library that is not installed
            pass
    return tuple(types)


def _numel(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, (tuple, list)):
        return sum(_numel(v) for v in value)
    return 0


def _first_tensor(args) -> torch.Tensor | None:
    return next((a for a in args if isinstance(a, torch.Tensor)), None)


def _kernel_size(args, kwargs) -> int:
    kernel = kwargs.get('kernel_size', args[1] if len(args) > 1 else 1)
    return math.prod(kernel) if isinstance(kernel, (tuple, list)) else int(kernel) ** max(args[0].dim() - 2, 1)


def op_flops(name: str, args, kwargs, out) -> int | None:
    """FLOPs of one torch-level call under the conventions above; 0 for free ops and those mmengine
    counts; None for an op this counter does not know."""
    if name in MMENGINE_COUNTED or name in FREE:
        return 0
    if name in ELEMENTWISE:
        return _numel(out) * (2 if name in ('addcmul', 'lerp') else 1)
    if name in REDUCTIONS:
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if name in ('max', 'min') and len(tensors) == 2:      # torch.max(a, b): elementwise
            return _numel(out)
        return _numel(tensors[0]) * (2 if name in ('var', 'std', 'norm') else 1) if tensors else 0
    if name in SOFTMAX:
        return SOFTMAX_FLOPS_PER_ELEMENT * _numel(out)
    if name in KERNEL_POOLS:
        result = out[0] if isinstance(out, tuple) else out
        return _numel(result) * _kernel_size(args, kwargs)
    if name in ADAPTIVE_POOLS:
        return _numel(_first_tensor(args))
    if name in MATMUL_ADD:
        batch1, batch2 = args[1], args[2]
        return batch1.shape[0] * batch1.shape[1] * batch1.shape[2] * batch2.shape[2] + _numel(out)
    return None


class GateFlopCounter(TorchFunctionMode):
    """Counts `op_flops` of the torch calls made while an attention block's forward runs,
    attributed to the outermost block (its module path)."""

    def __init__(self):
        super().__init__()
        self.stack: list[str] = []
        self.by_block: Counter = Counter()
        self.uncounted: Counter = Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.stack:
            name = getattr(func, '__name__', None) or str(func)
            flops = op_flops(name, args, kwargs, out)
            if flops is None:
                if isinstance(out, torch.Tensor) and out.is_floating_point():
                    self.uncounted[name] += 1
            else:
                self.by_block[self.stack[0]] += flops
        return out


def attention_blocks(model: nn.Module) -> dict[str, nn.Module]:
    """Outermost attention blocks of `model` by module path."""
    types, found = attention_types(), {}
    for path, module in model.named_modules():
        if isinstance(module, types) and not any(path.startswith(f'{p}.') for p in found):
            found[path] = module
    return found


def gate_flops(model: nn.Module, inputs: tuple) -> dict:
    """The FLOPs mmengine skips, counted inside each attention block of `model` on `inputs`."""
    counter, handles = GateFlopCounter(), []
    for path, block in attention_blocks(model).items():
        handles.append(block.register_forward_pre_hook(lambda m, a, p=path: counter.stack.append(p)))
        handles.append(block.register_forward_hook(lambda m, a, o: counter.stack.pop() and None))
    try:
        with torch.no_grad(), counter:
            model(*inputs)
    finally:
        for handle in handles:
            handle.remove()
    return dict(total=sum(counter.by_block.values()), by_block=dict(counter.by_block),
                uncounted=dict(counter.uncounted))


MULTIPLY_ADD_OPS = frozenset({'conv', 'linear', 'addmm', 'bmm', 'matmul', 'mm', 'einsum'})


def mmengine_flops(model: nn.Module, inputs: tuple) -> dict:
    """mmengine's FlopAnalyzer (one multiply-add = one FLOP) in one trace: `total`, `by_module`
    (module path -> FLOPs) and `macs` / `macs_by_module`, the multiply-adds of convolutions,
    linear layers and matrix products only (no norms, no pooling): what the papers' GFLOPs count."""
    from mmengine.analysis import FlopAnalyzer
    with torch.no_grad():
        analyzer = FlopAnalyzer(model, inputs)
        analyzer.unsupported_ops_warnings(False)
        analyzer.uncalled_modules_warnings(False)
        analyzer.tracer_warnings('none')
        per_module = analyzer.by_module_and_operator()
    macs_by_module = {path: sum(v for op, v in ops.items() if op in MULTIPLY_ADD_OPS)
                      for path, ops in per_module.items()}
    return dict(total=analyzer.total(), by_module=dict(analyzer.by_module()), macs=macs_by_module.get('', 0),
                macs_by_module=macs_by_module)


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def complexity(model: nn.Module, inputs: tuple) -> dict:
    """Parameters, mmengine FLOPs, gate FLOPs (above) and their sum, per attention block too."""
    model.eval()
    counted = mmengine_flops(model, inputs)
    total, by_module = counted['total'], counted['by_module']
    gates = gate_flops(model, inputs)
    blocks = {path: dict(type=type(block).__name__, params=n_params(block), flops_mmengine=by_module.get(path, 0),
                         flops_gates=gates['by_block'].get(path, 0))
              for path, block in attention_blocks(model).items()}
    return dict(params=n_params(model), flops_mmengine=total, flops_gates=gates['total'],
                flops=total + gates['total'], blocks=blocks, uncounted=gates['uncounted'])
