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
    output_index: for targets that return a tuple/list/namedtuple/dict of maps (a backbone's
                 outputs): one block per listed output, e.g. [0, 1, 2, 3], or dict keys ['res4']
                 (position 'after' only); the output keeps its type
    channels:    optional; inferred from the target (norm/conv) or by one probing forward
    stack:       allow a second identical spec on the same target

Checked when injecting, with one probing forward on a zero image of the model's expected input
size (timm's `pretrained_cfg['input_size']`, else 3x64x64; sides first capped at 64 unless the
size is fixed, the full size if that fails; pass `example_input=` otherwise) on its
parameters' device and dtype: a target must run once per forward (a shared module, e.g. one
ReLU used twice, is refused), give (B, C, ...) maps (Linear layers and (B, C) vectors are
refused; a tuple/dict output needs `output_index`), and for 'replace' keep its input's shape.
Only one-map-in, one-map-out blocks (registry.IN_BLOCK_GATES) can be inserted. 'replace' on
the model itself (where: '.') is refused: inject works in place, so build the block instead.
When the model cannot run on that input (and channels are known without it) the run-once and
shape checks are skipped.

Base-model parameter names do not change: a block becomes a child of the module whose output it
takes (run from a forward hook that looks it up by attribute name, so deepcopy and pickling
work), or is appended to an nn.Sequential, or, 'after' a child that its parent's class runs a
block slot right after (`NATIVE_SLOTS`: timm ResNet's `se` after bn3 / bn2), goes into that free
slot (`layer1.0.se`, the place and parameter names of timm's own SE / CBAM, run without a hook;
with a second block after that child, both are hooked on it, in order).
A checkpoint of the base model therefore loads with only the plugin keys missing. Every insertion
is listed in `model.attn_plugins_report`.

A block hooked on a batch / instance norm (`after:bn2` outside a slot, 'after' / 'before' a norm)
takes the mode of the norm's owner (its parent), not the norm's: backbones that freeze their norms in
`train()` (mmdet / mmseg ResNets with `norm_eval=True`) put every BN, with its children, in eval. A
forward pre-hook on the owner (eager only, dropped by TorchScript; only where the owner's forward
takes one input, as ResNet blocks and stems do, so that TorchScript can type it) gives the block the owner's mode when
the norm's mode differs from the owner's, so the block trains in a trainable stage and stays in
eval in a frozen stage (`frozen_stages`), while the norm stays frozen; `.training` read between
`model.train()` and the next forward still shows the norm's mode.

A hook lives on its module object: a tool that replaces the host and moves its children over
(SyncBatchNorm conversion either way: mmengine's Runner reverts SyncBN in every non-distributed
run; timm's train.py --sync-bn) keeps the block but drops its hook, so the block silently stops
running. `reattach_blocks(model)` registers the hooks again from the report (our `build_runner`
does it after building the Runner, and its `CheckBlocksHook` re-checks before each train / val /
test run, failing with the block's path where it cannot heal); `detached_blocks(model)` lists
blocks that would not run.
"""
from __future__ import annotations

import contextlib
import contextvars
import copy
import difflib
import fnmatch
import inspect
import itertools
import linecache
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence, Tuple

import torch
import torch.nn as nn

from .registry import (IN_BLOCK_GATES, ConfigError, block_options, build, did_you_mean, get_block, input_dims,
                       snake_name)

SPEC_KEYS = ('type', 'where', 'regex', 'module_type', 'select', 'position', 'channels', 'stack', 'output_index')
POSITIONS = ('after', 'before', 'replace')
DEFAULT_PROBE_SIZE = (3, 64, 64)   # (C, H, W) of the probing input when the model declares none


@dataclass
class Insertion:
    """One block put into a model."""
    path: str            # module whose output (or input) the block transforms
    position: str
    type: str
    channels: int
    attr: str            # qualified name of the block itself
    options: dict = field(default_factory=dict)
    output_index: Any = None   # position 'after[i]': the output (list index or dict key) the block takes
    in_slot: bool = False      # 'after': run by the host's parent from its own block slot (NATIVE_SLOTS), no hook

    def __str__(self) -> str:
        return f"{self.attr}: {self.type}({self.channels}) {self.position} {self.path}"


# The hooks that run a block inserted 'after' or 'before' a module: module-level functions named
# after the block's attribute (`_after__attn_cbam`: output -> module.attn_cbam(output)), made from
# source once per name. They hold the name, not the block. TorchScript compiles hooks from their
# source, so torch.jit.script works on models whose hosts take and return one tensor; pickle finds
# them by name (the module __getattr__ below makes them again in a new process).
_HOOK_SOURCE = {
    'after': ("def {name}(module, args: Tuple[torch.Tensor], output: torch.Tensor) -> torch.Tensor:\n"
              "    return module.{attr}(output)\n"),
    'before': ("def {name}(module, args: Tuple[torch.Tensor]) -> Tuple[torch.Tensor]:\n"
               "    return (module.{attr}(args[0]),) + args[1:]\n"),
    # pre-hook on a norm's owner (see `_follow_owner`); eager only: TorchScript drops the branch
    'follow': ("def {name}(module, args: Tuple[torch.Tensor]) -> None:\n"
               "    if not torch.jit.is_scripting():\n"
               "        _follow_owner(module, {norm!r}, {block!r})\n"),
}


def _block_hook(kind: str, attr: str):
    """The forward hook ('after') or pre-hook ('before') that runs `module.<attr>`; for 'follow',
    `attr` is '<norm>__<block attribute>': the pre-hook on a norm's owner (`_follow_owner`)."""
    name = f'_{kind}__{attr}'
    if name not in globals():
        norm, _, block = attr.rpartition('__')
        if not (name.isidentifier() if kind == 'follow' else attr.isidentifier()):
            raise ConfigError(f"attn_plugins: block attribute {attr!r} is not an identifier")
        source = _HOOK_SOURCE[kind].format(name=name, attr=attr, norm=norm, block=block)
        filename = f'<attn_plugins.injector {name}>'
        linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)   # for inspect
        namespace = {'torch': torch, 'Tuple': Tuple, '_follow_owner': _follow_owner}
        exec(compile(source, filename, 'exec', dont_inherit=True), namespace)  # noqa: S102 - our template
        hook = namespace[name]
        hook.__module__ = __name__
        globals()[name] = hook
    return globals()[name]


# the norms whose mode matters and that backbones freeze (mmdet / mmseg `norm_eval`: `_BatchNorm`);
# group / layer norms compute the same in train and eval
NORM_TYPES = (nn.modules.batchnorm._NormBase,)


def _follow_owner(owner: nn.Module, norm_name: str, attr: str) -> None:
    """Before `owner` runs: a block hooked on its norm child takes the owner's mode where the norm's
    mode differs from it (a frozen norm: mmdet/mmseg `norm_eval=True` puts every BN, and so every
    child of it, in eval in `train()`); a block the user put in another mode under a norm that
    follows its owner is left as it is. A block whose parameters are all frozen stays in eval: a
    `frozen_stages` stem (mmdet ResNet: `norm1.eval()`, its parameters, the block's too, frozen)
    is owned by the backbone, which trains."""
    norm = owner._modules.get(norm_name)
    block = norm._modules.get(attr) if norm is not None else None
    if block is not None and norm.training != owner.training and block.training != owner.training \
            and not (owner.training and _frozen(block)):
        block.train(owner.training)


def _frozen(block: nn.Module) -> bool:
    """Whether `block` has parameters and none of them requires a gradient."""
    trainable = [p.requires_grad for p in block.parameters()]
    return bool(trainable) and not any(trainable)


def _owner_of(model: nn.Module, path: str, host: nn.Module) -> tuple[nn.Module, str] | None:
    """(owner, child name) of a norm host at `path` inside `model` that a backbone can freeze (a
    batch / instance norm: what `norm_eval` puts in eval); None for another host, the model itself,
    a child name that cannot be part of an identifier (it names the pre-hook), or an owner whose forward takes
    more than one input (TorchScript types the pre-hook's input as one tensor: scripting would fail)."""
    if not path or not isinstance(host, NORM_TYPES):
        return None
    parent_path, _, name = path.rpartition('.')
    try:
        owner = model.get_submodule(parent_path) if parent_path else model
    except AttributeError:
        return None
    if not f'_{name}'.isidentifier() or not _one_input(owner):      # '1' (a Sequential's child) names one
        return None
    return owner, name


def _one_input(module: nn.Module) -> bool:
    """Whether `module.forward` takes exactly one argument."""
    try:
        params = list(inspect.signature(module.forward).parameters.values())
    except (TypeError, ValueError):
        return False
    return len(params) == 1 and params[0].kind in (params[0].POSITIONAL_ONLY, params[0].POSITIONAL_OR_KEYWORD)


def _register_follow(owner: nn.Module, name: str, attr: str) -> bool:
    """The mode pre-hook for block `attr` of `owner`'s norm child `name`, registered where missing;
    whether it was."""
    hook = _block_hook('follow', f'{name}__{attr}')
    if any(h is hook for h in owner._forward_pre_hooks.values()):
        return False
    owner.register_forward_pre_hook(hook)
    return True


def _hook_follow(model: nn.Module, path: str, host: nn.Module, attr: str) -> None:
    """A block hooked on a norm (not the model itself) follows the norm's owner: it starts in the
    owner's mode, and a pre-hook on the owner keeps it there where the norm is frozen."""
    found = _owner_of(model, path, host)
    if found is None:
        return
    owner, name = found
    host._modules[attr].train(owner.training)
    _register_follow(owner, name, attr)


def __getattr__(name: str):
    kind, sep, attr = name[1:].partition('__')
    if name.startswith('_') and sep and kind in _HOOK_SOURCE:
        return _block_hook(kind, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _ApplyToOutputs:
    """Forward hook for modules returning a tuple/list: output[i] -> module.<attr_i>(output[i])."""

    def __init__(self, attrs: dict[int, str]):
        self.attrs = dict(attrs)

    def __call__(self, module, args, output):
        if isinstance(output, Mapping):
            out = copy.copy(output)              # a dict of the same type, keys in order
            for key, attr in self.attrs.items():
                out[key] = getattr(module, attr)(output[key])
            return out
        out = list(output)
        for index, attr in self.attrs.items():
            out[index] = getattr(module, attr)(out[index])
        if hasattr(output, '_fields'):           # namedtuple
            return type(output)(*out)
        return type(output)(out) if isinstance(output, tuple) else out


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
        if not isinstance(sel, Sequence) or isinstance(sel, str) or not all(_is_int(i) for i in sel):
            raise ConfigError(f"{where}.select: expected a list of match indices (ints, not booleans), got {sel!r}")
        try:
            found = [found[i] for i in sel]
        except IndexError:
            raise ConfigError(f"{where}.select: {sel} out of range for {len(found)} matches") from None
    return found


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------- channels
def static_channels(module: nn.Module) -> int | None:
    """Output channels of common map layers (norm, conv) without running them."""
    if isinstance(module, nn.modules.batchnorm._BatchNorm) or isinstance(module, nn.modules.instancenorm._InstanceNorm):
        return module.num_features
    if isinstance(module, nn.GroupNorm):
        return module.num_channels
    if isinstance(module, nn.modules.conv._ConvNd):
        return module.out_channels
    return None


def _floating_reference(*modules: nn.Module) -> torch.Tensor | None:
    """The first floating-point parameter or buffer of the first module that has one."""
    for module in modules:
        for tensor in itertools.chain(module.parameters(), module.buffers()):
            if tensor.is_floating_point():
                return tensor
    return None


def _expected_input(model: nn.Module) -> tuple[tuple[int, ...], bool]:
    """(C, H, W) the model expects (timm's `pretrained_cfg` / `default_cfg`), and whether it is fixed."""
    cfg = getattr(model, 'pretrained_cfg', None) or getattr(model, 'default_cfg', None) or {}
    get = cfg.get if isinstance(cfg, Mapping) else lambda key: getattr(cfg, key, None)
    return tuple(get('input_size') or DEFAULT_PROBE_SIZE), bool(get('fixed_input_size'))


def default_example_input(model: nn.Module, max_side: int | None = None) -> torch.Tensor:
    """A zero image for the probing forward: the model's expected input size (timm's
    `pretrained_cfg` / `default_cfg` 'input_size', else DEFAULT_PROBE_SIZE; sides capped at
    `max_side` unless the size is fixed), on the device and in the floating dtype of the model's
    parameters."""
    size, fixed = _expected_input(model)
    if max_side and not fixed:
        size = (size[0], *(min(side, max_side) for side in size[1:]))
    ref = _floating_reference(model)
    return torch.zeros(1, *size, dtype=ref.dtype if ref is not None else None,
                       device=ref.device if ref is not None else None)


def _shape_of(value):
    """Shape of a tensor; a list of them for a tuple/list, a dict for a dict; else None."""
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)):
        return [_shape_of(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _shape_of(v) for k, v in value.items()}
    return None


def _channels_of(shape):
    """Channels (dim 1) of a probed shape; a list/dict of them for several outputs; else None."""
    if isinstance(shape, tuple):
        return shape[1] if len(shape) >= 2 else None
    if isinstance(shape, list):
        return [_channels_of(s) for s in shape]
    if isinstance(shape, dict):
        return {k: _channels_of(s) for k, s in shape.items()}
    return None


@dataclass
class _Probed:
    """What one module did in the probing forward."""
    calls: int = 0
    input: Any = None      # shape(s) of its first input, first call
    output: Any = None     # shape(s) of its output, first call


def probe(model: nn.Module, modules: Iterable[nn.Module], example_input=None, strict: bool = True):
    """Run one forward (eval, no grad) on `example_input` and return {id(module): _Probed} for
    `modules`. Without `example_input`: the model's expected input (`default_example_input`),
    first with its sides capped at DEFAULT_PROBE_SIZE (shapes' channels do not depend on the
    size; cheaper), then, if that forward fails, at the full size. A failing forward raises a
    ConfigError, or with strict=False returns None (the caller knows the channels without it)."""
    if example_input is not None:
        inputs = [example_input]
    else:
        small, full = default_example_input(model, max(DEFAULT_PROBE_SIZE[1:])), default_example_input(model)
        inputs = [small] if small.shape == full.shape else [small, full]
    seen: dict[int, _Probed] = {}
    handles = []
    for m in modules:
        if id(m) in seen:
            continue
        record = seen[id(m)] = _Probed()

        def hook(mod, args, out, _record=record):
            _record.calls += 1
            if _record.calls == 1:
                _record.input = _shape_of(args[0]) if args else None
                _record.output = _shape_of(out)
        handles.append(m.register_forward_hook(hook))
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        for attempt, example in enumerate(inputs):
            for record in seen.values():
                record.calls, record.input, record.output = 0, None, None
            try:
                with torch.no_grad():
                    model(example)
                break
            except Exception as err:  # noqa: BLE001 - retried, or re-raised with context
                if attempt + 1 < len(inputs):
                    continue
                if not strict:
                    return None
                raise ConfigError(f"could not infer channels by a probing forward on a {_describe(example)} "
                                  f"({type(err).__name__}: {err}); set 'channels' in the plugin spec or pass "
                                  "example_input=") from err
    finally:
        for m, training in modes:
            m.training = training
        for h in handles:
            h.remove()
    return seen


def _describe(value) -> str:
    if isinstance(value, torch.Tensor):
        return f"{tuple(value.shape)} {str(value.dtype).replace('torch.', '')} input on {value.device}"
    return f"{type(value).__name__} input"


def probe_channels(model: nn.Module, modules: Iterable[nn.Module], example_input=None, before: bool = False,
                   strict: bool = True) -> dict:
    """Channels of each module's output (first input if `before`) from one probing forward: an
    int, or a list/dict of ints for modules returning several maps. With strict=False a failing
    forward gives {}."""
    seen = probe(model, modules, example_input, strict)
    if seen is None:
        return {}
    return {k: _channels_of(p.input if before else p.output) for k, p in seen.items() if p.calls}


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


def _join(path: str, name: str) -> str:
    return f'{path}.{name}' if path else name


def _block_options(spec: Mapping[str, Any]) -> dict[str, Any]:
    """The block's own options of a spec: every key that is not a spec key."""
    return {k: v for k, v in spec.items() if k not in SPEC_KEYS}


def _check_spec(spec: Mapping[str, Any], block_cls: type[nn.Module], where: str) -> None:
    """Unknown keys get a did-you-mean over spec keys and block options; only one-map-in,
    one-map-out blocks can be inserted into a forward."""
    options = block_options(block_cls)
    for key in spec:
        if key not in SPEC_KEYS and key not in options:
            raise ConfigError(f"{where}.{key}: unknown option for {block_cls.__name__}"
                              f"{did_you_mean(key, [*SPEC_KEYS, *options])} Spec keys: {', '.join(SPEC_KEYS)}; "
                              f"{block_cls.__name__} options: {', '.join(options) or 'none'}")
    if block_cls.__name__ not in IN_BLOCK_GATES:
        inputs = [n for n, p in inspect.signature(block_cls.forward).parameters.items()
                  if n != 'self' and p.default is p.empty and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        raise ConfigError(f"{where}.type: {block_cls.__name__} cannot be inserted into a model's forward: its forward "
                          f"takes {len(inputs)} inputs ({', '.join(inputs)}), not one feature map returned in the "
                          f"same shape; call it from your own forward (e.g. attn_plugins.PayAttentionVGG). "
                          f"Blocks inject can insert: {', '.join(IN_BLOCK_GATES)}")


def _check_target(path: str, module: nn.Module, kind: str, type_name: str, where: str) -> None:
    """Refusals decided by the module alone (before any forward)."""
    shown = path or '.'
    if kind == 'replace' and not path:
        raise ConfigError(f"{where}: position 'replace' with where: '.' would replace the model itself, which inject "
                          "(working in place) cannot do; build the block directly, or use 'after'/'before'")
    if isinstance(module, (nn.ModuleList, nn.ModuleDict)):
        if type(module).forward is not nn.Module.forward:     # e.g. timm's FeatureListNet (features_only=True)
            raise ConfigError(f"{where}: {shown!r} is a {type(module).__name__}, an nn."
                              f"{'ModuleDict' if isinstance(module, nn.ModuleDict) else 'ModuleList'} with a forward of its own (timm's FeatureListNet runs every child): a block added to it could run as one of its layers; "
                              "target its children instead (e.g. after each stage: where: 'layer*')")
        raise ConfigError(f"{where}: {shown!r} is a {type(module).__name__}, which has no forward; "
                          "select its elements instead (e.g. add '.*' to the pattern)")
    if isinstance(module, nn.Linear):
        raise ConfigError(f"{where}: {shown!r} is a Linear layer: it works on (B, C) vectors or channels-last "
                          f"tokens, not the (B, C, H, W) maps {type_name} needs; target a conv, norm or block "
                          "that gives feature maps")


def _check_probed(path: str, probed: _Probed, kind: str, type_name: str, where: str, options=None) -> None:
    """Refusals decided by what the module did in the probing forward."""
    shown = path or '.'
    if probed.calls > 1:
        raise ConfigError(f"{where}: {shown!r} runs {probed.calls} times in one forward (one module used in several "
                          f"places, e.g. a shared ReLU), so a {type_name} {kind} it would run {probed.calls} times; "
                          "target a module that runs once (e.g. the enclosing block, or a neighbouring conv/norm)")
    if not probed.calls:
        return
    value = probed.input if kind == 'before' else probed.output
    if isinstance(value, (list, dict)):
        described = f"a dict with keys {list(value)}" if isinstance(value, dict) else f"{len(value)} outputs"
        raise ConfigError(f"{where}: {shown!r} returns {described}; choose the maps to attend with "
                          "'output_index' (position 'after')")
    dims = input_dims(type_name, options, where)
    if isinstance(value, tuple) and len(value) != dims and not (dims == 3 and len(value) > 3):
        raise ConfigError(f"{where}: {type_name} needs {dims}-dimensional (B, C, ...) feature maps, but {shown!r} "
                          f"{'takes' if kind == 'before' else 'gives'} a {value} tensor (tokens (B, N, C) or vectors "
                          "are not maps; target a module that gives channels-first maps)")
    if kind == 'replace' and isinstance(probed.input, tuple) and probed.input != probed.output:
        raise ConfigError(f"{where}: position 'replace' needs a module whose output has its input's shape "
                          f"(the block takes its input and must give what follows the same shape); {shown!r} "
                          f"maps {probed.input} to {probed.output}")


def _place_like(block: nn.Module, *hosts: nn.Module) -> nn.Module:
    """Move a new block to the device and floating dtype of the module it joins, in the mode of the
    model (the last host): a block put into a model in eval mode is in eval mode too (its BN uses
    running statistics, not the batch's); one put after a frozen (eval) norm of a training model trains."""
    block.train(hosts[-1].training)
    ref = _floating_reference(*hosts)
    return block.to(device=ref.device, dtype=ref.dtype) if ref is not None else block


# Called with the model at the end of every `inject`. Integrations add theirs when they register
# (mmengine: `restore_blocks_on_init`, so the host's init_weights() ends with the blocks' own init).
AFTER_INJECT: list = []


# (config key, spec list) of every `plugins` list of the config whose model is being built (`config_keys`)
_CONFIG_KEYS: contextvars.ContextVar[tuple] = contextvars.ContextVar('attn_plugins_config_keys', default=())


@contextlib.contextmanager
def config_keys(cfg: Any, key: str = 'model'):
    """While a model is built from the config node `cfg` (at `key`), errors of `inject` name the config key of
    the spec list they come from ('model.backbone.plugins[1]'), found by value; 'plugins[1]' elsewhere."""
    found = []

    def walk(node, path):
        if isinstance(node, Mapping):
            for name, value in node.items():
                if name == 'plugins':
                    found.append((f'{path}.plugins', value))
                walk(value, f'{path}.{name}')
        elif isinstance(node, (list, tuple)):
            for i, value in enumerate(node):
                walk(value, f'{path}.{i}')
    walk(cfg, key)
    token = _CONFIG_KEYS.set(_CONFIG_KEYS.get() + tuple(found))
    try:
        yield
    finally:
        _CONFIG_KEYS.reset(token)


def _specs_key(plugins) -> str:
    """The config key holding the spec list `plugins` (`config_keys`); 'plugins' when none or several do."""
    keys = {key for key, specs in _CONFIG_KEYS.get() if specs == plugins}
    return keys.pop() if len(keys) == 1 else 'plugins'


def inject(model: nn.Module, plugins: Sequence[Mapping[str, Any]] | Mapping[str, Any], example_input=None) -> nn.Module:
    """Insert blocks into `model` (in place) and return it; see the module docstring for specs."""
    key = _specs_key(plugins)
    if isinstance(plugins, Mapping):
        plugins = [plugins]
    if isinstance(plugins, (str, bytes)) or not isinstance(plugins, Iterable):
        raise ConfigError(f"{key}: expected a list of specs (mappings with 'type' and 'where'), got {plugins!r}")
    report: list[Insertion] = list(getattr(model, 'attn_plugins_report', []))
    for idx, spec in enumerate(plugins):
        where = f'{key}[{idx}]'
        if not isinstance(spec, Mapping):
            raise ConfigError(f"{where}: expected a mapping with 'type' and 'where', got {spec!r}")
        block_cls = get_block(spec.get('type'), f'{where}.type')
        _check_spec(spec, block_cls, where)
        kind, child_name = _parse_position(spec.get('position', 'after'), where)
        if 'output_index' in spec:
            report.extend(_inject_outputs(model, spec, where, kind, child_name, example_input, block_cls))
            model.attn_plugins_report = report
            continue
        type_name = block_cls.__name__
        options = _block_options(spec)
        targets = select_modules(model, spec, where)
        # the module that hosts each block: the target itself, or its child for 'after:<child>'
        hosts = [(_join(path, child_name), _child(module, child_name, path or '.', where)) if child_name
                 else (path, module) for path, module in targets]
        for path, m in hosts:
            _check_target(path, m, kind, type_name, where)
        channels = {}
        for _, m in hosts:
            c = static_channels(m) if kind != 'before' else None
            if c is not None:
                channels[id(m)] = c
        needs_probe = 'channels' not in spec and any(id(m) not in channels for _, m in hosts)
        seen = probe(model, [m for _, m in hosts], example_input, strict=needs_probe) or {}
        for path, m in hosts:
            if id(m) in seen:
                _check_probed(path, seen[id(m)], kind, type_name, where, options)
                probed = _channels_of(seen[id(m)].input if kind == 'before' else seen[id(m)].output)
                if id(m) not in channels and isinstance(probed, int):
                    channels[id(m)] = probed
        if 'channels' in spec:
            for path, m in hosts:
                if isinstance(channels.get(id(m)), int) and channels[id(m)] != spec['channels']:
                    raise ConfigError(f"{where}.channels: {spec['channels']}, but {path or '.'!r} "
                                      f"{'takes' if kind == 'before' else 'gives'} {channels[id(m)]} channels")
            channels = {id(m): spec['channels'] for _, m in hosts}
        for path, module in hosts:
            if not isinstance(channels.get(id(module)), int):
                raise ConfigError(f"{where}: could not infer channels at {path or '.'!r} (it did not run in the "
                                  "probing forward); set 'channels' in the plugin spec")
            block = build({'type': spec['type'], **options}, where, channels=channels[id(module)])
            report.append(_insert(model, path, module, _place_like(block, module, model), kind,
                                  bool(spec.get('stack')), where, type_name, channels[id(module)], options))
        model.attn_plugins_report = report
    model.attn_plugins_report = report
    for hook in AFTER_INJECT:
        hook(model)
    return model


def _output_key(index) -> bool:
    return _is_int(index) or isinstance(index, str)


def _inject_outputs(model, spec, where, kind, child_name, example_input, block_cls) -> list[Insertion]:
    """One block per selected element of a module's tuple/list/namedtuple/dict output."""
    indices = spec['output_index']
    indices = [indices] if _output_key(indices) else indices
    if kind != 'after' or child_name is not None:
        raise ConfigError(f"{where}.output_index: only with position 'after' (the module's own outputs)")
    if not isinstance(indices, (list, tuple)) or not indices or not all(_output_key(i) for i in indices):
        raise ConfigError(f"{where}.output_index: expected an int, a dict key (str) or a list of them, got {indices!r}")
    type_name = block_cls.__name__
    options = _block_options(spec)
    targets = select_modules(model, spec, where)
    for path, module in targets:
        _check_target(path, module, kind, type_name, where)
    seen = probe(model, [m for _, m in targets], example_input, strict='channels' not in spec) or {}
    out = []
    for path, module in targets:
        shown = path or '.'
        probed = seen.get(id(module), _Probed())
        if probed.calls > 1:
            _check_probed(path, probed, kind, type_name, where, options)
        shapes = probed.output
        attrs = {}
        for index in indices:
            if isinstance(shapes, dict):
                shape = shapes.get(index)
            elif isinstance(shapes, list) and _is_int(index) and -len(shapes) <= index < len(shapes):
                shape = shapes[index]
            else:
                shape = None
            found = shape[1] if isinstance(shape, tuple) and len(shape) >= 3 else None
            if probed.calls and found is None:
                outputs = (f"keys {list(shapes)}" if isinstance(shapes, dict) else
                           f"{len(shapes)} outputs" if isinstance(shapes, list) else f"one {shapes} output")
                raise ConfigError(f"{where}.output_index: {shown!r} has no output {index!r} of shape (B, C, ...) "
                                  f"in a probing forward (it returns {outputs})")
            if 'channels' in spec and found is not None and found != spec['channels']:
                raise ConfigError(f"{where}.channels: {spec['channels']}, but output {index!r} of {shown!r} "
                                  f"gives {found} channels")
            channels = spec['channels'] if 'channels' in spec else found
            if not isinstance(channels, int):
                raise ConfigError(f"{where}: could not infer channels at {shown!r} (it did not run in the "
                                  "probing forward); set 'channels' in the plugin spec")
            block = _place_like(build({'type': spec['type'], **options}, where, channels=channels), module, model)
            suffix = str(index) if _is_int(index) else '_' + re.sub(r'\W', '_', index)
            attr = _attr_name(module, f"{type_name}Out{suffix}", bool(spec.get('stack')), shown, where)
            module.add_module(attr, block)
            attrs[index] = attr
            out.append(Insertion(shown, f'after[{index}]', type_name, channels, _join(path, attr), options, index))
        module.register_forward_hook(_ApplyToOutputs(attrs))
    return out


# Host classes whose forward runs a block slot right after one of their children, as
# {class: {child name: slot attribute}}: the slot holds None (no block) or a module. Integrations fill
# it when their framework is imported (timm: ResNet's Bottleneck runs `self.se` right after bn3,
# BasicBlock after bn2). A block put 'after' such a child goes into the free slot instead of a hook:
# a forward hook runs inside the child's call, while the child's input is still alive, so every
# block held one more activation; SE-ResNet-50 (timm, 224x224, 2 threads, 60 balanced rounds) ran
# 4.5% slower with the blocks hooked after bn3 than with the same blocks in the slot, CBAM 2.0%.
NATIVE_SLOTS: dict[type, dict[str, str]] = {}


def _slot_after(model: nn.Module, path: str):
    """(slot path, parent, slot attribute) when the module at `path` is a child after which its
    parent's class runs a block slot (`NATIVE_SLOTS`), else None."""
    parent_path, _, name = path.rpartition('.')
    if not name:
        return None
    parent = model.get_submodule(parent_path) if parent_path else model
    for cls in type(parent).__mro__:
        slot = NATIVE_SLOTS.get(cls, {}).get(name)
        if slot is not None:
            # a subclass with its own forward may not run the slot (or not there): hook instead
            return (_join(parent_path, slot), parent, slot) if hasattr(parent, slot) and \
                type(parent).forward is cls.forward else None
    return None


def recorded_insertions(model: nn.Module):
    """(path of the report's holder, holder, record) for every insertion recorded in any
    attn_plugins_report inside `model`, in module and report order (a model injected at creation,
    e.g. by create_model / TimmBackbone, may be injected again from outside, or wrapped)."""
    for prefix, holder in model.named_modules():
        for record in getattr(holder, 'attn_plugins_report', None) or []:
            yield prefix, holder, record


def _after_records(model: nn.Module) -> list[tuple[str, str, Insertion]]:
    """(qualified host path, qualified block path, record) of every 'after' insertion inside `model`."""
    return [(_join(prefix, record.path), _join(prefix, record.attr), record)
            for prefix, _, record in recorded_insertions(model) if record.position == 'after']


def _insert_after_in_slot(model, path, block, stack, where, type_name, channels, options) -> Insertion | None:
    """Put a block 'after' the module at `path` into its parent's free slot. None where there is no
    slot, or the model's own block holds it (e.g. timm's `attn_layer`: the hook on the module then
    runs ours right after it, before that block, as for any module), or ours already runs after the
    module: a second block there (`stack`) joins the first under the module, both hooked in order
    (the first is moved out of the slot: nested in it, the second would be hidden from
    `reset_attention_blocks`, `attn-plugins plan` and viz, which stop at the outermost block)."""
    found = _slot_after(model, path)
    if found is None:
        return None
    slot_path, parent, slot = found
    records = _after_records(model)
    current = getattr(parent, slot)
    if current is None:
        if any(host == path for host, _, _ in records):
            return None         # ours already hooked after it: the next one runs after those
        setattr(parent, slot, block)
        return Insertion(path, 'after', type_name, channels, slot_path, options, in_slot=True)
    record = next((r for _, attr, r in records if getattr(r, 'in_slot', False) and attr == slot_path), None)
    if record is None:
        return None
    if record.type == type_name and not stack:
        raise ConfigError(f"{where}: {type_name} is already injected at {path!r}; set 'stack: true' to add another")
    host = model.get_submodule(path)
    attr = _attr_name(host, record.type, True, path, where)
    setattr(parent, slot, None)
    host.add_module(attr, current)
    host.register_forward_hook(_block_hook('after', attr))
    _hook_follow(model, path, host, attr)
    record.attr, record.in_slot = _join(record.path, attr), False
    return None


def _insert(model, path, module, block, kind, stack, where, type_name, channels, options) -> Insertion:
    shown = path or '.'
    if kind == 'after' and path and not isinstance(module, nn.Sequential):
        slotted = _insert_after_in_slot(model, path, block, stack, where, type_name, channels, options)
        if slotted is not None:
            return slotted
    if kind == 'replace':
        parent_path, _, name = path.rpartition('.')
        parent = model.get_submodule(parent_path) if parent_path else model
        setattr(parent, name, block)
        return Insertion(path, 'replace', type_name, channels, path, options)
    if isinstance(module, nn.Sequential) and kind == 'after':
        attr = _attr_name(module, type_name, stack, shown, where)
        module.add_module(attr, block)       # runs last; existing indices keep their names
        return Insertion(shown, 'after', type_name, channels, _join(path, attr), options)
    if isinstance(module, nn.Sequential):
        raise ConfigError(f"{where}: 'before' on the nn.Sequential {shown!r} would change its layer indices; "
                          "target its first layer instead")
    attr = _attr_name(module, type_name, stack, shown, where)
    module.add_module(attr, block)
    if kind == 'after':
        module.register_forward_hook(_block_hook('after', attr))
    else:
        module.register_forward_pre_hook(_block_hook('before', attr))
    _hook_follow(model, path, module, attr)
    return Insertion(shown, kind, type_name, channels, _join(path, attr), options)


# ---------------------------------------------------------------- re-attaching
def _recorded_blocks(model: nn.Module):
    """(report holder, record, qualified host path, host or None, block attribute, qualified block
    path) for every 'after' / 'before' / 'after[i]' insertion inside `model`, in report order, each
    block once ('replace' blocks are children like any other and need no hook)."""
    seen = set()
    for prefix, holder, record in recorded_insertions(model):
        if record.position not in ('after', 'before') and not record.position.startswith('after[') or \
                record.in_slot:
            continue        # 'replace' and slot blocks are children like any other: no hook
        host_path = '' if record.path == '.' else record.path
        attr = record.attr.rpartition('.')[2]
        block_path = _join(_join(prefix, host_path), attr)
        if block_path in seen:
            continue
        seen.add(block_path)
        try:
            host = holder.get_submodule(host_path) if host_path else holder
        except AttributeError:
            host = None
        yield holder, record, _join(prefix, host_path), host, attr, block_path


def _hook_kind(record: Insertion, host: nn.Module) -> str:
    """How the block runs: 'sequential' (appended to an nn.Sequential, no hook), 'after', 'before'
    or 'outputs' (an `_ApplyToOutputs` forward hook)."""
    if record.position == 'after':
        return 'sequential' if isinstance(host, nn.Sequential) else 'after'
    return 'before' if record.position == 'before' else 'outputs'


def _output_index(record: Insertion):
    """The output an 'after[i]' block takes (reports pickled before `output_index` was recorded:
    read from the position)."""
    if record.output_index is not None:
        return record.output_index
    text = record.position[len('after['):-1]
    return int(text) if re.fullmatch(r'-?\d+', text) else text


def _attached(host: nn.Module, attr: str, kind: str) -> bool:
    if kind == 'sequential':
        return True
    if kind == 'before':
        return any(h is _block_hook('before', attr) for h in host._forward_pre_hooks.values())
    if kind == 'after':
        return any(h is _block_hook('after', attr) for h in host._forward_hooks.values())
    return any(isinstance(h, _ApplyToOutputs) and attr in h.attrs.values() for h in host._forward_hooks.values())


def reattach_blocks(model: nn.Module) -> list[str]:
    """Register again the hooks that run injected blocks whose host module was replaced, and
    return the paths of those blocks.

    A block 'after' / 'before' a module (not an nn.Sequential) is a child of that module, run by a
    forward hook on it. Tools that rebuild a module and move its children over drop its hooks:
    mmengine's `revert_sync_batchnorm` (Runner.wrap_model, in every non-distributed run) and
    `convert_sync_batchnorm` (cfg `sync_bn`), `nn.SyncBatchNorm.convert_sync_batchnorm`, timm's
    `convert_sync_batchnorm` (train.py --sync-bn). The block stays in the state dict but no longer
    runs. This finds every insertion of every `attn_plugins_report` inside `model` (a wrapper
    such as DDP too) whose host lacks its hook and registers the same hook again, in report
    order, and the mode pre-hook on a norm host's owner where the owner lost it (a block counts
    as re-attached then too); hooks still in place are left alone (idempotent). Then the `AFTER_INJECT` callbacks run
    again on each report's model (mmengine: the blocks' own init through the new host's
    init_weights). `attn_plugins.runner.build_runner` calls it after building the Runner; call it
    yourself after such a conversion."""
    reattached, touched = [], []
    output_hooks: dict[int, tuple[nn.Module, list[dict]]] = {}
    for holder, record, host_path, host, attr, block_path in _recorded_blocks(model):
        if host is None or attr not in host._modules:
            continue        # gone: `detached_blocks` names it
        kind = _hook_kind(record, host)
        owner = _owner_of(model, host_path, host)
        if owner is not None and _register_follow(*owner, attr) and _attached(host, attr, kind):
            reattached.append(block_path)
        if _attached(host, attr, kind):
            continue
        if kind == 'after':
            host.register_forward_hook(_block_hook('after', attr))
        elif kind == 'before':
            host.register_forward_pre_hook(_block_hook('before', attr))
        else:           # one hook per run of distinct outputs, as each spec made one
            groups = output_hooks.setdefault(id(host), (host, []))[1]
            index = _output_index(record)
            if not groups or index in groups[-1]:
                groups.append({})
            groups[-1][index] = attr
        reattached.append(block_path)
        if not any(holder is t for t in touched):
            touched.append(holder)
    for host, groups in output_hooks.values():
        for attrs in groups:
            host.register_forward_hook(_ApplyToOutputs(attrs))
    for holder in touched:
        for callback in AFTER_INJECT:
            callback(holder)
    return reattached


def detached_blocks(model: nn.Module) -> list[str]:
    """Every recorded block (see `reattach_blocks`) that would not run in a forward of `model`,
    as '<block path>: <why>'; empty when all are in place."""
    problems = []
    for _, record, host_path, host, attr, block_path in _recorded_blocks(model):
        shown = host_path or '.'
        if host is None:
            problems.append(f"{block_path}: its host module {shown!r} is no longer in the model")
        elif attr not in host._modules:
            problems.append(f"{block_path}: no longer a child of {shown!r} ({type(host).__name__}); the module "
                            "was replaced without its children (e.g. a BN fused into a conv)")
        elif not _attached(host, attr, _hook_kind(record, host)):
            problems.append(f"{block_path}: the hook on {shown!r} ({type(host).__name__}) that runs it is gone "
                            "(the module was replaced, e.g. by a SyncBatchNorm conversion); call "
                            "attn_plugins.reattach_blocks(model)")
    return problems


def hooked_blocks(model: nn.Module) -> list[tuple[str, str, nn.Module]]:
    """(block path, host path, host) of every recorded block that a hook on its host runs (not
    those appended to an nn.Sequential, nor 'replace' blocks), in report order."""
    return [(block_path, host_path, host) for _, record, host_path, host, _, block_path in _recorded_blocks(model)
            if host is not None and _hook_kind(record, host) != 'sequential']
