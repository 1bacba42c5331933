"""`attn-plugins plan CONFIG`: what a config puts where and what it costs, before any training.

Builds the config's model (no data, no training, no weight downloads: `init_weights` is not
called), finds every attention block in it (injected by specs, OpenMMLab `plugins`, timm's
`attn_layer`, or part of a head such as DualAttentionHead's PAM and CAM) and runs one forward on
a random input counting parameters and FLOPs (`attn_plugins.analysis`). The model "without
blocks" is the same model with every attention block taken out (the identity in its place):
its totals are the model's minus the blocks' own (a block put in with position 'replace' took
the place of a module whose cost is not known here; such rows are marked).
"""
from __future__ import annotations

import copy
import json
import math
import os
import re
from typing import Any, Sequence

import torch
import torch.nn as nn

from .analysis import attention_blocks, block_channels, count_flops, count_params, flops
from .registry import ConfigError, did_you_mean

DEFAULT_SHAPE = (3, 224, 224)


# ---------------------------------------------------------------- building
def _registry_names(scope: str | None, kind: str = 'model') -> list[str]:
    """The type names of mmengine's `kind` registry ('model', 'task util', 'weight initializer')
    and of its children of `scope` (all children for None) and of attn_plugins."""
    from mmengine.registry import MODELS, TASK_UTILS, WEIGHT_INITIALIZERS
    root = {r.name: r for r in (MODELS, TASK_UTILS, WEIGHT_INITIALIZERS)}.get(kind, MODELS)
    names = set(root.module_dict)
    for child in root.children.values():
        if scope is None or child.scope == scope or child.scope == 'attn_plugins':
            names.update(child.module_dict)
    return sorted(names)


def _known_type(name: str) -> bool:
    from mmengine.registry import MODELS, TASK_UTILS, WEIGHT_INITIALIZERS
    for root in (MODELS, TASK_UTILS, WEIGHT_INITIALIZERS):
        try:
            with root.switch_scope_and_registry(None) as registry:     # the current scope's registry
                if registry.get(name) is not None:
                    return True
        except Exception:  # noqa: BLE001 - a scoped name of a scope that cannot be imported
            continue
    return False


def unknown_types(cfg: Any, key: str = 'model') -> list[tuple[str, str]]:
    """(config key, name) of every `type` in a model config that no registry of the current scope
    holds (models, task utils, weight initialisers); 'timm/<name>' model types are timm's."""
    found = []
    if isinstance(cfg, dict):
        name = cfg.get('type')
        if isinstance(name, str) and not name.startswith('timm/') and not _known_type(name):
            found.append((f'{key}.type', name))
        for k, v in cfg.items():
            if k != 'type':
                found += unknown_types(v, f'{key}.{k}')
    elif isinstance(cfg, (list, tuple)):
        for i, v in enumerate(cfg):
            found += unknown_types(v, f'{key}.{i}')
    return found


def registry_error(err: Exception, model_cfg: Any, scope: str | None) -> ConfigError | None:
    """A one-line ConfigError naming the config key and offering a did-you-mean, for mmengine's
    'X is not in the ... registry' or mmcv's 'Cannot find None in registry' (raised from any depth of
    a model config and not naming the key); None for another error."""
    text = str(err.args[0]) if err.args else str(err)
    # 'X is not in the mmdet::task util registry' (a registry name may have spaces)
    match = re.search(r"(\S+) is not in the (?:\S+::)?(.+?) registry", text)
    if not match and not re.search(r"Cannot find \S+ in registry", text):
        return None
    unknown = unknown_types(model_cfg)
    if not unknown:
        return None
    named = match.group(1).strip("'\"") if match else None
    key, name = next((u for u in unknown if u[1] == named), unknown[0])
    kind = match.group(2) if match and named == name else 'model'
    what = '' if kind == 'model' else f' {kind}'
    return ConfigError(f"{key}: unknown{what} type {name!r} (not registered in scope {scope or 'mmengine'!r})"
                       f"{did_you_mean(name, _registry_names(scope, kind))}")


MMCV_PLUGIN_KEYS = ('cfg', 'position', 'stages')
MMCV_PLUGIN_POSITIONS = ('after_conv1', 'after_conv2', 'after_conv3')
BASIC_BLOCK_DEPTHS = (18, 34)


