"""Parameters and FLOPs of a model, with the attention gates counted.

`mmengine.analysis.FlopAnalyzer` (what `get_model_complexity_info` runs) counts one multiply-add
as one FLOP for convolutions, linear layers and matrix products, plus batch/group/layer norm,
upsampling and `adaptive_avg_pool2d`. It skips everything else: sigmoid, softmax, ReLU, the
elementwise products and sums that apply a gate, `mean` / `amax` pooling, `baddbmm`. Those ops are
what an attention block mostly adds next to its tiny MLP, so `complexity()` adds them, counted
inside the attention blocks only (the host model's own ReLUs and residual sums stay uncounted, as
in every FLOP table of the papers).

The counting lives in `attn_plugins.analysis` (one op table, one softmax convention, one list of
the peers' attention classes, shared with `attn-plugins plan`): its ATen-level count of a block
follows mmengine's conventions for the ops mmengine counts, so a block's gate FLOPs are its
`analysis` FLOPs minus mmengine's FLOPs of the same module. That difference also takes in what
mmengine undercounts: a `matmul` of a 2-D matrix by a batch of matrices is counted by mmengine for
one matrix of the batch only (its `matmul_flop_jit`), by `analysis` for all of them. Ops not in analysis' tables, run
inside a block, are listed under `uncounted` rather than silently dropped.
"""
from __future__ import annotations

import torch
import torch.nn as nn

from attn_plugins.analysis import attention_blocks, count_flops, count_params, flops

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
    return count_params(module)


def gate_flops(model: nn.Module, inputs: tuple, counted: dict | None = None) -> dict:
    """The FLOPs mmengine skips, counted inside each attention block of `model` on `inputs`:
    `total`, `by_block` (module path -> FLOPs) and `uncounted` (op -> calls inside the blocks).
    `counted`: `mmengine_flops(model, inputs)` when the caller has it already."""
    counted = counted or mmengine_flops(model, inputs)
    blocks = attention_blocks(model)
    count, _ = count_flops(lambda: model(*inputs), blocks)
    by_block = {}
    for path, block in blocks:
        skipped = flops(count.blocks[path]) - round(counted['by_module'].get(path, 0))   # einsum: float
        if skipped < 0:      # analysis and mmengine disagree on an op both count: a bug, not a gate
            raise RuntimeError(f'{path} ({type(block).__name__}): attn_plugins.analysis counts '
                               f'{flops(count.blocks[path])} FLOPs, fewer than mmengine\'s '
                               f'{counted["by_module"][path]}; their conventions differ on some op')
        by_block[path] = skipped
    return dict(total=sum(by_block.values()), by_block=by_block, uncounted=dict(count.uncounted_in_blocks))


def complexity(model: nn.Module, inputs: tuple) -> dict:
    """Parameters, mmengine FLOPs, gate FLOPs (above) and their sum, per attention block too."""
    model.eval()
    counted = mmengine_flops(model, inputs)
    total, by_module = counted['total'], counted['by_module']
    gates = gate_flops(model, inputs, counted)
    blocks = {path: dict(type=type(block).__name__, params=n_params(block), flops_mmengine=by_module.get(path, 0),
                         flops_gates=gates['by_block'].get(path, 0))
              for path, block in attention_blocks(model)}
    return dict(params=n_params(model), flops_mmengine=total, flops_gates=gates['total'],
                flops=total + gates['total'], blocks=blocks, uncounted=gates['uncounted'])
