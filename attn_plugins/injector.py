"""Put registered blocks into any nn.Module by name pattern, without editing its code.

A plugin spec (dict or YAML mapping):
    type:        block name ('CBAM', 'NonLocal', ...), plus any block options
    where:       glob over qualified module names: '*' = one dotted segment, '**' = any number,
                 '[1,3,5]' = one of these segments, 'layer*' = fnmatch within a segment;
                 '.' = the model itself (e.g. after a whole backbone)
    regex:       alternatively a regular expression over qualified names (full match)
    module_type: alternatively / additionally a class name ('Bottleneck')
    select:      optional index filter over the matches, in model order: [0, 2, -1]
    position:    'after:<child>' (block runs on that child's output, e.g. 'after:bn3' = inside
                 the residual block, before the add), 'after', 'before' or 'replace'
    output_index: for targets that return a tuple/list of maps (a backbone's outputs): one block
                 per listed output, e.g. [0, 1, 2, 3] (position 'after' only)
    channels:    optional; inferred from the target (norm/conv/linear) or by one probing forward
    stack:       allow a second identical spec on the same target

Base-model parameter names do not change: a block becomes a child of the module whose output it
takes (run from a forward hook that looks it up by attribute name, so deepcopy and pickling
work), or is appended to an nn.Sequential. A checkpoint of the base model therefore loads with
only the plugin keys missing. Every insertion is listed in `model.attn_plugins_report`.
"""
from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
import torch.nn as nn

from .registry import ConfigError, build, get_block, snake_name

SPEC_KEYS = ('type', 'where', 'regex', 'module_type', 'select', 'position', 'channels', 'stack', 'output_index')
POSITIONS = ('after', 'before', 'replace')


@dataclass
class Insertion:
    """One block put into a model."""
    path: str            # module whose output (or input) the block transforms
    position: str
    type: str
    channels: int
    attr: str            # qualified name of the block itself
    options: dict = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.attr}: {self.type}({self.channels}) {self.position} {self.path}"


class _ApplyAfter:
    """Forward hook: output -> module.<attr>(output). Holds the name, not the block."""

    def __init__(self, attr: str):
        self.attr = attr

    def __call__(self, module, args, output):
        return getattr(module, self.attr)(output)


class _ApplyToOutputs:
    """Forward hook for modules returning a tuple/list: output[i] -> module.<attr_i>(output[i])."""

    def __init__(self, attrs: dict[int, str]):
        self.attrs = dict(attrs)

    def __call__(self, module, args, output):
        out = list(output)
        for index, attr in self.attrs.items():
            out[index] = getattr(module, attr)(out[index])
        return type(output)(out) if isinstance(output, tuple) and not hasattr(output, '_fields') else out


class _ApplyBefore:
    """Forward pre-hook: first input -> module.<attr>(input)."""

    def __init__(self, attr: str):
        self.attr = attr

    def __call__(self, module, args):
        return (getattr(module, self.attr)(args[0]), *args[1:])


# ---------------------------------------------------------------- selection
def _segment_match(pattern: str, segment: str) -> bool:
    if pattern.startswith('[') and pattern.endswith(']'):
        choices = set()
        for part in pattern[1:-1].split(','):
            part = part.strip()
            if re.fullmatch(r'\d+-\d+', part):
                lo, hi = map(int, part.split('-'))
                choices.update(str(i) for i in range(lo, hi + 1))
            else:
                choices.add(part)
        return segment in choices
    return fnmatch.fnmatchcase(segment, pattern)


def glob_match(pattern: str, name: str) -> bool:
    """Match a dotted module name against a glob ('*' one segment, '**' any number)."""
    pats, segs = pattern.split('.'), name.split('.') if name else []

    def rec(i: int, j: int) -> bool:
        if i == len(pats):
            return j == len(segs)
        if pats[i] == '**':
            return any(rec(i + 1, k) for k in range(j, len(segs) + 1))
        return j < len(segs) and _segment_match(pats[i], segs[j]) and rec(i + 1, j + 1)
    return rec(0, 0)


