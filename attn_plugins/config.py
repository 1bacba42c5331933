"""Safe config loading: YAML (never executes code) or OpenMMLab .py, with `_base_` inheritance.

mmengine reads YAML with `yaml.Loader` (`!!python/object/apply:os.system [...]` runs a shell
command) and imports whatever a config names: `_base_: x.py`, `custom_imports`, a registry
`type` it cannot find (`type: os.system` is called with the config's arguments). `load_config`
is the safe door for YAML. Unless trusted (`trust=True`, the tools' `--trust-config`):
- python tags are rejected with file and line, except the data-only tuple `!!python/tuple [..]`
  (what mmengine's YAML dump writes) and `!tuple [..]`;
- `_base_` entries are relative .yaml/.yml files inside the config's tree (its directory, or its
  nearest enclosing `configs` directory), or `.py` configs an installed OpenMMLab package ships
  (`mmseg::_base_/models/danet_r50-d8.py`: as trusted as importing the package);
- `custom_imports`, `default_scope`, `_scope_` and registry names (`type`, `constructor`) may
  import only attn_plugins and OpenMMLab packages, and may not name a function;
- YAML aliases expand to at most MAX_ALIAS_EXPANSION values per file ("billion laughs");
- keys hold no quote, backslash or control character (mmengine writes keys unescaped into the
  `.py` config it dumps into a work dir).
A `.py` config named directly is Python: loading it runs it (mmengine's Config.fromfile).
"""
from __future__ import annotations

import importlib.util
import inspect
import os
import re
import sys
from functools import lru_cache
from typing import Any, Callable, Mapping, Sequence

import yaml

from .registry import ConfigError

YAML_EXTS = ('.yaml', '.yml')
TRUST_HINT = '--trust-config (load_config(..., trust=True)) allows it'
OPENMMLAB_PACKAGES = frozenset({
    'mmengine', 'mmcv', 'mmpretrain', 'mmcls', 'mmdet', 'mmdet3d', 'mmseg', 'mmaction', 'mmpose', 'mmocr',
    'mmrotate', 'mmtrack', 'mmyolo', 'mmagic', 'mmedit', 'mmselfsup', 'mmrazor', 'mmflow', 'mmfewshot',
    'mmgen', 'mmhuman3d'})
TRUSTED_PACKAGES = OPENMMLAB_PACKAGES | {'attn_plugins'}
MAX_ALIAS_EXPANSION = 100_000          # values per file with every alias expanded
REGISTRY_NAME_KEYS = ('type', 'constructor', '_scope_')
TUPLE_TAGS = ('tag:yaml.org,2002:python/tuple', '!tuple')


class _SafeLoader(yaml.SafeLoader):
    """yaml.SafeLoader that names the file and line of any python tag, builds data-only tuples,
    bounds alias expansion and keeps the node of every mapping (for error lines)."""

    def __init__(self, stream, expansion_limit: int | None = MAX_ALIAS_EXPANSION):
        super().__init__(stream)
        self.expansion_limit = expansion_limit
        self.aliases = 0
        self.mapping_nodes: dict[int, yaml.MappingNode] = {}

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            self.aliases += 1
        return super().compose_node(parent, index)

    def get_single_data(self):
        node = self.get_single_node()
        if node is None:
            return None
        if self.aliases:
            _check_expansion(node, self.expansion_limit)
        return self.construct_document(node)


def _where(node) -> str:
    return f"{node.start_mark.name}:{node.start_mark.line + 1}"


def _reject_python(loader: _SafeLoader, suffix, node):
    raise ConfigError(f"{_where(node)}: the YAML tag {node.tag!r} is not allowed: attn_plugins never executes "
                      "code from a YAML config, not even with --trust-config (use plain values, or a .py config)")


def _construct_tuple(loader: _SafeLoader, node):
    if not isinstance(node, yaml.SequenceNode):
        raise ConfigError(f"{_where(node)}: {node.tag} takes a sequence of plain values, e.g. [1333, 800]")
    return tuple(loader.construct_sequence(node, deep=True))


def _construct_map(loader: _SafeLoader, node):
    data: dict = {}
    loader.mapping_nodes[id(data)] = node
    yield data
    data.update(loader.construct_mapping(node))


