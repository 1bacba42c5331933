"""Memory-bounded softmax attention with a flash-attention backward (pure PyTorch).

    out = V Pᵀ,   P = softmax_rows(S),   S = scale · Q K         (channels first, see below)

Forward visits the queries in chunks and keeps, besides Q, K, V and the output O, two numbers
per query: its score maximum m_i and 1 / l_i, l_i = Σ_j exp(S_ij − m_i). Backward recomputes
the scores block by block and, with P = exp(S − m) / l (Dao et al., "FlashAttention", NeurIPS
2022, Alg. 4):

    dV = dO P,   dP = dOᵀ V,   dS = P ∘ (dP − rowsum(dO ∘ O)),   dQ = scale · dS Kᵀ,   dK = scale · Qᵀ dS

so no N x N map is ever saved and the forward is not re-run: one Q K product and one exp pass
per block more than a dense backward (see `FlashSoftmaxAttention` for how the statistics enter
the matmuls, so that nothing else touches a block but one multiply).

Where the time went (profiled with torch.profiler on this 2-core CPU, 1 thread, chunks of
2 x 512 x 8192 scores) and what the current version does instead of the first one:
  - fresh (n x Nk) buffers per chunk: above glibc's mmap threshold every allocation page-faults
    anew (a fp32 Q K product took 28 ms into a new tensor, 14 ms into a reused one): one buffer
    per pass, matmuls write into it (`out=`);
  - under bf16, `sum(dtype=float32)` of a chunk converted it first (18 ms, more than its Q K
    product): grouped sums (`_row_sum`, 0.8 ms); a bf16 tensor minus a float32 one took the
    mixed-dtype path (36 ms vs 1.5 ms): the statistics enter the matmuls instead;
  - fp32 `exp` 7.7 ms vs `exp2` 2.4 ms per chunk: base 2 in float32 / float64 (not in bf16: exp2
    saves there ~0.4 ms of 2.6 per 8M-element chunk, 2 threads, but log2(e) folded into the query
    is one more bf16 rounding: PAM's output error 0.19% instead of 0.13%);
  - dQ summed over key blocks as `grad_q.add_(bmm(...))`: a fresh product and, in bf16, a fresh
    float32 copy of it per block; now float32 / float64 add the product in the matmul
    (`baddbmm`) and 16-bit products go into one reused buffer, widened into another (a training
    step of the attention function at Ck = Cv = 256, N = 8192: -5% fp32, -2% bf16);
  - dV accumulated over query chunks (a (Cv x Nk) product allocated, rounded and added per
    chunk): backward runs over key blocks, each block's dV and dK is one product written once;
  - dO and O were cast and rowsum(dO ∘ O) recomputed per chunk: computed once;
  - a bf16 bmm (oneDNN) copies each operand that is neither contiguous nor transposed-contiguous,
    whole, inside every call: V (a slice of [V; 1]) per query chunk and dO (a slice of [dO; −rowsum])
    per key block, 32 copies of 16 MB per step at N=8192 (15% of the function's profiled self time
    on the loaded machine, ~2% of its single-thread CPU time: the copies are memory traffic, not
    arithmetic). K and V stay as given (contiguous), each block's [K; 1] and [V; 1] is built in a small
    buffer, and dV reads a contiguous dO / l of its own: every bmm operand has one of the two layouts
    (tests check it). (dV from [dO; −rowsum] itself, dropping the extra rows' product, would save
    that 16 MB, but a bf16 bmm with 514 rows took 46.5 ms against 42 ms with 512.)
After this, the matmuls take 90-92% of the step's time (fp32 and bf16). Forward + backward of
B=2, N=8192, Ck=64, Cv=512 attention, 512-query chunks, 2 threads, median of 4 interleaved rounds
on a quiet 16-core Intel Xeon (torch 2.11; not this project's CPU): fp32 1.94 s vs 2.49 s before
(the dense formula 2.92 s), bf16 0.81 s vs 1.24 s (dense 1.62 s). Provisional: tools/benchmark.py
--suite train on a quiet machine of this kind gives the numbers that count.

Where `F.scaled_dot_product_attention` has a fused kernel and measured faster, it runs instead
of this (`_helpers.softmax_attention`): on the CPU for float32 with Ck == Cv (NonLocal) above the
dense limit, on CUDA with Ck == Cv wherever a fused kernel takes the inputs. In bf16 on the CPU this runs (SDPA's flash kernel took
1.5-1.6x its time at NonLocal's 2 x 8192 positions, C = 256), and with Ck != Cv (PAM) SDPA has only
its math kernel, which materialises N x N.

Under autocast the matmuls and the chunk / block passes run in the autocast dtype (bf16 on a
CPU); the statistics m, 1 / l and rowsum(dO ∘ O), the 1 / l scaling and the dQ sum over blocks
in float32. Backward recomputes a block's scores with the forward's rounding, the bf16 product and
then − m in bf16: with − m inside the product (S − m rounded once, more precise on its own) the
recomputed P departed from the forward's P, which made O and l, and with spread scores (std 10)
every gradient carried 1.4-3x the dense formula's bf16 error (dV 6-8x at std 30); now within 1.3x
(registry_tests/test_flash_edges.py). As in FlashAttention, rowsum(dO ∘ O) comes from the
bf16-rounded output, so Σ_j dS_ij is 0 only to bf16 precision. With the blocks' own init (64
channels, tools/bf16_report.py) the worst gradient error is ours / dense: PAM 0.82% / 0.72%,
NonLocal 2.4% / 2.4%; with query weights x4: PAM 3.4% / 2.8%, NonLocal 2.0% / 1.9%.
"""
from __future__ import annotations