def _is_mmcv_plugin(spec: Any) -> bool:
    """An OpenMMLab ResNet plugin spec (dict(cfg=dict(type=...), position='after_conv3', stages=...)),
    not an injector spec (type, where, ...)."""
    return isinstance(spec, dict) and ('cfg' in spec or 'stages' in spec
                                       or str(spec.get('position', '')).startswith('after_conv'))


def check_mmcv_plugins(cfg: Any, key: str = 'model') -> None:
    """Check every OpenMMLab ResNet `plugins` list of a model config (mmcv plugin specs) before it is
    built, raising a ConfigError naming the key (did-you-mean for typos): mmdet/mmseg ResNets assert
    a position without a message, drop an unknown spec key silently (`stage:` for `stages:` puts the
    block in every stage), refuse plugins in BasicBlock depths with 'Not implemented yet.', and an
    option typo of one of our blocks reaches its constructor as a TypeError naming no key. Unknown
    block types are named with a did-you-mean by `registry_error` once the build fails."""
    from .registry import BLOCKS, SCOPE, check_options
    if isinstance(cfg, (list, tuple)):
        for i, value in enumerate(cfg):
            check_mmcv_plugins(value, f'{key}.{i}')
        return
    if not isinstance(cfg, dict):
        return
    plugins = cfg.get('plugins')
    if isinstance(plugins, (list, tuple)) and any(_is_mmcv_plugin(spec) for spec in plugins):
        if cfg.get('depth') in BASIC_BLOCK_DEPTHS:
            raise ConfigError(f"{key}.plugins: a depth-{cfg['depth']} {cfg.get('type', 'ResNet')} is built of "
                              "BasicBlocks, which take no mmcv plugins (they go into Bottlenecks: depth 50, 101, "
                              "152); put blocks into a BasicBlock ResNet with InjectAttention")
        num_stages = cfg.get('num_stages', 4)
        for i, spec in enumerate(plugins):
            where = f'{key}.plugins.{i}'
            if not isinstance(spec, dict):
                raise ConfigError(f"{where}: expected a plugin spec dict(cfg=dict(type=...), position=...), got {spec!r}")
            if 'cfg' not in spec:
                hint = (f" (the block goes in 'cfg': {{cfg: {{type: {spec['type']}, ...}}, position: ...}})"
                        if 'type' in spec else '')
                raise ConfigError(f"{where}.cfg: missing{hint}; an mmcv plugin spec has keys "
                                  f"{', '.join(MMCV_PLUGIN_KEYS)}")
            for name in spec:
                if name not in MMCV_PLUGIN_KEYS:
                    raise ConfigError(f"{where}.{name}: unknown key of an mmcv plugin spec (the backbone would ignore "
                                      f"it){did_you_mean(name, MMCV_PLUGIN_KEYS)} Keys: cfg (the block: "
                                      "dict(type=...)), position (after_conv1/2/3), stages (one bool per stage; "
                                      "absent: every stage)")
            position = spec.get('position')
            if position not in MMCV_PLUGIN_POSITIONS:
                got = 'missing;' if position is None else (f'{position!r} is not a plugin position'
                                                           f'{did_you_mean(position, MMCV_PLUGIN_POSITIONS)}')
                raise ConfigError(f"{where}.position: {got} Positions: {', '.join(MMCV_PLUGIN_POSITIONS)}")
            stages = spec.get('stages')
            if stages is not None and (not isinstance(stages, (list, tuple)) or len(stages) != num_stages
                                       or not all(isinstance(s, bool) for s in stages)):
                raise ConfigError(f"{where}.stages: expected {num_stages} booleans, one per stage (num_stages="
                                  f"{num_stages}), got {stages!r}")
            block = spec['cfg']
            if not isinstance(block, dict) or not isinstance(block.get('type'), str):
                raise ConfigError(f"{where}.cfg: expected the block as a dict with a 'type', got {block!r}")
            name = block['type'][len(SCOPE) + 1:] if block['type'].startswith(SCOPE + '.') else block['type']
            if name in BLOCKS:            # our block: its options, as registry.build checks them
                options = {k: v for k, v in block.items() if k not in ('type', 'postfix', 'in_channels', 'channels')}
                check_options(BLOCKS[name], options, f'{where}.cfg')
    for name, value in cfg.items():
        if name != 'plugins' or not isinstance(value, (list, tuple)):
            check_mmcv_plugins(value, f'{key}.{name}')