for _tag in TUPLE_TAGS:
    _SafeLoader.add_constructor(_tag, _construct_tuple)
_SafeLoader.add_constructor('tag:yaml.org,2002:map', _construct_map)
_SafeLoader.add_multi_constructor('tag:yaml.org,2002:python/', _reject_python)
_SafeLoader.add_multi_constructor('!!python/', _reject_python)


def _check_expansion(root, limit: int | None) -> None:
    """Size of every node with all aliases expanded, bottom-up over the distinct nodes (so it is
    fast whatever the expansion); refuse a node that contains itself, or the first over `limit`."""
    size: dict[int, int] = {}
    active: set[int] = set()
    stack = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            active.discard(key)
            total = 1 + sum(size[id(child)] for child in _children(node))
            if limit is not None and total > limit:
                raise ConfigError(f"{_where(node)}: this value expands to more than {limit:,} values through YAML "
                                  f"aliases (a 'billion laughs' config?); {TRUST_HINT}")
            size[key] = total
        elif key in active:
            raise ConfigError(f"{_where(node)}: this value contains itself through a YAML alias; a config must be "
                              "a finite tree (not allowed even with --trust-config)")
        elif key not in size:
            active.add(key)
            stack.append((node, True))
            stack.extend((child, False) for child in _children(node) if id(child) not in size)


def _children(node) -> list:
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return node.value if isinstance(node, yaml.SequenceNode) else []


class _Lines:
    """'file:line' of a key of a mapping parsed from one YAML file."""

    def __init__(self, path: str, mapping_nodes: Mapping[int, yaml.MappingNode]):
        self.path, self.nodes = path, mapping_nodes

    def __call__(self, mapping: Mapping, key: Any, index: int | None = None) -> str:
        node = self.nodes.get(id(mapping))
        if node is None:
            return self.path
        for key_node, value_node in node.value:
            if isinstance(key_node, yaml.ScalarNode) and key_node.value == str(key):
                node = value_node
                break
        if index is not None and isinstance(node, yaml.SequenceNode) and index < len(node.value):
            node = node.value[index]
        return f"{self.path}:{node.start_mark.line + 1}"


def _read(path: str, expansion_limit: int | None = MAX_ALIAS_EXPANSION) -> tuple[dict, _Lines]:
    try:
        with open(path, encoding='utf-8') as f:
            loader = _SafeLoader(f, expansion_limit)
            try:
                data = loader.get_single_data()
            finally:
                loader.dispose()
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line = f":{mark.line + 1}" if mark else ''
        raise ConfigError(f"{path}{line}: invalid YAML: {err.problem or err}") from None
    except RecursionError:
        raise ConfigError(f"{path}: invalid YAML: nested too deeply") from None
    except OSError as err:
        raise ConfigError(f"config file {path!r} cannot be read: {err.strerror}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a config must be a mapping at the top level, got {type(data).__name__}")
    return data, _Lines(path, loader.mapping_nodes)


def read_yaml(path: str) -> dict:
    """Parse one YAML file safely into a dict."""
    return _read(path)[0]


@lru_cache(maxsize=None)
def _distribution_packages() -> frozenset:
    from importlib.metadata import packages_distributions
    return frozenset(packages_distributions())


def _importable(module: str) -> bool:
    if module in sys.modules:
        return True
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _installed(package: str) -> bool:
    """`package` comes from an installed distribution (not a same-named file next to a config)."""
    return package == 'attn_plugins' or package in sys.modules or package in _distribution_packages()