from typing import Tuple

import torch


_LOG2E = 1.4426950408889634
# in 16-bit dtypes backward's key blocks hold this many times the forward chunk's scores (see `backward`)
BACKWARD_BLOCK_FACTOR = 2
# ... where the query-key channels Ck are at least this (NonLocal's 256, not PAM's 64), on the CPU
WIDE_BLOCKS_MIN_QK = 128
# queries per widening of a 16-bit dQ block into float32
WIDEN_ROWS = 1024


def _compute_dtype(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor) -> torch.dtype:
    """The matmul dtype: the autocast dtype when autocast is on for these inputs, else their common dtype."""
    dtype = torch.promote_types(torch.promote_types(query.dtype, key.dtype), value.dtype)
    device = query.device.type
    if dtype in (torch.float32, torch.float16, torch.bfloat16) and torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return dtype


def _extra_rows(dtype: torch.dtype) -> int:
    """Rows that carry a float32 number per query into a matmul: one in float32 / float64, two (a
    high and a low part, summed in the matmul's float32 accumulator) in a 16-bit dtype."""
    return 1 if dtype in (torch.float32, torch.float64) else 2


def _split(values: torch.Tensor, dtype: torch.dtype, rows: int) -> torch.Tensor:
    """float32 `values` (B, N) as `rows` addends in `dtype` (B, rows, N) that sum to them."""
    parts, rest = [], values
    for _ in range(rows):
        part = rest.to(dtype)
        parts.append(part)
        rest = rest - part.to(rest.dtype)
    return torch.stack(parts, 1)