def build_config_model(cfg) -> nn.Module:
    """The model of a loaded config (`attn_plugins.config.load_config`), built as training builds
    it: in the config's default scope, through mmengine's MODELS (or timm for 'timm/<name>'), with
    a top-level `plugins:` list injected. Weights are not initialised (nothing is downloaded)."""
    from mmengine.registry import init_default_scope

    from .config import build_model
    model_cfg = cfg.get('model')
    if not isinstance(model_cfg, dict):
        raise ConfigError(f"model: expected a mapping with 'type', got {type(model_cfg).__name__}")
    scope = cfg.get('default_scope')
    if scope:
        init_default_scope(scope)
    # as written: building updates the config in place (mmdet copies train_cfg into its heads)
    written = copy.deepcopy(model_cfg.to_dict() if hasattr(model_cfg, 'to_dict') else model_cfg)
    check_mmcv_plugins(written)
    try:
        return build_model(model_cfg)
    except (KeyError, ConfigError) as err:
        cause = err.__cause__ if isinstance(err.__cause__, KeyError) else err
        converted = registry_error(cause, written, scope)
        if converted is not None:
            raise converted from None
        raise
    except ValueError as err:
        converted = block_option_error(err, written)
        if converted is not None:
            raise converted from None
        raise


def block_option_error(err: ValueError, model_cfg) -> ConfigError | None:
    """A block of ours refusing an option value while a framework builds it (an mmdet / mmseg
    backbone's `plugins`, a head's block): the error with the config key that holds the value
    ("model.backbone.plugins.0.cfg.reduction: reduction: expected > 0, got -3"). None for errors
    raised outside attn_plugins (those keep their traceback)."""
    import traceback
    frames = traceback.extract_tb(err.__traceback__)
    package = os.path.dirname(os.path.abspath(__file__))
    if not frames or not os.path.abspath(frames[-1].filename).startswith(package + os.sep):
        return None
    message = str(err)
    match = re.match(r"(\w+): .*\bgot (.+)$", message)
    keys = []
    if match:
        option, got = match.groups()

        def walk(node, path):
            if isinstance(node, dict):
                for key, value in node.items():
                    if key == option and repr(value) == got:
                        keys.append(f"{path}.{key}")
                    walk(value, f"{path}.{key}")
            elif isinstance(node, (list, tuple)):
                for i, value in enumerate(node):
                    walk(value, f"{path}.{i}")
        walk(model_cfg, 'model')
    where = ' or '.join(keys) if keys else 'model'
    return ConfigError(f"{where}: {message}")


# ---------------------------------------------------------------- inputs
def parse_shape(text: str | Sequence[int]) -> tuple[int, ...]:
    """'512,1024' or '512x1024' (H, W; 3 channels), '3,512,1024' (C, H, W), or more values
    (a full input shape without the batch dimension, e.g. '1,3,8,224,224' for a video model)."""
    values = [text] if isinstance(text, str) else list(text)
    given = ' '.join(str(v) for v in values)         # as typed (argparse gives a list of words)
    parts = [p for v in values for p in re.split(r'[,x\s]+', str(v).strip()) if p]
    try:
        shape = tuple(int(p) for p in parts)
    except ValueError:
        raise ConfigError(f"--input-shape: expected integers such as 512,1024 or 3,512,1024, got {given!r}") from None
    if len(shape) < 2 or any(s < 1 for s in shape):
        raise ConfigError(f"--input-shape: expected H,W or C,H,W (positive), got {given!r}")
    return (3, *shape) if len(shape) == 2 else shape