def _check_name(name: str, at: str, key: str) -> None:
    """A registry name or scope as mmengine resolves it: it imports `<head>.registry` for a scoped
    name, imports the whole name when its registry lacks it, and calls what it finds."""
    head = name.split('.', 1)[0]
    if head not in TRUSTED_PACKAGES or not _installed(head):
        if _importable(head):
            raise ConfigError(f"{at}: {key} {name!r}: for a name its registries lack, mmengine imports {head!r} and "
                              f"calls what it finds; {head!r} is not attn_plugins or an installed OpenMMLab package; "
                              f"{TRUST_HINT}")
        return                                          # nothing to import: the registry just fails to find it
    parts = name.split('.')
    if any(part.startswith('__') for part in parts):
        raise ConfigError(f"{at}: {key} {name!r}: dunder names are not registry names; {TRUST_HINT}")
    if len(parts) > 2:
        # a full import path reaches any class of the package, e.g. mmseg.apis.MMSegInferencer,
        # whose constructor runs the .py config its `model` argument names
        raise ConfigError(f"{at}: {key} {name!r}: a full import path can name any class of {head!r} (some run "
                          f"code, e.g. an Inferencer reading a .py config); use a registry name, plain or "
                          f"scoped ({head}.{parts[-1]}); {TRUST_HINT}")
    if len(parts) > 1 and key != '_scope_':
        from mmengine.utils import get_object_from_string
        try:
            found = get_object_from_string(name)      # imports only the trusted package and its submodules
        except Exception:                              # noqa: BLE001 - as mmengine's registry: not found
            found = None
        if found is not None and not inspect.isclass(found):
            raise ConfigError(f"{at}: {key} {name!r} is a {type(found).__name__}, not a class: mmengine's registry "
                              f"would call it with the config's arguments; {TRUST_HINT}")


def _check_custom_imports(value: Any, at: str) -> None:
    if not isinstance(value, Mapping) or 'imports' not in value or set(value) - {'imports', 'allow_failed_imports'}:
        raise ConfigError(f"{at}: custom_imports: expected {{imports: [module, ...], allow_failed_imports: false}}, "
                          f"got {value!r}")
    names = value['imports']
    names = [names] if isinstance(names, str) else names
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"{at}: custom_imports.imports: expected a module name or a list of them, got {names!r}")
    for name in names:
        head = name.split('.', 1)[0]
        allowed = head in TRUSTED_PACKAGES and not any(p.startswith('__') for p in name.split('.'))
        if not allowed or (not _installed(head) and _importable(head)):
            raise ConfigError(f"{at}: custom_imports {name!r}: a YAML config may import only attn_plugins and the "
                              "installed OpenMMLab packages (mmengine, mmcv, mmseg, mmdet, mmpretrain, mmaction, ...) "
                              f"and their submodules: importing {name!r} would run its code; {TRUST_HINT}")


def _bad_key(key: Any) -> bool:
    return isinstance(key, str) and ("'" in key or '\\' in key or not key.isprintable())


def _check_untrusted(cfg: Mapping, where: Callable[..., str]) -> None:
    """Refuse what would make mmengine import or call code outside the trusted packages, then or later."""
    if cfg.get('custom_imports'):                    # mmengine skips an empty one
        _check_custom_imports(cfg['custom_imports'], where(cfg, 'custom_imports'))
    if isinstance(cfg.get('default_scope'), str):
        _check_name(cfg['default_scope'], where(cfg, 'default_scope'), 'default_scope')
    seen: set[int] = set()
    stack: list = [cfg]
    while stack:
        value = stack.pop()
        if id(value) in seen:
            continue
        seen.add(id(value))
        if isinstance(value, Mapping):
            for key, item in value.items():
                if _bad_key(key):
                    raise ConfigError(f"{where(value, key)}: key {key!r}: quotes, backslashes and control characters "
                                      "are not allowed in keys (mmengine writes keys unescaped into the .py config it "
                                      f"dumps, where they would become code); {TRUST_HINT}")
                if key in REGISTRY_NAME_KEYS and isinstance(item, str):
                    _check_name(item, where(value, key), key)
                if isinstance(item, (Mapping, list, tuple)):
                    stack.append(item)
        elif isinstance(value, (list, tuple)):
            stack.extend(item for item in value if isinstance(item, (Mapping, list, tuple)))


def _config_root(path: str) -> str:
    """Where a config's relative bases must stay: its nearest enclosing `configs` directory
    (OpenMMLab's layout: configs/<model>/x.yaml, configs/_base_/...), else its own directory."""
    here = os.path.dirname(os.path.realpath(path))
    folder = here
    while os.path.basename(folder) != 'configs':
        parent = os.path.dirname(folder)
        if parent == folder:
            return here
        folder = parent
    return folder


def _inside(path: str, folder: str) -> bool:
    return os.path.commonpath([os.path.realpath(path), os.path.realpath(folder)]) == os.path.realpath(folder)


