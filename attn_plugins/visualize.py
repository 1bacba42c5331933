"""`attn-plugins viz CONFIG`: pictures of what each attention block of a model looks at.

Model-agnostic: the config's model is built (`plan.build_config_model`), optionally loaded from a
checkpoint, and run once on an image (through the config's test pipeline and the model's data
preprocessor, or resized and normalised for a plain timm model) or on sample N of the config's
test dataset. Forward hooks on every registered attention block (`analysis.attention_blocks`)
catch what it computed; one PNG per block, its module path in the title:

    SE                     channel weights s (bar plot)
    CBAM                   channel weights M_c (bars) and the spatial map M_s over the input
    PositionAttention      rows of S for the query pixels (`query_attention`: those rows only,
                           never N x N), over the input
    NonLocal               f(x_q, x_j) / C(x) of the query pixels (`query_attention`)
    ChannelAttention       the C x C channel attention
    DualAttention          its PAM rows and CAM matrix
    SpatialWeights, PyramidAttention, PayAttention (LTPA) and any other block that records an
    attention map (`record_attention`): the map over the input (bars for a channel vector)
    peers' blocks (timm SE / CBAM / ECA, `analysis.PEER_BLOCKS`): the outputs of their `gate` layers

Maps are upsampled to the model's input size; video maps (T, H, W) show the middle frame (the
query's), non-local keys are summed over time.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from .analysis import attention_blocks, block_classes
from .modules import (CBAM, SE, ChannelAttention, DualAttention, NonLocal, PositionAttention)
from .registry import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Panel:
    """One plot of a figure: kind 'bars' (vector), 'map' (2-D map over the input), 'matrix'."""
    kind: str
    data: np.ndarray
    title: str
    query: tuple[float, float] | None = None      # (x, y) in input pixels, marked on a map


@dataclass
class BlockPicture:
    path: str
    type: str
    panels: list[Panel] = field(default_factory=list)
    note: str = ''


# ---------------------------------------------------------------- inputs
@dataclass
class ModelInput:
    run: Callable[[], Any]         # one inference forward
    image: np.ndarray              # (H, W, 3) RGB in [0, 1]: what the model saw (after resizing / padding)
    source: str


def _display(tensor: torch.Tensor, mean=None, std=None, bgr: bool = False) -> np.ndarray:
    """A model input (C, H, W), (C, T, H, W) or with leading clip dims -> (H, W, 3) RGB in [0, 1]."""
    x = tensor.detach().float().cpu()
    while x.dim() > 3:
        x = x[:, x.shape[1] // 2] if x.dim() == 4 and x.shape[0] in (1, 3) else x[0]
    if mean is not None and std is not None:
        mean = torch.as_tensor(mean, dtype=torch.float32).flatten()[:, None, None]
        std = torch.as_tensor(std, dtype=torch.float32).flatten()[:, None, None]
        if mean.shape[0] == x.shape[0]:
            x = x * std + mean
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
    x = x[:3]
    if bgr:
        x = x.flip(0)
    scale = 255.0 if x.max() > 1.5 else 1.0
    return (x / scale).clamp(0, 1).permute(1, 2, 0).numpy()


def _pipeline_cfg(cfg):
    for loader in ('test_dataloader', 'val_dataloader'):
        dataset = (cfg.get(loader) or {}).get('dataset')
        if dataset:
            return loader, dataset
    return None, None


def _dataset_sample(cfg, index: int):
    from mmengine.registry import DATASETS
    loader, dataset_cfg = _pipeline_cfg(cfg)
    if dataset_cfg is None:
        raise ConfigError("--sample: the config has no test_dataloader.dataset or val_dataloader.dataset; "
                          "pass --image instead")
    with DATASETS.switch_scope_and_registry(None) as registry:
        dataset = registry.build(dataset_cfg)
    if not 0 <= index < len(dataset):
        raise ConfigError(f"--sample {index}: {loader}.dataset has {len(dataset)} samples (0 to {len(dataset) - 1})")
    return dataset[index], f"sample {index} of {loader}.dataset"


def _image_sample(cfg, path: str):
    from mmengine.dataset import Compose
    _, dataset_cfg = _pipeline_cfg(cfg)
    pipeline = [dict(t) for t in (dataset_cfg or {}).get('pipeline') or []
                if 'LoadAnnotations' not in str(t.get('type', ''))]
    if not pipeline:
        return None
    return Compose(pipeline)(dict(img_path=path)), f"{path} through the test pipeline"


def _check_image(path: str) -> None:
    if not os.path.isfile(path):
        raise ConfigError(f"--image {path!r}: no such file")


def prepare_input(cfg, model: nn.Module, image: str | None, sample: int | None,
                  input_shape: Sequence[int] | None = None) -> ModelInput:
    """The forward to run and the picture it sees (see the module docstring)."""
    from mmengine.model import BaseModel
    if image is not None:
        _check_image(image)
    if isinstance(model, BaseModel) and getattr(model, 'data_preprocessor', None) is not None:
        from mmengine.dataset import pseudo_collate

        from .plan import tensor_forward
        if image is not None:
            prepared = _image_sample(cfg, image)
        else:
            prepared = _dataset_sample(cfg, 0 if sample is None else sample)
        if prepared is not None:
            data, source = prepared
            batch = model.data_preprocessor(pseudo_collate([data]), False)
            inputs, samples = batch['inputs'], batch.get('data_samples')
            pre = model.data_preprocessor
            normalised = bool(getattr(pre, '_enable_normalize', False))
            shown = _display(inputs[0], getattr(pre, 'mean', None) if normalised else None,
                             getattr(pre, 'std', None) if normalised else None,
                             bgr=not getattr(pre, '_channel_conversion', False))
            return ModelInput(lambda: tensor_forward(model, inputs, samples), shown, source)
    if sample is not None:
        raise ConfigError("--sample: this model has no data pipeline in its config; pass --image instead")
    if image is None:
        raise ConfigError("viz: pass --image PATH (this config has no dataset to take a sample from)")
    return _timm_input(model, image, input_shape)


def _timm_input(model: nn.Module, path: str, input_shape: Sequence[int] | None) -> ModelInput:
    from PIL import Image
    pretrained = getattr(model, 'pretrained_cfg', None) or {}
    if input_shape is not None:
        size = tuple(input_shape)[-2:]
    else:
        size = tuple((pretrained.get('input_size') or (3, 224, 224))[-2:])
    try:
        picture = Image.open(path).convert('RGB').resize((size[1], size[0]), Image.BILINEAR)
    except OSError as err:
        raise ConfigError(f"--image {path!r}: not an image PIL can read ({err})") from None
    rgb = np.asarray(picture, dtype=np.float32) / 255.0
    mean = torch.tensor(pretrained.get('mean') or IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(pretrained.get('std') or IMAGENET_STD)[:, None, None]
    inputs = ((torch.from_numpy(rgb).permute(2, 0, 1) - mean) / std)[None]
    return ModelInput(lambda: model(inputs), rgb, f"{path} resized to {size[0]}x{size[1]}")


# ---------------------------------------------------------------- capture
def parse_queries(texts: Sequence[str] | None, height: int, width: int) -> list[tuple[float, float]]:
    """'x,y' pixel positions of the input image; default: the centre and two diagonal points."""
    if not texts:
        return [(width / 2, height / 2), (width / 4, height / 4), (3 * width / 4, 3 * height / 4)]
    queries = []
    for text in texts:
        try:
            x, y = (float(v) for v in str(text).split(','))
        except ValueError:
            raise ConfigError(f"--queries {text!r}: expected X,Y pixel coordinates such as 64,32") from None
        if not (0 <= x < width and 0 <= y < height):
            raise ConfigError(f"--queries {text!r}: outside the {width}x{height} model input (x < {width}, y < {height})")
        queries.append((x, y))
    return queries


def _flat_queries(queries, grid: Sequence[int], height: int, width: int) -> torch.Tensor:
    """Flat indices into a (…, h, w) feature grid (video: the middle frame) of input-pixel queries."""
    h, w = grid[-2], grid[-1]
    offset = (grid[0] // 2) * h * w if len(grid) == 3 else 0
    return torch.tensor([offset + min(int(y * h / height), h - 1) * w + min(int(x * w / width), w - 1)
                         for x, y in queries])


def _spatial(map_: torch.Tensor) -> np.ndarray:
    """A (…, H, W) or (…, T, H, W) map of sample 0 -> 2-D (the middle frame of a video map)."""
    m = map_.detach().float()[0]
    while m.dim() > 2:
        m = m[m.shape[0] // 2] if m.shape[0] > 1 else m[0]
    return m.cpu().numpy()


def _vector(values: torch.Tensor) -> np.ndarray:
    return values.detach().float()[0].flatten().cpu().numpy()


def _query_panels(name: str, rows: torch.Tensor, key_grid, queries) -> list[Panel]:
    panels = []
    for i, (x, y) in enumerate(queries):
        row = rows[0, i].reshape(*key_grid)
        if row.dim() == 3:
            row = row.sum(0)                  # video: over time
        panels.append(Panel('map', row.detach().float().cpu().numpy(), f"{name}\nquery ({x:.0f}, {y:.0f})", (x, y)))
    return panels


def _position_panels(block: PositionAttention, x: torch.Tensor, queries, height, width, name='position attention'):
    grid = tuple(x.shape[2:])
    rows = block.query_attention(x, _flat_queries(queries, grid, height, width))
    return _query_panels(name, rows, grid, queries)


def _non_local_panels(block: NonLocal, x: torch.Tensor, queries, height, width):
    if block.dim == 1:
        grid = (1, x.shape[-1])
        rows = block.query_attention(x, _flat_queries(queries, grid, 1, width))
        return [Panel('bars', rows[0, i].cpu().numpy(), f"non-local weights of position {int(q)}")
                for i, q in enumerate(_flat_queries(queries, grid, 1, width))]
    grid = tuple(x.shape[2:])
    rows = block.query_attention(x, _flat_queries(queries, grid, height, width))
    keys = tuple(block.pool(x[:1, :1]).shape[2:])
    return _query_panels(f"non-local ({block.mode})" + ('\nkeys summed over time' if len(keys) == 3 else ''),
                         rows, keys, queries)


def _recorded_panels(map_: torch.Tensor, name: str) -> list[Panel]:
    """Panels for an attention map recorded by a block, by its shape."""
    m = map_.detach().float()
    if m.dim() >= 2 and m[0].numel() == m.shape[1]:               # (B, C), (B, C, 1, 1): a channel vector
        return [Panel('bars', _vector(m), f"{name}: channel weights")]
    if m.dim() >= 4 and m.shape[1] == 1:                           # (B, 1, H, W) or (B, 1, T, H, W)
        return [Panel('map', _spatial(m[:, 0]), f"{name}: map" + (' (middle frame)' if m.dim() == 5 else ''))]
    if m.dim() == 3:                                              # (B, n, n) matrix
        return [Panel('matrix', m[0].cpu().numpy(), f"{name}: attention matrix")]
    return []


class _Capture:
    """Forward hooks keeping each block's first input; record_attention on where a block records
    only small maps (not PAM / non-local: those are computed for the queries afterwards)."""

    def __init__(self, blocks):
        self.inputs: dict[str, tuple] = {}
        self.channel_gates: dict[str, torch.Tensor] = {}
        self.peer_gates: dict[str, dict[str, torch.Tensor]] = {}
        self.handles, self.recording = [], []
        ours = block_classes(peers=False)
        for path, block in blocks:
            self.handles.append(block.register_forward_hook(self._keep_input(path)))
            if isinstance(block, CBAM):
                self.handles.append(block.channel_gate.register_forward_hook(self._keep_gate(path)))
            elif not isinstance(block, ours):     # a peer's block (timm SE / CBAM / ECA): its `gate` outputs
                for name, module in block.named_modules():
                    if name.rpartition('.')[2] == 'gate':
                        self.handles.append(module.register_forward_hook(self._keep_peer_gate(path, name)))
            for module in self._recorders(block):
                module.record_attention = True
                self.recording.append(module)

    @staticmethod
    def _recorders(block):
        if isinstance(block, (PositionAttention, NonLocal)):
            return []
        if isinstance(block, DualAttention):
            return [block.cam]
        return [block] if hasattr(block, 'record_attention') else []

    def _keep_input(self, path):
        def hook(module, args, output):
            self.inputs.setdefault(path, tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args))
        return hook

    def _keep_gate(self, path):
        def hook(module, args, output):
            self.channel_gates.setdefault(path, output.detach())
        return hook

    def _keep_peer_gate(self, path, name):
        def hook(module, args, output):
            if isinstance(output, torch.Tensor):
                self.peer_gates.setdefault(path, {}).setdefault(name, output.detach())
        return hook

    def close(self):
        for handle in self.handles:
            handle.remove()
        for module in self.recording:
            module.record_attention = False


def block_pictures(model: nn.Module, model_input: ModelInput, queries) -> list[BlockPicture]:
    """Run the forward once and describe what every attention block looked at."""
    blocks = attention_blocks(model)
    if not blocks:
        raise ConfigError("viz: the model has no attention blocks (nothing registered in attn_plugins was found)")
    capture = _Capture(blocks)
    try:
        with torch.no_grad():
            model_input.run()
            height, width = model_input.image.shape[:2]
            pictures = [_picture(path, block, capture, queries, height, width) for path, block in blocks]
    finally:
        capture.close()
    return pictures


def _picture(path, block, capture: _Capture, queries, height, width) -> BlockPicture:
    from .plan import _block_name
    picture = BlockPicture(path, _block_name(block))
    args = capture.inputs.get(path)
    if args is None:
        picture.note = 'did not run in this forward'
        return picture
    x = args[0] if args and isinstance(args[0], torch.Tensor) else None
    if isinstance(block, SE):
        picture.panels = [Panel('bars', _vector(block.attention_map), 'channel weights s')]
    elif isinstance(block, CBAM):
        picture.panels = [Panel('bars', _vector(capture.channel_gates[path]), 'channel weights M_c')]
        if block.attention_map is not None:
            picture.panels.append(Panel('map', _spatial(block.attention_map[:, 0]), 'spatial map M_s'))
    elif isinstance(block, PositionAttention):
        picture.panels = _position_panels(block, x, queries, height, width)
    elif isinstance(block, NonLocal):
        picture.panels = _non_local_panels(block, x, queries, height, width)
    elif isinstance(block, DualAttention):
        picture.panels = _position_panels(block.pam, x, queries, height, width, 'PAM')
        picture.panels += [Panel('matrix', block.cam.attention_map[0].float().cpu().numpy(), 'CAM channel attention')]
    elif isinstance(block, ChannelAttention):
        picture.panels = [Panel('matrix', block.attention_map[0].float().cpu().numpy(), 'channel attention (C x C)')]
    elif getattr(block, 'attention_map', None) is not None:
        picture.panels = _recorded_panels(block.attention_map, picture.type)
    else:
        for name, output in capture.peer_gates.get(path, {}).items():
            picture.panels += _recorded_panels(output, name)
    if not picture.panels:
        picture.note = 'records no attention map'
    return picture


# ---------------------------------------------------------------- drawing
def _upsample(map_: np.ndarray, height: int, width: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(map_, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(height, width), mode='bilinear', align_corners=False)[0, 0].numpy()


def _colorbar(fig, shown, ax) -> None:
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, shrink=0.75)
    bar.formatter.set_useOffset(False)          # 1.00002, not '1e-5 + 1'
    bar.update_ticks()


def draw(picture: BlockPicture, image: np.ndarray, path: str, title_extra: str = '') -> str:
    """One PNG for one block."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = picture.panels
    widths = [2.2 if p.kind == 'bars' else 1.0 for p in panels]
    fig, axes = plt.subplots(1, len(panels), figsize=(max(6.0, 3.6 * sum(widths)), 3.6), squeeze=False,
                             gridspec_kw=dict(width_ratios=widths))
    height, width = image.shape[:2]
    for ax, panel in zip(axes[0], panels):
        if panel.kind == 'bars':
            values = panel.data
            ax.bar(np.arange(len(values)), values, width=1.0, color='tab:blue')
            ax.axhline(float(values.mean()), color='tab:red', lw=1, label=f"mean {values.mean():.3f}")
            ax.set_xlim(-0.5, len(values) - 0.5)
            ax.set_xlabel('channel')
            ax.legend(loc='upper right', fontsize=7)
        elif panel.kind == 'matrix':
            shown = ax.imshow(panel.data, cmap='viridis', interpolation='nearest')
            ax.set_xlabel('channel j')
            ax.set_ylabel('channel i')
            _colorbar(fig, shown, ax)
        else:
            ax.imshow(image)
            shown = ax.imshow(_upsample(panel.data, height, width), cmap='jet', alpha=0.5)
            _colorbar(fig, shown, ax)
            if panel.query is not None:
                ax.plot([panel.query[0]], [panel.query[1]], marker='x', color='white', markersize=10, mew=3)
                ax.plot([panel.query[0]], [panel.query[1]], marker='x', color='black', markersize=8, mew=1.5)
            ax.axis('off')
        ax.set_title(panel.title, fontsize=9)
    fig.suptitle(f"{picture.path} ({picture.type}){title_extra}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
    return path


# ---------------------------------------------------------------- the command
def load_weights(model: nn.Module, checkpoint: str, work_dir: str) -> None:
    """Load a checkpoint strictly (weights_only; mmseg DAHead/NLHead checkpoints are converted)."""
    from .checkpoint import convert_checkpoint_file, load_state_dict_file, state_dict_mismatch
    state = load_state_dict_file(convert_checkpoint_file(checkpoint, work_dir))
    mismatch = state_dict_mismatch(model, state)
    if mismatch:
        raise ConfigError(f"checkpoint {checkpoint!r} does not fit the model: {mismatch}")
    model.load_state_dict({k[len('module.'):] if k.startswith('module.') else k: v for k, v in state.items()})


def visualize(config: str, checkpoint: str | None = None, image: str | None = None, sample: int | None = None,
              out: str | None = None, queries: Sequence[str] | None = None, cfg_options=None,
              input_shape=None, trust_config: bool = False) -> list[str]:
    """Write one PNG per attention block of `config`'s model; returns their paths."""
    from .config import load_config
    from .plan import build_config_model, parse_shape
    if image is not None:
        _check_image(image)
    if sample is not None and sample < 0:
        raise ConfigError(f"--sample {sample}: expected a sample index >= 0")
    cfg = load_config(config, cfg_options, trust=trust_config)
    out = out or os.path.join('work_dirs', 'viz', os.path.splitext(os.path.basename(config))[0])
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out!r} exists and is not a directory")
    model = build_config_model(cfg)
    untrained = ''
    if checkpoint:
        load_weights(model, checkpoint, out)
    else:
        untrained = ' - untrained'
        print("note: no --checkpoint, so these are the pictures of an untrained model")
    model.eval()
    model_input = prepare_input(cfg, model, image, sample, parse_shape(input_shape) if input_shape else None)
    height, width = model_input.image.shape[:2]
    points = parse_queries(queries, height, width)
    pictures = block_pictures(model, model_input, points)
    os.makedirs(out, exist_ok=True)
    written = []
    for index, picture in enumerate(pictures):
        if not picture.panels:
            print(f"{picture.path} ({picture.type}): no picture ({picture.note})")
            continue
        name = f"{index:02d}_{picture.path.replace('.', '_') or 'model'}.png"
        written.append(draw(picture, model_input.image, os.path.join(out, name), untrained))
    print(f"input: {model_input.source}, {width}x{height}")
    return written


def viz_command(args) -> int:
    """`attn-plugins viz` (see cli.py)."""
    warnings.filterwarnings('ignore', category=UserWarning, module=r'mm(seg|det|engine|cv|action)')
    for path in visualize(args.config, args.checkpoint, args.image, args.sample, args.out, args.queries,
                          args.cfg_options, args.input_shape, args.trust_config):
        print(f"wrote {path}")
    return 0