def _pair(value) -> tuple[int, int] | None:
    """A side (int) or an (a, b) pair of ints, as a pair; None otherwise."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value, value
    if isinstance(value, (list, tuple)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return int(value[0]), int(value[1])
    return None


def _pipeline_size(cfg) -> tuple[tuple[int, int], int | None, str] | None:
    """(H, W) after the test (else val, else train) pipeline's last crop or resize, the clip length
    of a SampleFrames step, and where that came from."""
    for loader in ('test_dataloader', 'val_dataloader', 'train_dataloader'):
        dataset = (cfg.get(loader) or {}).get('dataset') or {}
        size, clip_len = None, None
        for transform in dataset.get('pipeline') or []:
            if not isinstance(transform, dict):
                continue
            clip_len = transform.get('clip_len', clip_len)
            crop = _pair(transform.get('crop_size')) or _pair(transform.get('size'))
            scale = transform.get('scale')
            if crop:                                        # crops are (h, w)
                size = crop
            elif _pair(scale):                              # mmcv scales are (w, h); -1 keeps the ratio
                width, height = _pair(scale)
                size = (height if height > 0 else width, width if width > 0 else height)
        if size is None and _pair(dataset.get('img_size')):
            size = _pair(dataset.get('img_size'))
        if size is not None:
            return size, clip_len, f"the {loader.split('_')[0]} pipeline"
    return None


def _example_input(cfg_node) -> list | None:
    """The first `example_input` shape (InjectAttention's probing input) in a model config."""
    if isinstance(cfg_node, dict):
        shape = cfg_node.get('example_input')
        if isinstance(shape, (list, tuple)) and len(shape) >= 3 and all(isinstance(s, int) for s in shape):
            return list(shape)
        for value in cfg_node.values():
            found = _example_input(value)
            if found:
                return found
    elif isinstance(cfg_node, (list, tuple)):
        for value in cfg_node:
            found = _example_input(value)
            if found:
                return found
    return None


def default_input_shape(cfg, model: nn.Module) -> tuple[tuple[int, ...], str]:
    """The input shape (without batch) a config implies, and where it came from: the data
    preprocessor's size, the model's `input_size`, the test pipeline's last crop or resize, an
    `example_input`, timm's input size, else 3x224x224. Video models (data preprocessor format 'NCTHW')
    get (clips=1, C, T, H, W)."""
    model_cfg = cfg.get('model') or {}
    pre = model_cfg.get('data_preprocessor') or {}
    video = pre.get('format_shape') == 'NCTHW'
    pipeline = _pipeline_size(cfg)
    clip_len = (pipeline[1] if pipeline else None) or 8
    if _pair(pre.get('size')) and not video:
        return (3, *_pair(pre['size'])), 'model.data_preprocessor.size'
    if _pair(model_cfg.get('input_size')):
        return (3, *_pair(model_cfg['input_size'])), 'model.input_size'
    if pipeline:            # what the model sees at test time (a full Kinetics config: 32x256x256 clips)
        (height, width), _, source = pipeline
        return ((1, 3, clip_len, height, width) if video else (3, height, width)), source
    example = _example_input(model_cfg)     # InjectAttention's probing input: for pipelines without a size
    if example:
        shape = tuple(example[1:])
        return ((1, *shape) if video and len(shape) == 4 else shape), 'the example_input in model'
    input_size = (getattr(model, 'pretrained_cfg', None) or {}).get('input_size')
    if input_size:
        return tuple(int(s) for s in input_size), "timm's pretrained_cfg input_size"
    return ((1, 3, clip_len, 224, 224) if video else DEFAULT_SHAPE), 'default'


def dummy_data_samples(scope: str | None, shape: Sequence[int]) -> list | None:
    """One data sample of the scope's structures (SegDataSample, DetDataSample, ...) with the
    image metainfo heads read at inference; None where the scope has no such class."""
    if not scope:
        return None
    import importlib
    try:
        structures = importlib.import_module(f'{scope}.structures')
    except ImportError:
        return None
    classes = [getattr(structures, n) for n in dir(structures) if n.endswith('DataSample')]
    if not classes:
        return None
    height, width = int(shape[-2]), int(shape[-1])
    meta = dict(img_shape=(height, width), ori_shape=(height, width), pad_shape=(height, width),
                batch_input_shape=(height, width), scale_factor=(1.0, 1.0), flip=False, img_path='')
    return [classes[0](metainfo=meta)]


def forward_call(model: nn.Module, inputs: torch.Tensor, scope: str | None):
    """A function running one inference forward of `model` on `inputs` (mmengine models in
    'tensor' mode, without the data preprocessor; any other module called directly)."""
    from mmengine.model import BaseModel
    if isinstance(model, BaseModel):
        samples = dummy_data_samples(scope, inputs.shape)
        return lambda: tensor_forward(model, inputs, samples)
    return lambda: model(inputs)


def tensor_forward(model: nn.Module, inputs, samples):
    """A mmengine model's 'tensor' forward through its heads (mmaction recognizers stop after the
    backbone unless asked for stage='head')."""
    import inspect
    extra = {}
    impl = getattr(model, '_forward', None)
    if impl is not None and 'stage' in inspect.signature(impl).parameters:
        extra['stage'] = 'head'
    return model(inputs, samples, mode='tensor', **extra)


# ---------------------------------------------------------------- the plan
def _reports(model: nn.Module) -> dict[str, Any]:
    """Block path -> the injector's Insertion record, from every attn_plugins_report in the model."""
    found = {}
    for prefix, module in model.named_modules():
        for record in getattr(module, 'attn_plugins_report', None) or []:
            found[f'{prefix}.{record.attr}' if prefix else record.attr] = (prefix, record)
    return found


def _via(model: nn.Module, path: str, reports: dict) -> str:
    """How the block got there: an injection spec, an OpenMMLab plugin, an AttentionNeck, or part of its parent."""
    if path in reports:
        prefix, record = reports[path]
        host = record.path if record.path != '.' else ''
        host = f'{prefix}.{host}' if prefix and host else (prefix or host or '.')
        return f"inject {record.position} {host}"
    parent_path, _, name = path.rpartition('.')
    parent = model.get_submodule(parent_path) if parent_path else model
    for attr, names in vars(parent).items():         # mmcv ResNet plugins: after_conv3_plugin_names, ...
        if attr.endswith('_plugin_names') and isinstance(names, (list, tuple)) and name in names:
            return f"plugin {attr[:-len('_plugin_names')]} of {type(parent).__name__}"
    placement = getattr(parent, 'placement', None)     # AttentionNeck's blocks run on backbone outputs, before the neck
    if callable(placement) and name.isdigit():
        neck = model.get_submodule(parent_path.rpartition('.')[0]) if '.' in parent_path else model
        return f"{placement(int(name))}, before {type(neck).__name__}"
    while parent_path and isinstance(parent, (nn.ModuleList, nn.ModuleDict, nn.Sequential)):
        parent_path = parent_path.rpartition('.')[0]          # the model part that holds the container
        parent = model.get_submodule(parent_path) if parent_path else model
    return f"part of {type(parent).__name__}"


def _cost(params: int, counter) -> dict:
    return dict(params=int(params), macs=int(counter.get('macs', 0)), other_flops=int(counter.get('other', 0)),
                flops=flops(counter))


def make_plan(config: str, cfg_options=None, input_shape=None, trust_config: bool = False) -> dict:
    """The plan of `config` as a dict (what `--json` writes)."""
    from collections import Counter

    from .config import load_config
    cfg = load_config(config, cfg_options, trust=trust_config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)        # the same weights every run: a detector's proposals, hence its FLOPs, depend on them
        model = build_config_model(cfg).eval()
    if input_shape is not None:
        shape, source = parse_shape(input_shape), '--input-shape'
    else:
        shape, source = default_input_shape(cfg, model)
    inputs = torch.randn((1, *shape), generator=torch.Generator().manual_seed(0))
    blocks = attention_blocks(model)
    try:
        count, _ = count_flops(forward_call(model, inputs, cfg.get('default_scope')), blocks)
    except (RuntimeError, ValueError, TypeError, AssertionError, IndexError) as err:
        raise ConfigError(f"{config}: the forward on a {'x'.join(map(str, (1, *shape)))} input ({source}) "
                          f"failed ({type(err).__name__}: {err}); pass --input-shape") from err
    reports = _reports(model)
    rows, added_params, added = [], 0, Counter()
    for path, block in blocks:
        params = count_params(block)
        record = reports.get(path, (None, None))[1]
        row = dict(path=path, type=_block_name(block), channels=block_channels(block, count.input_channels.get(path)),
                   via=_via(model, path, reports), calls=int(count.calls[path]),
                   replaces=bool(record is not None and record.position == 'replace'),
                   **_cost(params, count.blocks[path]))
        if hasattr(block, 'in_channels') and isinstance(getattr(block, 'in_channels'), (list, tuple)):
            row['in_channels'] = list(block.in_channels)
        rows.append(row)
        added_params += params
        added.update(count.blocks[path])
    total_params = count_params(model)
    with_blocks = _cost(total_params, count.total)
    without = {k: with_blocks[k] - v for k, v in _cost(added_params, added).items()}
    return dict(config=config, model=type(model).__name__, input_shape=[1, *shape], input_shape_from=source,
                flops_convention=('macs: multiply-adds of convolutions and matrix products (as mmengine.analysis); '
                                  'other: element-wise ops, reductions, softmax (5 per element), norms, resizes, '
                                  'pools (see attn_plugins.analysis); flops = macs + other'),
                insertions=rows,
                totals=dict(with_blocks=with_blocks, without_blocks=without, added=_cost(added_params, added),
                            ratio={k: (with_blocks[k] / without[k] if without[k] else None)
                                   for k in ('params', 'flops')}),
                uncounted_ops=dict(sorted(count.uncounted.items())))


def _block_name(block: nn.Module) -> str:
    from .registry import BLOCKS
    for name, cls in BLOCKS.items():
        if type(block) is cls or type(block).__name__ == name:
            return name
    return type(block).__name__


def human(value: float, unit: str = '') -> str:
    """12345678 -> '12.35 M' (K, M, G, T)."""
    for scale, prefix in ((1e12, 'T'), (1e9, 'G'), (1e6, 'M'), (1e3, 'K')):
        if abs(value) >= scale:
            return f"{value / scale:.2f} {prefix}{unit}"
    return f"{value:g} {unit}".rstrip()


def format_plan(plan: dict) -> str:
    """The plan as a text table."""
    lines = [f"{plan['config']}: {plan['model']}, input {'x'.join(map(str, plan['input_shape']))} "
             f"(from {plan['input_shape_from']})"]
    rows = [('module path', 'block', 'channels', 'via', 'params', 'FLOPs', 'of which MACs')]
    for r in plan['insertions']:
        calls = f" x{r['calls']} calls" if r['calls'] > 1 else ('' if r['calls'] else ' (did not run)')
        rows.append((r['path'] + (' *' if r['replaces'] else ''), r['type'], str(r['channels']), r['via'],
                     f"{r['params']:,}", human(r['flops']) + calls, human(r['macs'])))
    totals = plan['totals']
    rows.append(('', '', '', '', '', '', ''))
    for key, label in (('with_blocks', 'total with blocks'), ('without_blocks', 'total without blocks'),
                       ('added', 'added by the blocks')):
        t = totals[key]
        rows.append((label, '', '', '', f"{t['params']:,}", human(t['flops']), human(t['macs'])))
    ratio = totals['ratio']
    rows.append(('with / without', '', '', '', _ratio(ratio['params']), _ratio(ratio['flops']), ''))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        lines.append('  '.join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))).rstrip())
    lines.append(f"{len(plan['insertions'])} attention block(s); 'without blocks': the same model with each "
                 "attention block taken out (the identity in its place).")
    lines.append(f"FLOPs: {plan['flops_convention']}.")
    if any(r['replaces'] for r in plan['insertions']):
        lines.append("* put in with position 'replace': the replaced module's cost is not subtracted")
    if plan['uncounted_ops']:
        lines.append("operators not counted (not in attn_plugins.analysis' tables): "
                     + ', '.join(f"{k} x{v}" for k, v in plan['uncounted_ops'].items()))
    return '\n'.join(lines)


def _ratio(value) -> str:
    return f"{value:.4f}x" if isinstance(value, (int, float)) and math.isfinite(value) else '-'


def plan_command(args) -> int:
    """`attn-plugins plan` (see cli.py)."""
    import warnings
    warnings.filterwarnings('ignore', category=UserWarning, module=r'mm(seg|det|engine|cv|action)')
    plan = make_plan(args.config, args.cfg_options, args.input_shape, args.trust_config)
    print(format_plan(plan))
    if args.json:
        folder = os.path.dirname(os.path.abspath(args.json))
        os.makedirs(folder, exist_ok=True)
        with open(args.json, 'w') as f:
            json.dump(plan, f, indent=2)
        print(f"wrote {args.json}")
    return 0
