import logging
import os
import warnings

import importlib.util

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

os.environ.setdefault('HF_HUB_OFFLINE', '1')
warnings.filterwarnings('ignore', category=DeprecationWarning)
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# mmengine's loggers keep the stream of the test that created them (pytest's capture, closed after that
# test): a later log record printed a '--- Logging error ---' traceback into the next test's captured
# stderr, and tests asserting a one-line error failed depending on the test order
logging.raiseExceptions = False


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def force_chunks(monkeypatch):
    """Make every attention take our chunked path (inputs below DENSE_LIMIT_ELEMENTS are computed
    densely whatever `chunk_elements` says; float32 with Ck == Cv would run in SDPA's fused CPU kernel).
    Set the chunk size with `blocks_zoo.set_chunk_rows`."""
    from attn_plugins.modules import _helpers
    monkeypatch.setattr(_helpers, 'DENSE_LIMIT_ELEMENTS', 0)
    monkeypatch.setattr(_helpers, 'CPU_SDPA', False)


@pytest.fixture
def ours_attention(monkeypatch):
    """Our attention (dense below DENSE_LIMIT_ELEMENTS, chunked above), never SDPA's fused CPU kernel."""
    from attn_plugins.modules import _helpers
    monkeypatch.setattr(_helpers, 'CPU_SDPA', False)


class BmmSpy:
    """Records the operand shapes of every `torch.bmm` call, to show how attention was computed."""

    def __init__(self, bmm):
        self.bmm, self.shapes = bmm, []

    def __call__(self, a, b, *args, **kwargs):
        # a view of a parameter broadcast over the batch is a 1x1 conv run as a product
        # (`_helpers.pointwise_convs`), not attention: its (C_out x C_in) and input maps are not recorded
        if not isinstance(a._base, torch.nn.Parameter):
            self.shapes.append((tuple(a.shape), tuple(b.shape)))
        return self.bmm(a, b, *args, **kwargs)

    def saw_matrix(self, rows: int, cols: int) -> bool:
        """Whether any call took or produced a (rows x cols) or (cols x rows) matrix."""
        wanted = {(rows, cols), (cols, rows)}
        return any(m in wanted for sa, sb in self.shapes for m in (sa[-2:], sb[-2:], (sa[-2], sb[-1])))


class OpLog(TorchDispatchMode):
    """Records every aten op: (name, input tensor shapes, output shape) in `calls`, and its
    non-tensor arguments (dims, sizes, ...) at the same index in `arguments`."""

    def __init__(self):
        super().__init__()
        self.calls, self.arguments = [], []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        shapes = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
        out_shape = tuple(out.shape) if isinstance(out, torch.Tensor) else None
        self.calls.append((func.overloadpacket.__name__, shapes, out_shape))
        self.arguments.append([a for a in args if not isinstance(a, torch.Tensor)])
        return out

    def bmms(self):
        """The operand shapes of every batched product (baddbmm: its two factors)."""
        return [tuple(shapes[:2]) if name == 'bmm' else tuple(shapes[1:3])
                for name, shapes, _ in self.calls if name in ('bmm', 'baddbmm')]


@pytest.fixture
def bmm_spy(monkeypatch):
    spy = BmmSpy(torch.bmm)
    monkeypatch.setattr(torch, 'bmm', spy)
    return spy


def randomize(module: torch.nn.Module, seed: int = 1) -> torch.nn.Module:
    """Give every parameter and BN buffer random values (so zero-init blocks compute something)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn(p.shape, generator=gen, dtype=p.dtype) * 0.3)
        for name, b in module.named_buffers():
            if name.endswith('running_var'):
                b.copy_(torch.rand(b.shape, generator=gen) + 0.5)
            elif name.endswith('running_mean'):
                b.copy_(torch.randn(b.shape, generator=gen) * 0.1)
    return module


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_tool(name: str):
    """tools/<name>.py as a module (its main(argv) is what the command line runs)."""
    spec = importlib.util.spec_from_file_location(f'tool_{name}', os.path.join(ROOT, 'tools', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def without_scope(value):
    """mmengine marks the dicts of package bases with `_scope_`; our loader leaves that to the runner."""
    if isinstance(value, dict):
        return {k: without_scope(v) for k, v in value.items() if k != '_scope_'}
    if isinstance(value, (list, tuple)):
        return type(value)(without_scope(v) for v in value)
    return value