def select_modules(model: nn.Module, spec: Mapping[str, Any], where: str) -> list[tuple[str, nn.Module]]:
    inserted = tuple(r.attr for r in getattr(model, 'attn_plugins_report', []))
    names = [(n, m) for n, m in model.named_modules()
             if n and not any(n == a or n.startswith(a + '.') for a in inserted)]
    if not any(k in spec for k in ('where', 'regex', 'module_type')):
        raise ConfigError(f"{where}: say which modules to use with 'where' (glob), 'regex' or 'module_type'")
    if spec.get('where') == '.':
        return [('', model)]
    found = names
    if 'where' in spec:
        found = [(n, m) for n, m in found if glob_match(str(spec['where']), n)]
    if 'regex' in spec:
        rx = re.compile(spec['regex'])
        found = [(n, m) for n, m in found if rx.fullmatch(n)]
    if 'module_type' in spec:
        found = [(n, m) for n, m in found if type(m).__name__ == spec['module_type']]
    if not found:
        pattern = spec.get('where') or spec.get('regex') or spec.get('module_type')
        all_names = [n for n, _ in names]
        near = difflib.get_close_matches(str(pattern), all_names, n=5, cutoff=0.3) or all_names[:5]
        raise ConfigError(f"{where}: pattern {pattern!r} matches no module of {type(model).__name__}; "
                          f"near module paths: {', '.join(near)}")
    if 'select' in spec:
        sel = spec['select']
        if not isinstance(sel, Sequence) or isinstance(sel, str) or not all(isinstance(i, int) for i in sel):
            raise ConfigError(f"{where}.select: expected a list of match indices, got {sel!r}")
        try:
            found = [found[i] for i in sel]
        except IndexError:
            raise ConfigError(f"{where}.select: {sel} out of range for {len(found)} matches") from None
    return found


