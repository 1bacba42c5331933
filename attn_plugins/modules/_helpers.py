"""Small helpers shared by the blocks (pure PyTorch)."""
from __future__ import annotations

import numbers
from typing import Callable, List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from ._flash import _compute_dtype, flash_softmax_attention

# Elements of one query chunk's score matrix (chunk x N_keys); 2**24 floats = 64 MiB in fp32.
DEFAULT_CHUNK_ELEMENTS = 1 << 24
# Score elements per sample of one training chunk (at most `chunk_elements`): a training step of
# 8192 x 8192 attention (Ck=16, Cv=128, 1 thread) took 1.7-1.9 s in bf16 with 256-512 query rows
# per chunk and 2.7-2.9 s with 2048 (fp32: 2.6-3.6 s vs 3.0-3.2 s): smaller chunks stay in cache.
FLASH_CHUNK_ELEMENTS = 1 << 22
# Below this many score elements per sample a dense computation is cheaper and still small.
DENSE_LIMIT_ELEMENTS = 1 << 22
# On a CUDA device chunks are at least this big: small chunks are many small kernels there. A
# training step of PAM-shaped attention (Ck=64, Cv=512, B=2) on an H200 (tools/bench_cuda.py), time
# and peak memory vs the dense formula: N=8192 fp32 1.61x / 0.09x with the CPU's 4M-element chunks,
# 1.03x / 0.44x with 64M; N=32768 fp32 3.73x -> 1.10x (memory 0.04x), bf16 2.80x -> 1.01x (0.05x).
CUDA_CHUNK_ELEMENTS = 1 << 26


