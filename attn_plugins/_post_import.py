"""Run a function when a module has been imported: at once if it already is, else right after its
import completes. This is how `import attn_plugins` registers its blocks, models and heads into
timm, mmengine and mmseg without importing any of them (see attn_plugins/__init__.py).

A meta-path finder sits first in `sys.meta_path`. For a watched name it asks the other finders
for the spec and wraps the loader; the wrapper restores the real loader on the module, runs it,
then the callbacks. A callback that fails warns instead of breaking the user's import.
"""
from __future__ import annotations

import importlib.abc
import sys
import warnings
from types import ModuleType
from typing import Callable

_CALLBACKS: dict[str, list[Callable[[ModuleType], None]]] = {}


def when_imported(name: str, callback: Callable[[ModuleType], None]) -> None:
    """Call `callback(module)` once `name` is imported (now, if it is in sys.modules)."""
    module = sys.modules.get(name)
    if module is not None:
        _run(name, callback, module)
        return
    _CALLBACKS.setdefault(name, []).append(callback)
    if not any(isinstance(finder, _Finder) for finder in sys.meta_path):
        sys.meta_path.insert(0, _Finder())


def _run(name: str, callback: Callable[[ModuleType], None], module: ModuleType) -> None:
    try:
        callback(module)
    except Exception as err:  # noqa: BLE001 - a failed registration must not break the user's import
        warnings.warn(f"attn_plugins: registering into {name} failed ({type(err).__name__}: {err}); "
                      f"its blocks, models or heads are not available there", RuntimeWarning, stacklevel=2)


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name not in _CALLBACKS:
            return None
        for finder in sys.meta_path:          # what the import system would find without us
            if finder is self or not hasattr(finder, 'find_spec'):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        if spec.loader is not None and hasattr(spec.loader, 'exec_module'):
            spec.loader = _NotifyingLoader(spec.loader, name)
        return spec


class _NotifyingLoader(importlib.abc.Loader):
    def __init__(self, loader, name: str):
        self.loader, self.name = loader, name

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        module.__loader__ = self.loader            # the real loader from now on (resources, reload)
        if module.__spec__ is not None:
            module.__spec__.loader = self.loader
        self.loader.exec_module(module)
        for callback in _CALLBACKS.pop(self.name, []):
            _run(self.name, callback, module)

    def __getattr__(self, attr):
        return getattr(self.loader, attr)