# ---------------------------------------------------------------- channels
def static_channels(module: nn.Module) -> int | None:
    """Output channels of common layers without running them."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) or isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    if isinstance(module, nn.Linear):
        return module.out_features
    return None


def _channels_of(value):
    """Channels of a (B, C, ...) tensor, a list of them for a tuple/list output, else None."""
    if isinstance(value, torch.Tensor):
        return value.shape[1] if value.dim() >= 2 else None
    if isinstance(value, (tuple, list)):
        return [_channels_of(v) for v in value]
    return None


def probe_channels(model: nn.Module, modules: Iterable[nn.Module], example_input=None, before: bool = False,
                   strict: bool = True) -> dict:
    """Channels of each module's output (first input if `before`) from one forward on a small
    input: an int, or a list of ints for modules that return a tuple/list of maps. With
    strict=False a failing forward gives {} (the caller has channels from the config)."""
    if example_input is None:
        size = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
        chans = size.get('input_size', (3, 64, 64))[0]
        example_input = torch.zeros(1, chans, 64, 64)
    seen: dict[int, object] = {}
    handles = []
    for m in modules:
        def hook(mod, args, out=None, _id=id(m)):
            seen[_id] = _channels_of(args[0] if before else out)
        handles.append(m.register_forward_pre_hook(hook) if before else m.register_forward_hook(hook))
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(example_input)
    except Exception as err:  # noqa: BLE001 - re-raised with context
        if not strict:
            return {}
        raise ConfigError(f"could not infer channels by a probing forward ({err}); set 'channels' in the plugin "
                          "spec or pass example_input=") from err
    finally:
        model.train(was_training)
        for h in handles:
            h.remove()
    return seen


# ---------------------------------------------------------------- injection
def _parse_position(position: str, where: str) -> tuple[str, str | None]:
    kind, _, child = str(position).partition(':')
    if kind not in POSITIONS or (child and kind != 'after'):
        raise ConfigError(f"{where}.position: expected 'after:<child>', 'after', 'before' or 'replace', got {position!r}")
    return kind, child or None


def _child(module: nn.Module, name: str, path: str, where: str) -> nn.Module:
    if name not in module._modules:
        children = ', '.join(module._modules) or 'none'
        raise ConfigError(f"{where}.position: module {path!r} ({type(module).__name__}) has no child {name!r}; "
                          f"this position is not supported by that backbone. Its children: {children}")
    return module._modules[name]


def _attr_name(host: nn.Module, block_type: str, stack: bool, path: str, where: str) -> str:
    base = 'attn_' + snake_name(block_type)
    if base in host._modules and not stack:
        raise ConfigError(f"{where}: {block_type} is already injected at {path!r}; set 'stack: true' to add another")
    name, i = base, 1
    while name in host._modules:
        name, i = f'{base}_{i}', i + 1
    return name


def inject(model: nn.Module, plugins: Sequence[Mapping[str, Any]] | Mapping[str, Any], example_input=None) -> nn.Module:
    """Insert blocks into `model` (in place) and return it; see the module docstring for specs."""
    if isinstance(plugins, Mapping):
        plugins = [plugins]
    report: list[Insertion] = list(getattr(model, 'attn_plugins_report', []))
    for idx, spec in enumerate(plugins):
        where = f'plugins[{idx}]'
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: expected a mapping with 'type' and 'where', got {spec!r}")
        block_cls = get_block(spec.get('type'), f'{where}.type')
        kind, child_name = _parse_position(spec.get('position', 'after'), where)
        if 'output_index' in spec:
            report.extend(_inject_outputs(model, spec, where, kind, child_name, example_input, block_cls))
            continue
        options = {k: v for k, v in spec.items() if k not in SPEC_KEYS}
        targets = select_modules(model, spec, where)
        # the module that hosts each block: the target itself, or its child for 'after:<child>'
        hosts = [(f'{path}.{child_name}', _child(module, child_name, path, where)) if child_name else (path, module)
                 for path, module in targets]
        channels = {}
        for _, m in hosts:
            c = static_channels(m) if kind != 'before' else None
            if c is not None:
                channels[id(m)] = c
        missing = [m for _, m in hosts if id(m) not in channels]
        if missing:
            probed = probe_channels(model, missing, example_input, before=kind == 'before',
                                    strict='channels' not in spec)
            # a module returning several maps gets the block on the first (see output_index)
            channels.update({k: v[0] if isinstance(v, list) and v else v for k, v in probed.items()
                             if v is not None})
        if 'channels' in spec:
            for path, m in hosts:
                if isinstance(channels.get(id(m)), int) and channels[id(m)] != spec['channels']:
                    raise ConfigError(f"{where}.channels: {spec['channels']}, but {path!r} "
                                      f"{'takes' if kind == 'before' else 'gives'} {channels[id(m)]} channels")
            channels = {id(m): spec['channels'] for _, m in hosts}
        for path, module in hosts:
            if not isinstance(channels.get(id(module)), int):
                raise ConfigError(f"{where}: could not infer channels at {path!r} (it did not run in the probing "
                                  "forward); set 'channels' in the plugin spec")
            block = build({'type': spec['type'], **options}, where, channels=channels[id(module)])
            report.append(_insert(model, path, module, block, kind, bool(spec.get('stack')), where,
                                  block_cls.__name__, channels[id(module)], options))
    model.attn_plugins_report = report
    return model


def _inject_outputs(model, spec, where, kind, child_name, example_input, block_cls) -> list[Insertion]:
    """One block per selected element of a module's tuple/list output."""
    indices = spec['output_index']
    indices = [indices] if isinstance(indices, int) else indices
    if kind != 'after' or child_name is not None:
        raise ConfigError(f"{where}.output_index: only with position 'after' (the module's own outputs)")
    if not isinstance(indices, (list, tuple)) or not all(isinstance(i, int) for i in indices):
        raise ConfigError(f"{where}.output_index: expected an int or a list of ints, got {indices!r}")
    options = {k: v for k, v in spec.items() if k not in SPEC_KEYS}
    out = []
    for path, module in select_modules(model, spec, where):
        probed = [] if 'channels' in spec else probe_channels(model, [module], example_input).get(id(module))
        probed = probed if isinstance(probed, list) else [probed]
        attrs = {}
        for index in indices:
            channels = spec.get('channels') or (probed[index] if -len(probed) <= index < len(probed) else None)
            if not isinstance(channels, int):
                raise ConfigError(f"{where}.output_index: {path or type(model).__name__!r} has no output {index} "
                                  "of shape (B, C, ...) in a probing forward")
            block = build({'type': spec['type'], **options}, where, channels=channels)
            attr = _attr_name(module, f"{block_cls.__name__}Out{index}", bool(spec.get('stack')), path, where)
            module.add_module(attr, block)
            attrs[index] = attr
            out.append(Insertion(path or '.', f'after[{index}]', block_cls.__name__, channels,
                                 f'{path}.{attr}' if path else attr, options))
        module.register_forward_hook(_ApplyToOutputs(attrs))
    return out


def _insert(model, path, module, block, kind, stack, where, type_name, channels, options) -> Insertion:
    if kind == 'replace':
        parent_path, _, name = path.rpartition('.')
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, block)
        return Insertion(path, 'replace', type_name, channels, path, options)
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        raise ConfigError(f"{where}: {path!r} is a {type(module).__name__}, which has no forward; "
                          "select its elements instead (e.g. add '.*' to the pattern)")
    if isinstance(module, nn.Sequential) and kind == 'after':
        attr = _attr_name(module, type_name, stack, path, where)
        module.add_module(attr, block)       # runs last; existing indices keep their names
        return Insertion(path, 'after', type_name, channels, f'{path}.{attr}', options)
    if isinstance(module, nn.Sequential):
        raise ConfigError(f"{where}: 'before' on the nn.Sequential {path!r} would change its layer indices; "
                          "target its first layer instead")
    attr = _attr_name(module, type_name, stack, path, where)
    module.add_module(attr, block)
    if kind == 'after':
        module.register_forward_hook(_ApplyAfter(attr))
    else:
        module.register_forward_pre_hook(_ApplyBefore(attr))
    return Insertion(path, kind, type_name, channels, f'{path}.{attr}', options)