def _package_base(base: str, at: str, parent: str, trust: bool) -> dict:
    from mmengine.config import Config
    package, _, relative = base.partition('::')
    if not trust:
        if package not in OPENMMLAB_PACKAGES:
            raise ConfigError(f"{at}: _base_ {base!r}: package bases come from the OpenMMLab packages (mmseg::, "
                              f"mmdet::, mmpretrain::, ...), and {package!r} is not one; {TRUST_HINT}")
        if os.path.isabs(relative) or '..' in relative.replace('\\', '/').split('/') or not relative.endswith('.py'):
            raise ConfigError(f"{at}: _base_ {base!r}: a package base is a .py config inside the package "
                              f"(no absolute path, no '..'); {TRUST_HINT}")
    spec = importlib.util.find_spec(package) if _installed(package) else None
    if spec is None or not spec.submodule_search_locations:
        extra = {'mmseg': 'seg', 'mmdet': 'det', 'mmaction': 'video'}.get(package, 'all')
        raise ConfigError(f"{at}: _base_ {base!r} needs the {package} package; pip install attn_plugins[{extra}]")
    try:
        path, _scope = Config._get_cfg_path(base, parent)   # mmengine's own resolution of pkg::path
    except (FileNotFoundError, ValueError, ModuleNotFoundError) as err:
        raise ConfigError(f"{at}: _base_ {base!r} not found in the installed {package} package ({err})") from None
    if not os.path.isfile(path):
        raise ConfigError(f"{at}: _base_ {base!r} not found in the installed {package} package (looked at {path})")
    if not trust and not _inside(path, spec.submodule_search_locations[0]):
        raise ConfigError(f"{at}: _base_ {base!r} resolves to {path}, outside the {package} package; {TRUST_HINT}")
    return Config.fromfile(path, import_custom_modules=trust).to_dict()   # custom_imports checked after the merge


def _local_base(base: str, at: str, parent: str, root: str, trust: bool) -> str:
    if not base.endswith(YAML_EXTS + ('.py', '.json')):
        raise ConfigError(f"{at}: _base_ {base!r} is not a config file (.yaml/.yml; .py/.json with --trust-config)")
    if not trust:
        if os.path.isabs(base) or base.startswith('~'):
            raise ConfigError(f"{at}: _base_ {base!r} is an absolute path: a base is relative to the config that "
                              f"names it; {TRUST_HINT}")
        if not base.endswith(YAML_EXTS):
            what = 'a Python config (reading it runs its code)' if base.endswith('.py') else 'not a YAML config'
            raise ConfigError(f"{at}: _base_ {base!r} is {what}: a YAML config's bases are .yaml/.yml files or an "
                              f"OpenMMLab package's .py configs (mmseg::path.py); {TRUST_HINT}")
    path = os.path.join(os.path.dirname(parent), os.path.expanduser(base))
    if not trust and not _inside(path, root):
        raise ConfigError(f"{at}: _base_ {base!r} resolves to {os.path.realpath(path)}, outside {root} (the "
                          f"config's directory, or its enclosing 'configs' directory); {TRUST_HINT}")
    if not os.path.isfile(path):
        raise ConfigError(f"{at}: _base_ file {base!r} not found (looked at {path})")
    return path


def _load_tree(path: str, root: str, trust: bool, chain: tuple[str, ...] = ()) -> dict:
    path = os.path.abspath(path)
    if path in chain:
        raise ConfigError(f"_base_: circular inheritance: {' -> '.join(chain + (path,))}")
    if not path.endswith(YAML_EXTS):                   # a .py/.json base, reached only with trust
        from mmengine.config import Config
        return Config.fromfile(path).to_dict()
    data, lines = _read(path, None if trust else MAX_ALIAS_EXPANSION)
    if not trust:
        _check_untrusted(data, lines)
    bases = data.pop('_base_', [])
    if not isinstance(bases, (str, list, tuple)):
        raise ConfigError(f"{lines(data, '_base_')}: _base_ must be a file path or a list of them, got {bases!r}")
    merged: dict = {}
    for index, base in enumerate([bases] if isinstance(bases, str) else bases):
        at = lines(data, '_base_', None if isinstance(bases, str) else index)
        if not isinstance(base, str):
            raise ConfigError(f"{at}: _base_ entries must be file paths, got {base!r}")
        if '::' in base:
            base_dict = _package_base(base, at, path, trust)
        else:
            base_dict = _load_tree(_local_base(base, at, path, root, trust), root, trust, chain + (path,))
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
    out = {}
    for item in overrides:
        key, sep, value = str(item).partition('=')
        if not sep or not key:
            raise ConfigError(f"override {item!r}: expected KEY=VALUE (as --cfg-options)")
        out[key] = _parse_override_value(key, value)
    return out