def make_divisible(value: float, divisor: int = 1, min_value: int | None = None, round_limit: float = 0.9) -> int:
    """Round `value` to a multiple of `divisor` (at least `min_value`), as timm and MobileNet do."""
    min_value = min_value or divisor
    rounded = max(min_value, int(value + divisor / 2) // divisor * divisor)
    if rounded < round_limit * value:
        rounded += divisor
    return rounded


def reduced_channels(channels: int, reduction: float, rd_divisor: int = 1) -> int:
    """Hidden width of a squeeze MLP: C // r as in the authors' code (divisor 1), else rounded to
    a multiple of `rd_divisor` as timm does."""
    if isinstance(reduction, bool) or not isinstance(reduction, numbers.Real) or not reduction > 0:
        raise ValueError(f"reduction: expected > 0, got {reduction!r}")
    if rd_divisor <= 1:
        return max(1, int(channels // reduction))
    return make_divisible(channels / reduction, rd_divisor, round_limit=0.)


def positive_int(value, key: str) -> int:
    """`value` as an int >= 1 (numpy integers too), else a ValueError naming the option `key`."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        raise ValueError(f"{key}: expected a positive int, got {value!r}")
    return int(value)


def inner_width(channels: int, reduction: float, explicit: int | None, explicit_key: str) -> int:
    """The inner width of NonLocal / PAM: `explicit` (an int >= 1) if given, else C // reduction
    (`reduced_channels`), with a clear error for a zero or negative value."""
    if explicit is not None:
        return positive_int(explicit, explicit_key)
    return reduced_channels(channels, reduction)


_GATES: dict[str, Callable[[], nn.Module]] = {
    'sigmoid': nn.Sigmoid, 'hard_sigmoid': nn.Hardsigmoid, 'tanh': nn.Tanh, 'identity': nn.Identity}
_ACTS: dict[str, Callable[[], nn.Module]] = {'relu': nn.ReLU, 'gelu': nn.GELU, 'silu': nn.SiLU, 'identity': nn.Identity}


def _module_from(value, table: dict, key: str) -> nn.Module:
    """A module from a name in `table`, a module class or an instance (None -> Identity)."""
    if value is None:
        return nn.Identity()
    if isinstance(value, nn.Module):
        return value
    if isinstance(value, type) and issubclass(value, nn.Module):
        return value()
    if isinstance(value, str) and value in table:
        return table[value]()
    raise ValueError(f"{key}: expected one of {sorted(table)} or an nn.Module, got {value!r}")


def create_gate(gate: Union[str, nn.Module, type, None]) -> nn.Module:
    """A gate from a name ('sigmoid', 'hard_sigmoid', 'tanh', 'identity'), a module class or instance."""
    return _module_from(gate, _GATES, 'gate')


def create_act(act: Union[str, nn.Module, type, None]) -> nn.Module:
    """An activation from a name ('relu', 'gelu', 'silu', 'identity'), a module class or instance."""
    return _module_from(act, _ACTS, 'act_layer')


def records_attention(cls: type) -> type:
    """Class decorator: declares the block's `attention_map` (the last recorded map, or None) with
    a real type. TorchScript reads class annotations as types, and this package's annotations are
    strings (`from __future__ import annotations`)."""
    cls.__annotations__ = {**cls.__dict__.get('__annotations__', {}), 'attention_map': Optional[torch.Tensor]}
    return cls


def pointwise_convs(x: torch.Tensor, weights: List[torch.Tensor], biases: List[Optional[torch.Tensor]]) -> torch.Tensor:
    """The 1x1 convolutions of x (B, C, *spatial) with `weights` (C_i, C, 1, ...) and `biases` as one
    batched product: (B, Σ C_i, N), N the flattened positions (split it for each conv's output).
    x is read once, and backward gives it one gradient instead of one per conv plus their sum: the
    three projections of NonLocal(512) (256 channels each) on 2x512x64x128, forward + backward,
    2 threads: bf16 autocast 155 ms vs 183 ms as three convs, fp32 270 ms vs 369 ms. mmengine's
    FLOP count sees the same multiply-adds (aten::bmm)."""
    weight = torch.cat([w.flatten(1) for w in weights]) if len(weights) > 1 else weights[0].flatten(1)
    out = torch.bmm(weight.unsqueeze(0).expand(x.shape[0], -1, -1), x.flatten(2))
    if any(b is not None for b in biases):
        parts = [b if b is not None else w.new_zeros(w.shape[0]) for w, b in zip(weights, biases)]
        # bmm's backward does not need out. The bias is expanded over the batch first, so that its
        # gradient sums the positions of each sample (contiguous: 0.8 ms for 2x768x8192 bf16) and
        # then the samples, instead of one sum over dims (0, 2) (18 ms).
        bias = torch.cat(parts).to(out.dtype)
        out = out.add_(bias.view(1, -1, 1).expand(out.shape[0], -1, 1))
    return out


_CONV_FORWARDS = (nn.Conv1d.forward, nn.Conv2d.forward, nn.Conv3d.forward)


def fusable_convs(*convs: nn.Module) -> bool:
    """Whether `pointwise_convs` of the convs' weights computes what calling them would: plain 1x1
    convs (their class's own forward) with no hooks of their own. Otherwise the blocks call them:
    torch.nn.utils.prune and the hook-based weight_norm / spectral_norm recompute the weight in a
    pre-hook (skipped, training failed at its 2nd step), QAT / LoRA replacements have their own
    forward, and module hooks (thop / ptflops FLOP counts, feature extraction) expect the call.
    (Global module hooks, e.g. FlopCounterMode's module tracker, do not count.) Python only."""
    for conv in convs:          # on every forward: tuple comparisons, no generators (2.3 -> 1.1 us)
        if type(conv).forward not in _CONV_FORWARDS:    # first: a replacement (LoRA wrapper) has no kernel_size
            return False
        ones = (1,) * len(conv.kernel_size)
        if (conv._forward_hooks or conv._forward_pre_hooks
                or conv._backward_hooks or conv._backward_pre_hooks or conv.groups != 1
                or tuple(conv.kernel_size) != ones or tuple(conv.stride) != ones
                or (not isinstance(conv.padding, str) and tuple(conv.padding) != (0,) * len(ones))):
            return False
    return True


def check_channels(block: str, x: torch.Tensor, channels: int, min_dim: int = 3) -> None:
    """Raise a clear error when `x` is not (B, channels, *spatial). Skipped while tracing
    (torch.jit.trace, torch.fx); kept in TorchScript."""
    if not torch.jit.is_scripting():
        if torch.jit.is_tracing() or isinstance(x, torch.fx.Proxy):
            return
    if x.dim() < min_dim or x.shape[1] != channels:
        shape = ', '.join([str(size) for size in x.shape])          # the same text eager and scripted
        raise ValueError(f"{block}: expected input of shape (B, {channels}, ...) with at least {min_dim} dims, "
                         f"got ({shape}); set `channels` to the input's channel count")


def check_positions(block: str, x: torch.Tensor) -> None:
    """Raise a clear error when a spatial dim of `x` (B, C, *spatial) is 0: no positions to attend over
    (as `nn.Conv2d`, which refuses such input). Skipped while tracing; kept in TorchScript."""
    if not torch.jit.is_scripting():
        if torch.jit.is_tracing() or isinstance(x, torch.fx.Proxy):
            return
    for size in x.shape[2:]:
        if size == 0:
            shape = ', '.join([str(s) for s in x.shape])
            raise ValueError(f"{block}: expected at least one position (every spatial dim >= 1), got input ({shape})")


def _softmax_chunk(scores: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """value (B, Cv, Nk) @ softmax(scores (B, Nq, Nk))ᵀ -> (B, Cv, Nq)."""
    return torch.bmm(value, torch.softmax(scores, dim=-1).transpose(1, 2))


def _softmax_chunk_inplace(scores: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """No-grad `_softmax_chunk` that reuses the score buffer and normalises the (smaller)
    output instead of the scores: v @ exp(s - max)ᵀ / Σ exp(s - max)."""
    scores.sub_(scores.amax(-1, keepdim=True)).exp_()
    denom = scores.sum(-1).unsqueeze(1)                                  # B, 1, Nq
    return torch.bmm(value, scores.transpose(1, 2)).div_(denom)


def residual_add(x: torch.Tensor, scale: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
    """x + scale * context; in place on `context` when no gradient is recorded (one temp fewer).
    `context` must have x's memory layout, so the result looks exactly like x downstream."""
    if torch.is_grad_enabled() or torch.jit.is_tracing() or context.stride() != x.stride():
        return x + scale * context
    return context.mul_(scale).add_(x)


def use_dense(num_queries: int, num_keys: int) -> bool:
    """Whether a score matrix is small enough (or must be: tracing, ONNX export) to compute whole."""
    if torch.jit.is_scripting():
        dense = num_queries * num_keys <= (1 << 22)   # DENSE_LIMIT_ELEMENTS: TorchScript reads no globals
    else:
        dense = num_queries * num_keys <= DENSE_LIMIT_ELEMENTS or torch.jit.is_tracing() or _exporting()
    return dense


def chunk_rows(num_queries: int, max_rows: int) -> int:
    """Query rows per chunk: at most `max_rows`, chunks of about equal size, a multiple of 32 where
    that fits. The chunk's `value @ probsᵀ` output (Cv x rows) has rows as its row stride, and an
    odd stride made that product slow: at N = 4200 (Faster R-CNN res4 at 800x1333, Cv = 512, fp32,
    1 thread, CPU time) 3994 rows (2**24 // 4200) took 1.4x the time per row of 3992 or 4000, 998
    rows 1.45x that of 992 (registry_tests/test_det_bench.py checks the chunk sizes)."""
    max_rows = max(1, max_rows)
    if num_queries <= max_rows:
        return max(1, num_queries)
    pieces = (num_queries + max_rows - 1) // max_rows
    rows = (num_queries + pieces - 1) // pieces
    aligned = (rows + 31) // 32 * 32
    if aligned <= max_rows:
        return aligned
    return rows // 32 * 32 if rows >= 32 else rows


def softmax_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                      scale: float = 1.0, chunk_elements: int = DEFAULT_CHUNK_ELEMENTS) -> torch.Tensor:
    """out = value @ softmax(scale * query @ key)ᵀ without materialising the full score matrix.

    query (B, Nq, Ck), key (B, Ck, Nk), value (B, Cv, Nk) -> (B, Cv, Nq): channels first, so
    the result reshapes to (B, Cv, *spatial) without a copy. The result equals the dense
    formula: each query row's softmax only needs that row, so queries are processed in chunks
    of `chunk_elements // Nk` rows, bounding the scores to one chunk at a time. Under autograd
    the chunks run in `FlashSoftmaxAttention` (see `_flash`): it saves two statistics per query
    and its backward recomputes each chunk's scores only, so training is memory-bounded as well
    (not in TorchScript, which cannot script an autograd.Function: there training keeps every
    chunk's map).

    Where `F.scaled_dot_product_attention` has a fused kernel for the inputs it runs instead
    (`_fused_cpu_attention`, `_fused_cuda_attention`): on the CPU its flash kernel, for float32
    with Ck == Cv (NonLocal embedded_gaussian; PAM's Ck != Cv has only SDPA's N x N math path), above
    the dense limit, and in inference also where the batch's scores exceed it (SDPA keeps no map). Below
    it the dense formula runs: it is twice differentiable, and on one image no slower (the 'SDPA
    attention R50' rows of `--suite train`, ResNet-50's non-local shapes at 224x224, quiet, 201 rounds:
    SDPA took 1.18x its time at res3's 784 positions (per-round median 1.15x), a tie at res4's 196
    (ratio of medians 1.06x, per-round median 0.87x)). Without a gradient the dense formula keeps one
    score buffer (`_softmax_chunk_inplace`). Above the limit, its
    time / ours (2-core AMD EPYC, torch 2.14, 1 thread, CPU time, interleaved, loaded machine;
    `tools/benchmark.py --suite train --only SDPA` measures it at 2 threads): float32 training step
    0.87-0.97x at B=2, N=8192, C=256 (inference 0.75x at B=1, N=32768), 0.4-0.7x at C=32-64;
    bf16 training 1.5-1.6x at N=8192, C=256 (about 1.0x at N=1024-4096, C=32-64), so 16-bit dtypes
    keep ours. SDPA's kernel needs contiguous (B, 1, N, C) inputs, else it silently takes the math
    path (an earlier measurement here, 1.1-1.6x ours, had probably given it transposed inputs).
    """
    batch, num_queries, _ = query.shape
    num_keys = key.shape[-1]
    needs_grad = torch.is_grad_enabled() and (query.requires_grad or key.requires_grad or value.requires_grad)
    if not torch.jit.is_scripting():
        on_cuda = query.is_cuda
        if not _traced():
            if on_cuda:
                fused = _fused_cuda_attention(query, key, value, scale)
            elif use_dense(num_queries, num_keys) and (needs_grad or batch * num_queries * num_keys <= DENSE_LIMIT_ELEMENTS):
                # the dense formula: twice differentiable (SDPA's CPU backward is not) and faster on one
                # image; a batch's inference keeps at most DENSE_LIMIT_ELEMENTS scores, else SDPA (no map)
                fused = None
            else:
                fused = _fused_cpu_attention(query, key, value, scale)
            if fused is not None:
                return fused
            if on_cuda:
                chunk_elements = max(chunk_elements, CUDA_CHUNK_ELEMENTS)
        if needs_grad and not use_dense(num_queries, num_keys):
            flash_elements = chunk_elements if on_cuda else min(chunk_elements, FLASH_CHUNK_ELEMENTS)
            return flash_softmax_attention(query, key, value, scale, chunk_rows(num_queries, flash_elements // num_keys))
    if scale != 1.0:
        query = query * scale
    if use_dense(num_queries, num_keys):
        if needs_grad or _traced() or num_keys == 0:       # (amax needs a key: softmax gives Nk = 0 zeros)
            return _softmax_chunk(torch.bmm(query, key), value)
        return _softmax_chunk_inplace(torch.bmm(query, key), value)     # one score buffer, not two

    chunk = chunk_rows(num_queries, chunk_elements // num_keys)
    if needs_grad:   # TorchScript only
        pieces = [_dense_block(query[:, s:s + chunk], key, value) for s in range(0, num_queries, chunk)]
        return torch.cat(pieces, dim=2)
    out = value.new_empty(batch, value.shape[1], num_queries)
    for start in range(0, num_queries, chunk):
        stop = min(start + chunk, num_queries)
        out[:, :, start:stop] = _softmax_chunk_inplace(torch.bmm(query[:, start:stop], key), value)
    return out


_NO_FUSED_KERNEL: set = set()


def _fused_cuda_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                          scale: float) -> Optional[torch.Tensor]:
    """On CUDA, `F.scaled_dot_product_attention` restricted to its fused kernels (flash,
    memory-efficient, cuDNN: none keeps an N x N map), or None where none accepts the inputs (then
    ours runs; never SDPA's math fallback, which materialises N x N). Only for Ck == Cv (the
    non-local shapes): an H200 training step of B=2, N=8192, C=64 took 0.67x the dense formula's time
    in fp32 and 0.28x in bf16; with Ck=64, Cv=512 (PAM) its efficient kernel took 1.06x in fp32 but
    6.9x in bf16, against ~1.0x for our chunks (tools/bench_cuda.py)."""
    if key.shape[1] != value.shape[1]:
        return None
    signature = (query.dtype, key.dtype, value.dtype, torch.is_autocast_enabled('cuda'), query.shape[-1])
    if signature in _NO_FUSED_KERNEL:
        return None
    from torch.nn.attention import SDPBackend, sdpa_kernel
    backends = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]
    try:
        with sdpa_kernel(backends):
            return _sdpa(query, key, value, scale)
    except RuntimeError as err:
        if isinstance(err, torch.OutOfMemoryError):
            raise
        _NO_FUSED_KERNEL.add(signature)     # "no available kernel": remember, do not retry every call
        return None


def _sdpa(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float) -> torch.Tensor:
    """Ours (B, Nq, Ck), (B, Ck, Nk), (B, Cv, Nk) in SDPA's contiguous (B, 1, N, C) layout (its fused
    kernels take no other last-dimension stride) -> (B, Cv, Nq) like ours."""
    out = F.scaled_dot_product_attention(query.contiguous().unsqueeze(1), key.transpose(1, 2).contiguous().unsqueeze(1),
                                         value.transpose(1, 2).contiguous().unsqueeze(1), scale=scale)
    return out.squeeze(1).transpose(1, 2)


# whether float32 attention with Ck == Cv runs in SDPA's fused CPU kernel (`_fused_cpu_attention`);
# False: always ours (the chunked flash path above the dense limit)
CPU_SDPA = True


def _fused_cpu_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         scale: float) -> Optional[torch.Tensor]:
    """On the CPU in float32 with Ck == Cv (the non-local shapes), `F.scaled_dot_product_attention`'s
    fused flash kernel (it keeps one log-sum-exp per query, no N x N map), else None (ours runs).
    Decided by measurement (`tools/benchmark.py --suite train --only SDPA`): in float32 its kernel
    beat ours at every size measured, in bf16 ours beat it where the maps are large (NonLocal's
    Ck = Cv = 256 at 2 x 8192 positions: ours ~0.6x its time), so 16-bit dtypes keep ours; with
    Ck != Cv (PAM) the CPU has only SDPA's N x N math path. `softmax_attention` calls it above the dense
    limit (and for a batch's inference above it in all): below it the dense formula is no slower on one
    image and can be differentiated twice, SDPA's CPU backward cannot."""
    # (the CPU only: other devices (meta, MPS, XPU) keep ours and leave `_NO_FUSED_KERNEL` to the CPU's)
    if not CPU_SDPA or query.device.type != 'cpu' or key.shape[1] != value.shape[1] \
            or _compute_dtype(query, key, value) != torch.float32 or query.shape[1] == 0 or key.shape[-1] == 0:
        return None
    signature = (query.dtype, key.dtype, value.dtype, query.shape[-1])
    if signature in _NO_FUSED_KERNEL:
        return None
    from torch.nn.attention import SDPBackend, sdpa_kernel
    try:
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return _sdpa(query, key, value, scale)
    except RuntimeError as err:
        # only "no available kernel" turns it off for this signature; anything else (a CPU
        # allocation failure is a plain RuntimeError) surfaces
        if 'No available kernel' not in str(err):
            raise
        _NO_FUSED_KERNEL.add(signature)
        return None


def attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float, chunk_elements: int,
              record: bool) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
    """(`softmax_attention(...)`, None); with `record`, the dense formula and its detached
    (B, Nq, Nk) map. Scriptable: blocks call it from forward and keep the map themselves."""
    if not record:
        return softmax_attention(query, key, value, scale, chunk_elements), None
    attn = torch.softmax(scale * torch.bmm(query, key), dim=-1)
    return torch.bmm(value, attn.transpose(1, 2)), attn.detach()


def attend(block: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
           scale: float = 1.0) -> torch.Tensor:
    """`attention` with `block.chunk_elements`; while `block.record_attention` is set, keeps the
    map in `block.attention_map` (eager only: TorchScript cannot take a module argument)."""
    out, attn = attention(query, key, value, scale, block.chunk_elements, block.record_attention)
    if attn is not None:
        block.attention_map = attn
    return out


def _dense_block(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    return _softmax_chunk(torch.bmm(query, key), value)


def _traced() -> bool:
    """torch.jit.trace or ONNX export (False in TorchScript)."""
    if torch.jit.is_scripting():
        return False
    return torch.jit.is_tracing() or _exporting()


def _exporting() -> bool:
    onnx = getattr(torch, 'onnx', None)
    return bool(onnx is not None and hasattr(onnx, 'is_in_onnx_export') and onnx.is_in_onnx_export())


def resize_to(x: torch.Tensor, size: tuple[int, ...]) -> torch.Tensor:
    """Resample a 4D/5D map to `size`: area averaging when shrinking, (tri)linear when growing."""
    if tuple(x.shape[2:]) == tuple(size):
        return x
    if all(s <= t for s, t in zip(size, x.shape[2:])):
        return F.adaptive_avg_pool2d(x, size) if x.dim() == 4 else F.adaptive_avg_pool3d(x, size)
    mode = 'bilinear' if x.dim() == 4 else 'trilinear'
    return F.interpolate(x, size=size, mode=mode, align_corners=False)


def place(module: nn.Module, device=None, dtype=None) -> None:
    """Move a freshly built block to `device`/`dtype` (timm passes both to attention layers)."""
    if device is not None or dtype is not None:
        module.to(device=device, dtype=dtype)


class HostInit:
    """Hooks through which a host model gives a block back its own (paper) init after its own.

    Hosts re-initialise every conv/BN they contain after construction, blocks included: timm's
    ResNet kaiming-inits each nn.Conv2d, mmengine's `init_cfg` (e.g. Kaiming + BN weight 1) is
    applied to every submodule. Each block defines `reset_parameters()`; the hosts call it through
    their own post-init conventions:
      - mmengine `BaseModule.init_weights` calls `init_weights()` of every child after the host's
        init_cfg and before a `Pretrained` init_cfg (so a checkpoint with block weights still wins);
      - timm ResNet and RegNet call `zero_init_last()` of every module after their conv init
        (when built with zero_init_last=True, their default); timm ByobNet calls
        `init_weights(zero_init_last=...)`.
    Other hosts: `reset_attention_blocks(model)`, which `attn_plugins.create_model`, the `ap_*`
    entrypoints and `TimmBackbone` call for you. Blocks injected below a plain module of a mmengine
    model are out of mmengine's reach: `InjectAttention` links them (`restore_blocks_on_init`).
    """

    def reset_parameters(self) -> None:  # pragma: no cover - every block defines it
        raise NotImplementedError

    def init_weights(self, zero_init_last: bool = True) -> None:
        """mmengine / timm ByobNet hook: restore this block's own init (`zero_init_last` is ignored)."""
        self.reset_parameters()

    def zero_init_last(self) -> None:
        """timm ResNet / RegNet hook: restore this block's own init (zero-init blocks start as the identity)."""
        self.reset_parameters()


def reset_attention_blocks(model: nn.Module) -> int:
    """Give every attention block in `model` its own init back (outermost blocks only: a block
    resets its sub-blocks). Returns the number of blocks reset."""
    if isinstance(model, HostInit):
        model.reset_parameters()
        return 1
    return sum(reset_attention_blocks(child) for child in model.children())
