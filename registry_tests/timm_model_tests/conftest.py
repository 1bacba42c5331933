"""Run timm's own model tests (test_models.py, vendored unmodified) over the attn_plugins `ap_*` models.

timm parametrises its per-model tests with `timm.list_models(...)` at import time. While that
module is collected, `timm.list_models` / `timm.list_pretrained` return only the `ap_*` names
that pass timm's own filters; afterwards they are timm's again. Tests of timm's own models
(hard-coded names such as 'convnext_atto') are deselected. The 72 tests (8 per model: forward,
backward, default cfgs, TorchScript, features, FX forward/backward, FX + TorchScript) take about
three minutes (137 s of CPU, OMP_NUM_THREADS=1), so they are marked `slow` (`make test-fast` skips them).
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import pytest
import timm
import torch

import attn_plugins  # noqa: F401  - registers the ap_* entrypoints

HERE = Path(__file__).resolve().parent
PREFIX = 'ap_'
MARKERS = ('base', 'forward', 'backward', 'cfg', 'cfg_nonstd', 'torchscript', 'features', 'fxforward', 'fxbackward',
           'timeout(seconds): per-test limit (needs pytest-timeout; ignored without it)')


def pytest_configure(config):
    for marker in MARKERS:
        config.addinivalue_line('markers', f'{marker}: timm model-test marker' if ':' not in marker else marker)


def _ours(names):
    return [n for n in names if n.startswith(PREFIX)]


@contextlib.contextmanager
def _only_ap_models():
    list_models, list_pretrained = timm.list_models, timm.list_pretrained
    timm.list_models = lambda *args, **kwargs: _ours(list_models(*args, **kwargs))
    timm.list_pretrained = lambda *args, **kwargs: _ours(list_pretrained(*args, **kwargs))
    jit_state = (torch._C._jit_set_profiling_executor(True), torch._C._jit_set_profiling_mode(True))
    try:
        yield
    finally:
        timm.list_models, timm.list_pretrained = list_models, list_pretrained
        # test_models.py changes the JIT executor at import; keep that to its own tests (fixture below)
        torch._C._jit_set_profiling_executor(jit_state[0])
        torch._C._jit_set_profiling_mode(jit_state[1])


def _vendored(path) -> bool:
    return Path(str(path)).resolve().parent == HERE


@pytest.hookimpl(wrapper=True)
def pytest_make_collect_report(collector):
    if isinstance(collector, pytest.Module) and _vendored(collector.path):
        with _only_ap_models():
            return (yield)
    return (yield)


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        if not _vendored(item.path):
            keep.append(item)
            continue
        params = getattr(getattr(item, 'callspec', None), 'params', {})
        name = params.get('model_name')
        if isinstance(name, str) and name.startswith(PREFIX):
            item.add_marker(pytest.mark.slow)
            keep.append(item)
        else:
            drop.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.fixture(autouse=True)
def _timm_jit_settings():
    """The JIT executor settings test_models.py sets at import, for its tests only."""
    old = (torch._C._jit_set_profiling_executor(True), torch._C._jit_set_profiling_mode(False))
    yield
    torch._C._jit_set_profiling_executor(old[0])
    torch._C._jit_set_profiling_mode(old[1])