def _parse_override_value(key: str, value: str):
    """mmengine's --cfg-options value syntax (`1`, `x`, `[1, 2]`, `(1333, 800)`); what its parser
    trips on (an AssertionError, or endless recursion on a YAML tag before brackets) names the option."""
    from mmengine.config import DictAction
    if re.match(r'\s*!!?[\w/]*\s*[\[(]', value):       # `!!python/tuple [1, 2]`, `!tuple [1, 2]`
        raise ConfigError(f"--cfg-options {key}={value}: YAML tags are not --cfg-options syntax; "
                          "write a tuple as (a, b) and a list as [a, b]")
    try:
        return DictAction._parse_iterable(value)
    except (AssertionError, RecursionError):
        raise ConfigError(f"--cfg-options {key}={value}: unbalanced brackets; "
                          "write a tuple as (a, b) and a list as [a, b]") from None


def load_config(path: str, overrides: Sequence[str] | Mapping[str, Any] | None = None, trust: bool = False):
    """Load a .yaml/.yml config safely (see the module docstring), or a .py config, into an mmengine.Config.

    A .py config is Python: loading it runs it, as mmengine does. trust=True (the tools'
    --trust-config) lifts the YAML limits: .py, absolute and outside bases, any custom_imports and
    registry names, unbounded aliases. Python tags other than tuples stay rejected.
    """
    from mmengine.config import Config
    path = str(path)
    if not path.endswith(YAML_EXTS + ('.py',)):
        raise ConfigError(f"config {path!r}: expected a .yaml, .yml or .py file")
    if not os.path.exists(path):
        raise ConfigError(f"config file {path!r} not found")
    if path.endswith('.py'):
        cfg = Config.fromfile(path)
    else:
        try:
            cfg = Config(_load_tree(path, _config_root(path), trust), filename=os.path.abspath(path))
        except KeyError as err:                     # mmengine's reserved keys (filename, text, ...)
            raise ConfigError(f"{path}: {err.args[0]}") from None
    extra = parse_overrides(overrides)
    if extra:
        cfg.merge_from_dict(extra)
    if not trust and not path.endswith('.py'):       # package bases and overrides, after the merge
        _check_untrusted(cfg.to_dict(), lambda *_: f"{path} (merged with its bases and overrides)")
    imports = cfg.get('custom_imports')
    if imports:
        from mmengine.utils import import_modules_from_strings
        import_modules_from_strings(**imports)
    return cfg


def is_inject_attention(model_cfg: Mapping[str, Any]) -> bool:
    """Whether a model config builds `InjectAttention` (whose `plugins` key is its own argument)."""
    return model_cfg.get('type') in ('InjectAttention', 'attn_plugins.InjectAttention')


def build_model(model_cfg: Mapping[str, Any], example_input=None):
    """Build `model:` from a config: 'timm/<name>' goes through timm, anything else through
    mmengine's MODELS; a `plugins:` list (injector specs) is applied afterwards (InjectAttention's own
    `plugins` are its argument)."""
    cfg = dict(model_cfg)
    plugins = None if is_inject_attention(cfg) else cfg.pop('plugins', None)
    model_type = cfg.get('type')
    if not isinstance(model_type, str):
        raise ConfigError(f"model.type: expected a model name such as 'timm/resnet50', got {model_type!r}")
    from .injector import config_keys
    with config_keys(model_cfg, 'model'):           # spec errors name their config key
        if model_type.startswith('timm/'):
            from .integrations.timm import create_model
            cfg.pop('type')
            return create_model(model_type[len('timm/'):], plugins=plugins, example_input=example_input, **cfg)
        from .integrations.mmengine import inject_attention
        try:
            return inject_attention(cfg, plugins or [], example_input=example_input)
        except KeyError as err:
            raise ConfigError(f"model.type: {err}") from None