def _augmented(x: torch.Tensor, extra, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """(B, C, N) x with the rows `extra` appended, (B, C + r, N) contiguous: `extra` a (B, r, N)
    tensor or r, for r rows of ones; written into the flat `buffer` where given."""
    rows = extra if isinstance(extra, int) else extra.shape[1]
    shape = (x.shape[0], x.shape[1] + rows, x.shape[2])
    out = x.new_empty(shape) if buffer is None else buffer[:shape[0] * shape[1] * shape[2]].view(shape)
    out[:, :x.shape[1]] = x
    out[:, x.shape[1]:] = 1 if isinstance(extra, int) else extra
    return out


def _matmul_layout(x: torch.Tensor) -> torch.Tensor:
    """x itself where it is contiguous or its last two dims transposed are, else a contiguous copy."""
    return x if x.is_contiguous() or x.transpose(-1, -2).is_contiguous() else x.contiguous()


def _row_sum(probs: torch.Tensor, stat_dtype: torch.dtype) -> torch.Tensor:
    """Σ_j probs_ij in `stat_dtype`. A 16-bit chunk is summed in groups of 64 (float32 inside, one
    rounding per group) and the groups in float32: as exact as the rounded probabilities themselves,
    and 10-20x faster here than `sum(dtype=float32)`, which converts the whole chunk first."""
    if probs.dtype == stat_dtype:
        return probs.sum(-1)
    whole = probs.shape[-1] // 64 * 64
    total = probs[..., :whole].unflatten(-1, (-1, 64)).sum(-1).sum(-1, dtype=stat_dtype)
    return total + probs[..., whole:].sum(-1, dtype=stat_dtype) if whole < probs.shape[-1] else total


def _scaled_grad_out(grad_out: torch.Tensor, out: torch.Tensor, inv_sum: torch.Tensor, dtype: torch.dtype,
                     extra: int, augment: bool = True, columns: int = 1024) -> Tuple[torch.Tensor, torch.Tensor]:
    """dO with query i's column divided by l_i, (B, Cv, Nq), and (with `augment`) the same with the
    rows −rowsum(dO ∘ O) / l appended, (B, Cv + extra, Nq), both contiguous in `dtype`: computed in
    float32 `columns` queries at a time (small temporaries, no mixed-dtype passes)."""
    stat_dtype = inv_sum.dtype
    batch, channels, num_queries = grad_out.shape
    scaled = grad_out.new_empty(batch, channels, num_queries, dtype=dtype)
    augmented = grad_out.new_empty(batch, channels + extra, num_queries, dtype=dtype) if augment else None
    for start in range(0, num_queries, columns):
        stop = min(start + columns, num_queries)
        grad = grad_out[:, :, start:stop].to(stat_dtype)
        inv = inv_sum[:, None, start:stop]
        scaled[:, :, start:stop] = grad * inv                # not in place: `grad` may be dO itself
        if augment:
            delta = (grad * out[:, :, start:stop].to(stat_dtype)).sum(1, keepdim=True)     # rowsum(dO ∘ O)
            augmented[:, :channels, start:stop] = scaled[:, :, start:stop]
            augmented[:, channels:, start:stop] = _split(delta.mul_(inv).neg_().squeeze(1), dtype, extra)
    return scaled, augmented


class FlashSoftmaxAttention(torch.autograd.Function):
    """query (B, Nq, Ck), key (B, Ck, Nk), value (B, Cv, Nk) -> value @ softmax(scale · query @ key)ᵀ,
    (B, Cv, Nq), `chunk` query rows at a time in forward; backward visits blocks of keys with as
    many scores (`BACKWARD_BLOCK_FACTOR` times as many on the CPU in 16-bit dtypes at Ck >= 128),
    all queries at once, so each block's dK and dV is one matmul written once and only dQ
    (B, Nq, Ck) is summed over blocks (in float32).

    Saves Q, K, V (as given where already contiguous in the matmul dtype), O and two float32
    statistics per query: its score maximum m_i and 1 / l_i, l_i = Σ_j exp(S_ij − m_i). In
    backward, in float32 / float64, −m enters the score matmul as an extra channel of Q (m is exact
    in the matmul dtype: a score of the forward; 16-bit dtypes subtract it after the product, as the
    forward did, see the module docstring) and −rowsum(dO ∘ O) the dP matmul as extra rows of dO
    (split in high and low parts in 16-bit dtypes), with dO's column i divided by l_i beforehand:

        exp([Q | −m] [K; 1]) = l ∘ P,   [dO; −rowsum(dO ∘ O)] / l · [V; 1] = (dP − rowsum(dO ∘ O)) / l

    so dV, dS = (l ∘ P) ∘ (dP − rowsum(dO ∘ O)) / l, dQ and dK take one exp pass and one product
    per block. The shift stays the row maximum, as in forward: the exponent of a large
    probability is near 0 and keeps its bits in bf16 (shifting by log Σ exp instead, ~log N for
    a diffuse map, cost bf16 gradients 2-3x their error). In float32 / float64 the exponentials
    are base 2 (log2(e) folded into the query scale): `exp2` runs ~3x faster than `exp` here."""

    @staticmethod
    def forward(ctx, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scale: float,
                chunk: int) -> torch.Tensor:
        dtype = _compute_dtype(query, key, value)
        stat_dtype = torch.promote_types(dtype, torch.float32)
        base2 = dtype in (torch.float32, torch.float64)
        batch, num_queries, qk_channels = query.shape
        num_keys, channels = key.shape[2], value.shape[1]
        with torch.autocast(query.device.type, enabled=False):
            query_scale = scale * _LOG2E if base2 else scale
            query = query.to(dtype)
            if query_scale != 1.0:
                query = query * query_scale
            # a 16-bit bmm (oneDNN) copies an operand neither contiguous nor transposed-contiguous
            # (`_matmul_layout`) whole, per call: the whole V per chunk before (35% of the bmms' time)
            key, value, query = key.to(dtype).contiguous(), value.to(dtype).contiguous(), _matmul_layout(query)
            out = value.new_empty(batch, channels, num_queries)
            row_max = torch.empty(batch, num_queries, dtype=stat_dtype, device=query.device)
            inv_sum = torch.empty_like(row_max)
            rows = min(chunk, num_queries)
            buffer = query.new_empty(batch * rows * num_keys)
            query_buffer = query.new_empty(batch * rows * qk_channels)
            for start in range(0, num_queries, rows):
                stop = min(start + rows, num_queries)
                scores = buffer[:batch * (stop - start) * num_keys].view(batch, stop - start, num_keys)
                query_chunk = query_buffer[:batch * (stop - start) * qk_channels].view(batch, stop - start, qk_channels)
                torch.bmm(query_chunk.copy_(query[:, start:stop]), key, out=scores)     # B, n, Nk
                chunk_max = scores.amax(-1, keepdim=True)
                scores.sub_(chunk_max)
                probs = scores.exp2_() if base2 else scores.exp_()      # l ∘ P = exp(S − m) (2^(S' − m), S' = log2(e) S)
                inv = _row_sum(probs, stat_dtype).reciprocal_()                        # B, n
                torch.mul(torch.bmm(value, probs.transpose(1, 2)), inv.unsqueeze(1), out=out[:, :, start:stop])
                row_max[:, start:stop] = chunk_max.squeeze(-1)
                inv_sum[:, start:stop] = inv
        ctx.save_for_backward(query, key, value, out, row_max, inv_sum)
        ctx.scale, ctx.chunk, ctx.base2 = scale, chunk, base2
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        query, key, value, out, row_max, inv_sum = ctx.saved_tensors
        need_q, need_k, need_v = ctx.needs_input_grad[:3]
        dtype, stat_dtype, base2 = query.dtype, row_max.dtype, ctx.base2
        batch, num_queries, qk_channels = query.shape
        num_keys, channels, extra = key.shape[2], value.shape[1], _extra_rows(dtype)
        with torch.autocast(query.device.type, enabled=False):
            # float32 / float64: [Q | −m] [K; 1] = S − m (m is a score of the forward: exact in `dtype`).
            # 16-bit: the forward's rounding, round(S) − m: the product, then − m in `dtype`. S − m in the
            # matmul rounds after the shift, so with spread scores the recomputed P departed from the
            # forward's (which made O and l): std-10 scores gave 1.4-3x the dense formula's gradient error
            forward_rounding = dtype != stat_dtype
            if forward_rounding:
                row_max_low = row_max.to(dtype).unsqueeze(-1)                               # B, Nq, 1
            else:
                query_aug = _augmented(query.transpose(1, 2), -row_max.to(dtype).unsqueeze(1)).transpose(1, 2)
            # dO / l gives dV from l ∘ P; [dO; −rowsum(dO ∘ O)] / l · [V; 1] gives (dP − rowsum) / l
            grad_out, grad_out_aug = _scaled_grad_out(grad_out, out, inv_sum, dtype, extra, need_q or need_k)
            grad_q = torch.zeros(batch, num_queries, qk_channels, dtype=stat_dtype, device=query.device) \
                if need_q else None
            grad_q_block = query.new_empty(batch, num_queries, qk_channels) if need_q and dtype != stat_dtype else None
            # widened WIDEN_ROWS queries at a time: a small float32 buffer, not a whole second dQ
            grad_q_wide = grad_q.new_empty(batch, min(num_queries, WIDEN_ROWS), qk_channels) \
                if grad_q_block is not None else None
            grad_k = query.new_empty(batch, qk_channels, num_keys) if need_k else None
            grad_v = query.new_empty(batch, channels, num_keys) if need_v else None
            # On the CPU in 16-bit dtypes with Ck >= WIDE_BLOCKS_MIN_QK, key blocks of twice the forward
            # chunk's scores: dQ is summed over the blocks, a product widened and added per block, so
            # fewer blocks, fewer passes over dQ, whose cost grows with Ck (float32 / float64 add
            # inside the matmul: as many scores as a chunk). In bytes such a bf16 block is a float32
            # one. Training step 2x512x64x128, 7 rounds, quiet, 2 threads, two separate (unpaired)
            # runs: NonLocal2d bf16 (Ck = 256) ours / mmcv per round 0.903 -> 0.886, extra memory
            # 0.26x -> 0.27x; PAM bf16 (Ck = 64: little dQ to widen) gained no time (0.85x -> 0.87x)
            # for +32 MB (0.26x -> 0.29x, goal <= 0.3x), so it keeps one chunk's scores
            factor = BACKWARD_BLOCK_FACTOR if (dtype != stat_dtype and qk_channels >= WIDE_BLOCKS_MIN_QK
                                               and query.device.type == 'cpu') else 1
            cols = max(1, min(num_keys, factor * ctx.chunk * num_keys // num_queries))
            buffers = [query.new_empty(batch * num_queries * cols) for _ in range(1 + (need_q or need_k))]
            # each block's keys and values, contiguous (see forward), with the rows of ones appended
            key_block_buffer = query.new_empty(batch * (qk_channels + 1) * cols)
            value_block_buffer = query.new_empty(batch * (channels + extra) * cols) if need_q or need_k else None
            for start in range(0, num_keys, cols):
                stop = min(start + cols, num_keys)
                width, size = stop - start, batch * num_queries * (stop - start)
                probs = buffers[0][:size].view(batch, num_queries, width)
                if forward_rounding:
                    key_block = key_block_buffer[:batch * qk_channels * width].view(batch, qk_channels, width)
                    torch.bmm(query, key_block.copy_(key[:, :, start:stop]), out=probs).sub_(row_max_low)
                else:
                    torch.bmm(query_aug, _augmented(key[:, :, start:stop], 1, key_block_buffer), out=probs)  # S − m
                probs = probs.exp2_() if base2 else probs.exp_()                     # l ∘ P
                if need_v:   # dV = dO P = (dO / l) (l ∘ P)
                    torch.bmm(grad_out, probs, out=grad_v[:, :, start:stop])
                if not (need_q or need_k):
                    continue
                grad_scores = buffers[1][:size].view(batch, num_queries, width)
                value_aug = _augmented(value[:, :, start:stop], extra, value_block_buffer)
                torch.bmm(grad_out_aug.transpose(1, 2), value_aug, out=grad_scores)
                grad_scores.mul_(probs)                                              # dS = P ∘ (dP − rowsum(dO ∘ O))
                if need_k:   # dK = Qᵀ dS (the saved query is scaled)
                    torch.bmm(query.transpose(1, 2), grad_scores, out=grad_k[:, :, start:stop])
                if need_q:   # dQ = scale · dS Kᵀ, summed over key blocks in float32
                    key_block = key_block_buffer[:batch * qk_channels * width].view(batch, qk_channels, width)
                    if not forward_rounding:        # (16-bit: still there from the scores' product)
                        key_block.copy_(key[:, :, start:stop])
                    key_block = key_block.transpose(1, 2)
                    if grad_q_block is None:     # float32 / float64: the product adds itself to dQ (not
                        torch.baddbmm(grad_q, grad_scores, key_block, out=grad_q)   # baddbmm_: FLOP counters skip it)
                    else:                        # 16-bit product, widened into a reused buffer, then added
                        torch.bmm(grad_scores, key_block, out=grad_q_block)
                        for row in range(0, num_queries, WIDEN_ROWS):
                            end = min(row + WIDEN_ROWS, num_queries)
                            grad_q[:, row:end].add_(grad_q_wide[:, :end - row].copy_(grad_q_block[:, row:end]))
        if need_q:
            grad_q.mul_(ctx.scale)
        if need_k and base2:   # the saved query carries log2(e) too: dK = scale · Qᵀ dS = ln 2 · (scale · log2(e) · Q)ᵀ dS
            grad_k.mul_(1 / _LOG2E)
        return grad_q, grad_k, grad_v, None, None


def flash_softmax_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                            scale: float = 1.0, chunk: int = 512) -> torch.Tensor:
    """`FlashSoftmaxAttention.apply` with a check of the shapes (see the class)."""
    if query.dim() != 3 or key.dim() != 3 or value.dim() != 3:
        raise ValueError(f"flash_softmax_attention: expected 3D query/key/value, got "
                         f"{tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    if query.shape[2] != key.shape[1] or key.shape[2] != value.shape[2] or \
            not (query.shape[0] == key.shape[0] == value.shape[0]):
        raise ValueError(f"flash_softmax_attention: expected query (B, Nq, Ck), key (B, Ck, Nk), value (B, Cv, Nk), "
                         f"got {tuple(query.shape)}, {tuple(key.shape)}, {tuple(value.shape)}")
    if chunk < 1:
        raise ValueError(f"flash_softmax_attention: chunk must be >= 1 query rows, got {chunk}")
    if query.shape[1] == 0:     # no queries: the (empty) dense formula, as SDPA; backward gives zero gradients
        dtype = _compute_dtype(query, key, value)
        with torch.autocast(query.device.type, enabled=False):
            probs = torch.softmax(scale * torch.bmm(query.to(dtype), key.to(dtype)), -1)
            return torch.bmm(value.to(dtype), probs.transpose(1, 2))
    if key.shape[2] == 0:
        raise ValueError(f"flash_softmax_attention: softmax over zero keys is undefined: key (B, Ck, Nk) and value "
                         f"(B, Cv, Nk) need Nk >= 1, got {tuple(key.shape)}, {tuple(value.shape)}")
    return FlashSoftmaxAttention.apply(query, key, value, float(scale), int(chunk))


class ChunkedConcatAttention(torch.autograd.Function):
    """The concatenation non-local sum Σ_j ReLU(a_i + b_j) v_j: a (B, Nq), b (B, Nk), value (B, C, Nk)
    -> (B, C, Nq), `chunk` queries at a time. Saves a, b and V only; backward recomputes each
    chunk's W = ReLU(a_i + b_j) (Nk x n) and applies dV = dO Wᵀ, dZ = (Vᵀ dO) ∘ [W > 0],
    da = Σ_j dZ, db = Σ_i dZ (the sums in float32), without re-running the forward product.
    Replaces per-chunk checkpointing: a training step of NonLocal(64, 'concatenation') on 1x64x64x64
    (1 thread) took 231-250 ms and 885 MB peak RSS, against 419-579 ms and 1112 MB checkpointed."""

    @staticmethod
    def forward(ctx, a: torch.Tensor, b: torch.Tensor, value: torch.Tensor, chunk: int) -> torch.Tensor:
        dtype = _compute_dtype(a, b, value)
        with torch.autocast(value.device.type, enabled=False):
            # a + b and the ReLU in their own dtype; V saved whole, not as a view pinning a larger
            # buffer (NonLocal's g is a slice of the fused θ, φ, g product: 3x the bytes kept)
            value = value.to(dtype).contiguous()
            out = value.new_empty(value.shape[0], value.shape[1], a.shape[1])
            for start in range(0, a.shape[1], chunk):
                stop = min(start + chunk, a.shape[1])
                weights = torch.relu_(b.unsqueeze(2) + a[:, None, start:stop])        # B, Nk, n
                out[:, :, start:stop] = torch.bmm(value, weights.to(dtype))
        ctx.save_for_backward(a, b, value)
        ctx.chunk = chunk
        return out

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_out: torch.Tensor):
        a, b, value = ctx.saved_tensors
        need_a, need_b, need_v = ctx.needs_input_grad[:3]
        dtype, stat_dtype = value.dtype, torch.promote_types(value.dtype, torch.float32)
        grad_a = torch.empty_like(a) if need_a else None
        grad_b = torch.zeros(b.shape, dtype=stat_dtype, device=b.device) if need_b else None
        grad_v = torch.zeros(value.shape, dtype=stat_dtype, device=value.device) if need_v else None
        with torch.autocast(value.device.type, enabled=False):
            grad_out = grad_out.to(dtype)
            for start in range(0, a.shape[1], ctx.chunk):
                stop = min(start + ctx.chunk, a.shape[1])
                grad_out_c = grad_out[:, :, start:stop]                                # B, C, n
                weights = torch.relu_(b.unsqueeze(2) + a[:, None, start:stop])        # B, Nk, n
                if need_v:
                    grad_v.add_(torch.bmm(grad_out_c, weights.to(dtype).transpose(1, 2)))
                if need_a or need_b:
                    grad_z = torch.bmm(value.transpose(1, 2), grad_out_c).masked_fill_(weights <= 0, 0)
                    if need_a:
                        grad_a[:, start:stop] = grad_z.sum(1, dtype=stat_dtype)
                    if need_b:
                        grad_b.add_(grad_z.sum(2, dtype=stat_dtype))
        return (grad_a, None if grad_b is None else grad_b.to(b.dtype),
                None if grad_v is None else grad_v.to(dtype), None)


def chunked_concat_attention(a: torch.Tensor, b: torch.Tensor, value: torch.Tensor, chunk: int = 512) -> torch.Tensor:
    """`ChunkedConcatAttention.apply` with a check of the shapes (see the class)."""
    if a.dim() != 2 or b.dim() != 2 or value.dim() != 3 or b.shape[1] != value.shape[2] or \
            not (a.shape[0] == b.shape[0] == value.shape[0]):
        raise ValueError(f"chunked_concat_attention: expected a (B, Nq), b (B, Nk), value (B, C, Nk), got "
                         f"{tuple(a.shape)}, {tuple(b.shape)}, {tuple(value.shape)}")
    if chunk < 1:
        raise ValueError(f"chunked_concat_attention: chunk must be >= 1 query rows, got {chunk}")
    return ChunkedConcatAttention.apply(a, b, value, int(chunk))
