"""Safe config loading: YAML (never executes code) or OpenMMLab .py, with `_base_` inheritance.

mmengine's own YAML handler uses `yaml.Loader`, so `!!python/object/apply:os.system [...]` in
a YAML config runs a shell command. `load_config` parses YAML with a safe loader that rejects
every python tag with the file and line, resolves `_base_` itself (relative files, and
OpenMMLab package bases such as `mmseg::_base_/models/danet_r50-d8.py`, which are Python
configs the installed package ships), merges with mmengine's rules (`_delete_`), and applies
`--cfg-options`-style overrides.
"""
from __future__ import annotations

import os
from typing import Any, Mapping, Sequence

import yaml

from .registry import ConfigError

YAML_EXTS = ('.yaml', '.yml')


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that names the file and line of any python tag."""


def _reject_python(loader: _SafeLoader, suffix, node):
    mark = node.start_mark
    raise ConfigError(f"{mark.name}:{mark.line + 1}: the YAML tag {node.tag!r} is not allowed: attn_plugins "
                      "never executes code from a YAML config (use plain values)")


_SafeLoader.add_multi_constructor('tag:yaml.org,2002:python/', _reject_python)
_SafeLoader.add_multi_constructor('!!python/', _reject_python)


def read_yaml(path: str) -> dict:
    """Parse one YAML file safely into a dict."""
    try:
        with open(path, encoding='utf-8') as f:
            data = yaml.load(f, Loader=_SafeLoader)  # noqa: S506 - _SafeLoader is a SafeLoader
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark else ''
        raise ConfigError(f"{path}{line}: invalid YAML: {err.problem or err}") from None
    except OSError as err:
        raise ConfigError(f"config file {path!r} cannot be read: {err.strerror}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping at the top level, got {type(data).__name__}")
    return data


def _package_base(base: str, parent: str) -> dict:
    from mmengine.config import Config
    package = base.split('::', 1)[0]
    try:
        __import__(package)
    except ImportError:
        extra = {'mmseg': 'seg', 'mmdet': 'det'}.get(package, 'all')
        raise ConfigError(f"{parent}: _base_ {base!r} needs the {package} package; "
                          f"pip install attn_plugins[{extra}]") from None
    try:
        path, _scope = Config._get_cfg_path(base, parent)   # mmengine's own resolution of pkg::path
        return Config.fromfile(path).to_dict()
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(f"{parent}: _base_ {base!r} not found in the installed {package} package ({err})") from None


def _load_tree(path: str, chain: tuple[str, ...] = ()) -> dict:
    path = os.path.abspath(path)
    if path in chain:
        raise ConfigError(f"_base_: circular inheritance: {' -> '.join(chain + (path,))}")
    if path.endswith('.py'):
        from mmengine.config import Config
        return Config.fromfile(path).to_dict()
    data = read_yaml(path)
    bases = data.pop('_base_', [])
    bases = [bases] if isinstance(bases, str) else list(bases)
    merged: dict = {}
    for base in bases:
        if not isinstance(base, str):
            raise ConfigError(f"{path}: _base_ entries must be file paths, got {base!r}")
        if '::' in base:
            base_dict = _package_base(base, path)
        else:
            base_path = os.path.join(os.path.dirname(path), base)
            if not os.path.exists(base_path):
                raise ConfigError(f"{path}: _base_ file {base!r} not found (looked at {base_path})")
            base_dict = _load_tree(base_path, chain + (path,))
        duplicate = set(merged) & set(base_dict)
        if duplicate:   # as mmengine: bases must not define the same top-level key
            raise ConfigError(f"{path}: _base_ files both define {sorted(duplicate)}; "
                              "override the key in this file instead")
        merged.update(base_dict)
    return merge(data, merged)


def merge(child: Mapping, base: Mapping) -> dict:
    """Merge `child` into `base` with mmengine's rules (`_delete_: true` replaces a dict)."""
    from mmengine.config import Config
    import copy
    return Config._merge_a_into_b(copy.deepcopy(dict(child)), copy.deepcopy(dict(base)))


def parse_overrides(overrides: Sequence[str] | Mapping[str, Any] | None) -> dict:
    """`['a.b=1', 'c=[1,2]']` (as --cfg-options) or a dict -> a flat dict of dotted keys."""
    if overrides is None:
        return {}
    if isinstance(overrides, Mapping):
        return dict(overrides)
    from mmengine.config import DictAction
    out = {}
    for item in overrides:
        key, sep, value = str(item).partition('=')
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE (as --cfg-options)")
        out[key] = DictAction._parse_iterable(value)
    return out


def load_config(path: str, overrides: Sequence[str] | Mapping[str, Any] | None = None):
    """Load a .yaml/.yml (safely) or .py config into an mmengine.Config."""
    from mmengine.config import Config
    path = str(path)
    if not path.endswith(YAML_EXTS + ('.py',)):
        raise ConfigError(f"config {path!r}: expected a .yaml, .yml or .py file")
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} not found")
    if path.endswith('.py'):
        cfg = Config.fromfile(path)
    else:
        cfg = Config(_load_tree(path), filename=os.path.abspath(path))
    extra = parse_overrides(overrides)
    if extra:
        cfg.merge_from_dict(extra)
    imports = cfg.get('custom_imports')
    if imports:
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(**imports)
    return cfg


def build_model(model_cfg: Mapping[str, Any], example_input=None):
    """Build `model:` from a config: 'timm/<name>' goes through timm, anything else through
    mmengine's MODELS; a `plugins:` list (injector specs) is applied afterwards."""
    cfg = dict(model_cfg)
    plugins = cfg.pop('plugins', None)
    model_type = cfg.get('type')
    if not isinstance(model_type, str):
        raise ConfigError(f"model.type: expected a model name such as 'timm/resnet50', got {model_type!r}")
    if model_type.startswith('timm/'):
        from .integrations.timm import create_model
        cfg.pop('type')
        return create_model(model_type[len('timm/'):], plugins=plugins, example_input=example_input, **cfg)
    from .integrations.mmengine import inject_attention
    try:
        return inject_attention(cfg, plugins or [], example_input=example_input)
    except KeyError as err:
        raise ConfigError(f"model.type: {err}") from None
