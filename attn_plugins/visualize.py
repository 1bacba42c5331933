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
    NonLocal               f(x_q, x_j) / C(x) of the query pixels (`query_attention`); a video
                           (3-D) block: one row per query, one panel per key frame, over that frame
    PyramidAttention       the attention a over the target map, then a row per pyramid level l with
                           its own map a^l and fusion weight β_l (a = Σ_l β_l a^l); video: a panel per frame
    ChannelAttention       the C x C channel attention
    DualAttention          its PAM rows and CAM matrix
    SpatialWeights, PayAttention (LTPA) and any other block that records an attention map
    (`record_attention`): the map over the input (bars for a channel vector; a video map: per frame)
    peers' blocks (timm SE / CBAM / ECA, `analysis.PEER_BLOCKS`): the outputs of their `gate` layers

Maps are upsampled to the model's input size. Video (an NCTHW clip): a query is X,Y[,T] (T an
input frame, default the middle one); feature frame t is drawn over the input frame in the middle
of those it covers, and the panels of one row share one colour scale so frames compare.
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
from .modules import (CBAM, SE, ChannelAttention, DualAttention, NonLocal, PositionAttention, PyramidAttention)
from .registry import ConfigError

IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@dataclass
class Panel:
    """One plot of a figure: kind 'bars' (vector), 'map' (2-D map over the input), 'matrix'."""
    kind: str
    data: np.ndarray
    title: str
    query: tuple[float, float] | None = None      # (x, y) in input pixels, marked on a map
    frame: int | None = None                      # video: the input frame a map is drawn over
    vrange: tuple[float, float] | None = None     # colour scale shared by a row of frames


@dataclass
class BlockPicture:
    path: str
    type: str
    panels: list[Panel] = field(default_factory=list)
    note: str = ''
    columns: int = 0              # panels per row (video: one per frame); 0: all in one row


# ---------------------------------------------------------------- inputs
@dataclass
class ModelInput:
    run: Callable[[], Any]         # one inference forward
    image: np.ndarray              # (H, W, 3) RGB in [0, 1]: what the model saw (after resizing / padding)
    source: str
    frames: np.ndarray | None = None   # video: (T, H, W, 3), every input frame (`image` is the middle one)


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


def _display_frames(tensor: torch.Tensor, mean=None, std=None, bgr: bool = False) -> np.ndarray:
    """A clip input (C, T, H, W), with leading clip dims -> its frames (T, H, W, 3) RGB in [0, 1]."""
    x = tensor
    while x.dim() > 4:
        x = x[0]
    return np.stack([_display(x[:, t], mean, std, bgr) for t in range(x.shape[1])])


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
    try:
        with DATASETS.switch_scope_and_registry(None) as registry:
            dataset = registry.build(dataset_cfg)
    except FileNotFoundError as err:       # OpenMMLab datasets: a bare '[Errno 2] ...' naming no config key
        raise ConfigError(f"--sample {index}: {loader}.dataset could not be read ({err}); point it at the data, "
                          f"e.g. --cfg-options {loader}.dataset.data_root=PATH, or pass --image") from None
    if not 0 <= index < len(dataset):
        raise ConfigError(f"--sample {index}: {loader}.dataset has {len(dataset)} samples (0 to {len(dataset) - 1})")
    return dataset[index], f"sample {index} of {loader}.dataset"


def _image_sample(cfg, path: str):
    from mmengine.dataset import Compose
    loader, dataset_cfg = _pipeline_cfg(cfg)
    dataset_cfg = _inner_dataset(dataset_cfg or {})
    pipeline = [dict(t) for t in dataset_cfg.get('pipeline') or []
                if 'LoadAnnotations' not in str(t.get('type', ''))]
    if not pipeline:
        return None
    reader = getattr(_dataset_class(dataset_cfg), 'image_item', None)   # a format no loader reads (CIFAR arrays)
    from PIL import Image
    try:
        data = reader(path) if reader is not None else dict(img_path=path)
    except (OSError, Image.DecompressionBombError) as err:      # PIL: not an image, or too large
        raise ConfigError(f"--image {path!r}: could not read it as an image ({type(err).__name__}: {err})") from None
    for transform in Compose(pipeline).transforms:
        try:
            data = transform(data)
        except KeyError as err:     # a step that needs what the dataset gives (CIFAR's array, a clip's frames)
            raise ConfigError(f"--image {path!r}: the test pipeline of {loader}.dataset cannot run on an image "
                              f"file alone ({type(transform).__name__} needs {err} from the dataset); pass "
                              "--sample N (sample N of the config's dataset) instead") from None
        except (AssertionError, OSError, ValueError) as err:      # mmcv: 'failed to load image: ...'
            raise ConfigError(f"--image {path!r}: the test pipeline could not read it ({type(err).__name__}: {err})") from None
        if data is None:            # as Compose: a transform that drops the sample ends the pipeline
            break
    return data, f"{path} through the test pipeline"


def _inner_dataset(dataset_cfg):
    """The dataset a wrapper config holds (RepeatDataset / ClassBalancedDataset: `dataset`,
    ConcatDataset: the first of `datasets`), else `dataset_cfg` itself."""
    while True:
        inner = dataset_cfg.get('dataset')
        if not hasattr(inner, 'get'):          # CifarDataset's `dataset` is a name ('cifar10')
            inner = (dataset_cfg.get('datasets') or [None])[0]
        if not hasattr(inner, 'get'):
            return dataset_cfg
        dataset_cfg = inner


def _dataset_class(dataset_cfg) -> type | None:
    """The class `dataset_cfg['type']` names in the registry of the current default scope (the
    config's, set when the model was built), or None."""
    from mmengine.registry import DATASETS
    kind = dataset_cfg.get('type')
    if isinstance(kind, type):
        return kind
    with DATASETS.switch_scope_and_registry(None) as registry:
        return registry.get(kind) if isinstance(kind, str) else None


def loaded_channel_order(dataset_cfg) -> str:
    """'rgb' or 'bgr': the channel order of the images a dataset config gives its pipeline: its
    `channel_order` key (MPIIFaceGazeDataset), else its class's `channel_order` attribute or constructor
    default (CifarDataset's arrays, MPIIFaceGazeDataset: RGB), else 'bgr' (OpenMMLab's LoadImageFromFile)."""
    import inspect
    dataset_cfg = _inner_dataset(dataset_cfg)
    order = dataset_cfg.get('channel_order')
    cls = _dataset_class(dataset_cfg)
    if order is None and cls is not None:
        order = getattr(cls, 'channel_order', None)
        if not isinstance(order, str):
            param = inspect.signature(cls).parameters.get('channel_order')
            order = param.default if param is not None and isinstance(param.default, str) else None
    return order or 'bgr'


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
            mean = getattr(pre, 'mean', None) if normalised else None
            std = getattr(pre, 'std', None) if normalised else None
            video = getattr(pre, 'format_shape', None) == 'NCTHW'
            if hasattr(pre, 'format_shape'):    # mmaction2 (any format_shape): frames decoded as RGB, to_rgb swaps
                bgr = bool(getattr(pre, 'to_rgb', False))
            else:
                # images load as BGR (OpenMMLab's LoadImageFromFile) unless the dataset says RGB; the
                # preprocessor may swap them (mmengine / mmdet: _channel_conversion, mmseg: channel_conversion)
                loaded_rgb = loaded_channel_order(_pipeline_cfg(cfg)[1] or {}) == 'rgb'
                swapped = getattr(pre, '_channel_conversion', getattr(pre, 'channel_conversion', False))
                bgr = loaded_rgb == bool(swapped)
            shown = _display(inputs[0], mean, std, bgr=bgr)
            frames = _display_frames(inputs[0], mean, std, bgr) if video else None
            return ModelInput(lambda: tensor_forward(model, inputs, samples), shown, source, frames)
    if sample is not None:
        raise ConfigError("--sample: this model has no data pipeline in its config; pass --image instead")
    if image is None:
        raise ConfigError("viz: pass --image PATH (this config has no dataset to take a sample from)")
    if input_shape is None:       # the size the config implies (e.g. model.input_size), as plan uses
        from .plan import default_input_shape
        input_shape = default_input_shape(cfg, model)[0]
    return _timm_input(model, image, input_shape)


def _timm_input(model: nn.Module, path: str, input_shape: Sequence[int] | None) -> ModelInput:
    from PIL import Image
    pretrained = getattr(model, 'pretrained_cfg', None) or {}
    if input_shape is not None:
        size = tuple(input_shape)[-2:]
    else:
        size = tuple((pretrained.get('input_size') or (3, 224, 224))[-2:])
    from PIL import ImageOps
    try:
        with Image.open(path) as image:     # upright by its EXIF orientation, as mmcv's loader and CIFAR's reader
            picture = ImageOps.exif_transpose(image).convert('RGB').resize((size[1], size[0]), Image.BILINEAR)
    except (OSError, Image.DecompressionBombError) as err:
        raise ConfigError(f"--image {path!r}: not an image PIL can read ({err})") from None
    rgb = np.asarray(picture, dtype=np.float32) / 255.0
    mean = torch.tensor(pretrained.get('mean') or IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(pretrained.get('std') or IMAGENET_STD)[:, None, None]
    inputs = ((torch.from_numpy(rgb).permute(2, 0, 1) - mean) / std)[None]
    return ModelInput(lambda: model(inputs), rgb, f"{path} resized to {size[1]}x{size[0]}")     # width x height, as the summary line


# ---------------------------------------------------------------- capture
def parse_queries(texts: Sequence[str] | None, height: int, width: int,
                  num_frames: int = 0) -> list[tuple[float, ...]]:
    """'x,y' pixel positions of the input image, 'x,y,t' for a clip of `num_frames` frames (t: an
    input frame, default the middle one). Default: the centre and two diagonal points; for a clip
    the centre of its middle frame."""
    if not texts:
        if num_frames:
            return [(width / 2, height / 2, float(num_frames // 2))]
        return [(width / 2, height / 2), (width / 4, height / 4), (3 * width / 4, 3 * height / 4)]
    queries = []
    expected = 'X,Y pixel coordinates such as 64,32' + (f' or X,Y,T with T an input frame (0 to {num_frames - 1})'
                                                        if num_frames else '')
    for text in texts:
        try:
            values = tuple(float(v) for v in str(text).split(','))
        except ValueError:
            values = ()
        if len(values) not in ((2, 3) if num_frames else (2,)):
            extra = ' (a frame index T is for video inputs only)' if len(values) == 3 else ''
            raise ConfigError(f"--queries {text!r}: expected {expected}{extra}")
        x, y = values[:2]
        if not (0 <= x < width and 0 <= y < height):
            raise ConfigError(f"--queries {text!r}: outside the {width}x{height} model input (x < {width}, y < {height})")
        if len(values) == 3:
            if not (values[2] == int(values[2]) and 0 <= values[2] < num_frames):
                raise ConfigError(f"--queries {text!r}: frame {values[2]:g} is not one of the clip's {num_frames} "
                                  f"input frames (0 to {num_frames - 1})")
        elif num_frames:
            values = (x, y, float(num_frames // 2))
        queries.append(values)
    return queries


def _feature_frame(query, frames: int, num_frames: int) -> int:
    """The feature frame (of `frames`) holding a query's input frame (default: the middle one)."""
    if len(query) < 3 or not num_frames:
        return frames // 2
    return min(int(query[2] * frames / num_frames), frames - 1)


def _input_frame(t: int, frames: int, num_frames: int) -> int | None:
    """The input frame drawn under feature frame t: the middle of the input frames it covers."""
    return min(int((t + 0.5) * num_frames / frames), num_frames - 1) if num_frames else None


def _flat_queries(queries, grid: Sequence[int], height: int, width: int, num_frames: int = 0) -> torch.Tensor:
    """Flat indices into a (…, h, w) feature grid of input-pixel queries ((t, h, w): in the query's
    frame, see `_feature_frame`)."""
    h, w = grid[-2], grid[-1]
    flat = []
    for query in queries:
        x, y = query[:2]
        offset = _feature_frame(query, grid[0], num_frames) * h * w if len(grid) == 3 else 0
        flat.append(offset + min(int(y * h / height), h - 1) * w + min(int(x * w / width), w - 1))
    return torch.tensor(flat)


def _spatial(map_: torch.Tensor) -> np.ndarray:
    """A (…, H, W) or (…, T, H, W) map of sample 0 -> 2-D (the middle frame of a video map)."""
    m = map_.detach().float()[0]
    while m.dim() > 2:
        m = m[m.shape[0] // 2] if m.shape[0] > 1 else m[0]
    return m.cpu().numpy()


def _vector(values: torch.Tensor) -> np.ndarray:
    return values.detach().float()[0].flatten().cpu().numpy()


def _frame_panels(maps: np.ndarray, titles: Sequence[str], num_frames: int,
                  marks: dict[int, tuple[float, float]] | None = None) -> list[Panel]:
    """One 'map' panel per frame of a (T, H, W) map, over the input frame each covers, one colour scale."""
    vrange = (float(maps.min()), float(maps.max()))
    return [Panel('map', maps[t], titles[t], (marks or {}).get(t), _input_frame(t, len(maps), num_frames), vrange)
            for t in range(len(maps))]


def _frame_name(t: int, frames: int, num_frames: int) -> str:
    shown = _input_frame(t, frames, num_frames)
    return f"frame {shown}" if shown is not None else f"feature frame {t}"


def _query_panels(name: str, rows: torch.Tensor, key_grid, queries, num_frames: int = 0) -> list[Panel]:
    """Each query's row over the key grid; a (T, H, W) grid: one panel per key frame (the share
    Σ of the row's weight on that frame in the title), the query marked on its own frame."""
    panels = []
    for i, query in enumerate(queries):
        x, y = query[:2]
        row = rows[0, i].reshape(*key_grid).detach().float().cpu().numpy()
        if row.ndim < 3:
            panels.append(Panel('map', row, f"{name}\nquery ({x:.0f}, {y:.0f})", (x, y)))
            continue
        frames, own = row.shape[0], _feature_frame(query, row.shape[0], num_frames)
        source = f"frame {query[2]:.0f}" if len(query) > 2 and num_frames else _frame_name(own, frames, num_frames)
        where = f"query ({x:.0f}, {y:.0f}) of {source}"
        mine = " (query's)"
        titles = [(f"{name}\n{where}\n" if t == 0 else '\n\n') + f"keys of {_frame_name(t, frames, num_frames)}"
                  f"{mine if t == own else ''}: Σ {row[t].sum():.3g}" for t in range(frames)]
        panels += _frame_panels(row, titles, num_frames, {own: (x, y)})
    return panels


def _position_panels(block: PositionAttention, x: torch.Tensor, queries, height, width, name='position attention',
                     num_frames: int = 0):
    grid = tuple(x.shape[2:])
    rows = block.query_attention(x, _flat_queries(queries, grid, height, width, num_frames))
    return _query_panels(name, rows, grid, queries, num_frames)


def _non_local_panels(block: NonLocal, x: torch.Tensor, queries, height, width, num_frames: int = 0):
    if block.dim == 1:
        grid = (1, x.shape[-1])
        rows = block.query_attention(x, _flat_queries(queries, grid, 1, width))
        return [Panel('bars', rows[0, i].cpu().numpy(), f"non-local weights of position {int(q)}")
                for i, q in enumerate(_flat_queries(queries, grid, 1, width))]
    grid = tuple(x.shape[2:])
    rows = block.query_attention(x, _flat_queries(queries, grid, height, width, num_frames))
    keys = tuple(block.pool(x[:1, :1]).shape[2:])
    return _query_panels(f"non-local ({block.mode})", rows, keys, queries, num_frames)


def pyramid_level_attention(block: PyramidAttention, features) -> torch.Tensor:
    """(L, B, N): each pyramid level's attention map a^l; the block's attention is a = Σ_l β_l a^l."""
    return block.level_attention(features)


def _pyramid_panels(block: PyramidAttention, features, num_frames: int) -> tuple[list[Panel], int]:
    """The attention a, then a row per level with its map a^l and weight β_l; video: one column per frame."""
    attention = block.attention_map[0, 0].float()
    size = tuple(attention.shape)
    levels = pyramid_level_attention(block, features)[:, 0].unflatten(1, size).float().cpu().numpy()
    beta = block.level_weights().tolist()
    rows = [(attention.cpu().numpy(), 'attention a = Σ_l β_l a_l')]
    rows += [(level, f"level {l} ({c} ch{', target' if l == block.target_index else ''}): a_{l}, β_{l} {b:.2f}")
             for l, (level, c, b) in enumerate(zip(levels, block.in_channels, beta))]
    if len(size) == 2:
        return [Panel('map', data, title.replace(': ', ':\n', 1)) for data, title in rows], 0
    frames = size[0]
    panels = []
    for data, title in rows:
        panels += _frame_panels(data, [(f"{title}\n" if t == 0 else '\n') + _frame_name(t, frames, num_frames)
                                       + f": Σ {data[t].sum():.3g}" for t in range(frames)], num_frames)
    return panels, frames


def _recorded_panels(map_: torch.Tensor, name: str, num_frames: int = 0) -> list[Panel]:
    """Panels for an attention map recorded by a block, by its shape."""
    m = map_.detach().float()
    if m.dim() >= 2 and m[0].numel() == m.shape[1]:               # (B, C), (B, C, 1, 1): a channel vector
        return [Panel('bars', _vector(m), f"{name}: channel weights")]
    if m.dim() == 5 and m.shape[1] == 1:                           # (B, 1, T, H, W): per frame
        maps = m[0, 0].cpu().numpy()
        return _frame_panels(maps, [(f"{name}: map\n" if t == 0 else '\n') + _frame_name(t, len(maps), num_frames)
                                    for t in range(len(maps))], num_frames)
    if m.dim() == 4 and m.shape[1] == 1:                           # (B, 1, H, W)
        return [Panel('map', _spatial(m[:, 0]), f"{name}: map")]
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
            num_frames = 0 if model_input.frames is None else len(model_input.frames)
            pictures = [_picture(path, block, capture, queries, height, width, num_frames) for path, block in blocks]
    finally:
        capture.close()
    return pictures


def _picture(path, block, capture: _Capture, queries, height, width, num_frames: int = 0) -> BlockPicture:
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
        picture.panels = _position_panels(block, x, queries, height, width, num_frames=num_frames)
    elif isinstance(block, NonLocal):
        picture.panels = _non_local_panels(block, x, queries, height, width, num_frames)
    elif isinstance(block, PyramidAttention) and block.attention_map is not None:
        picture.panels, picture.columns = _pyramid_panels(block, args[0], num_frames)
    elif isinstance(block, DualAttention):
        picture.panels = _position_panels(block.pam, x, queries, height, width, 'PAM')
        picture.panels += [Panel('matrix', block.cam.attention_map[0].float().cpu().numpy(), 'CAM channel attention')]
    elif isinstance(block, ChannelAttention):
        picture.panels = [Panel('matrix', block.attention_map[0].float().cpu().numpy(), 'channel attention (C x C)')]
    elif getattr(block, 'attention_map', None) is not None:
        picture.panels = _recorded_panels(block.attention_map, picture.type, num_frames)
    else:
        for name, output in capture.peer_gates.get(path, {}).items():
            picture.panels += _recorded_panels(output, name)
    if not picture.panels:
        picture.note = 'records no attention map'
    elif not picture.columns and picture.panels[0].vrange is not None:     # video: a row of frames per map
        picture.columns = _row_length(picture.panels)
    return picture


def _row_length(panels: list[Panel]) -> int:
    """Panels per row of a video picture: the frames of the first row (they share one colour scale)."""
    first = panels[0].vrange
    count = 0
    while count < len(panels) and panels[count].vrange is first:
        count += 1
    return count


# ---------------------------------------------------------------- drawing
def _upsample(map_: np.ndarray, height: int, width: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(map_, dtype=np.float32))[None, None]
    return F.interpolate(t, size=(height, width), mode='bilinear', align_corners=False)[0, 0].numpy()


def _colorbar(fig, shown, ax) -> None:
    bar = fig.colorbar(shown, ax=ax, fraction=0.046, shrink=0.75)
    bar.formatter.set_useOffset(False)          # 1.00002, not '1e-5 + 1'
    bar.update_ticks()


def draw(picture: BlockPicture, image: np.ndarray, path: str, title_extra: str = '',
         frames: np.ndarray | None = None) -> str:
    """One PNG for one block (rows of `picture.columns` panels; video maps over their `frames`)."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    panels = picture.panels
    columns = picture.columns or len(panels)
    rows = -(-len(panels) // columns)
    widths = [2.2 if p.kind == 'bars' else 1.0 for p in panels[:columns]]
    side = 3.6 if rows == 1 else 3.0
    fig, axes = plt.subplots(rows, columns, figsize=(max(6.0, side * sum(widths)), side * rows), squeeze=False,
                             gridspec_kw=dict(width_ratios=widths))
    height, width = image.shape[:2]
    for ax in axes.flat[len(panels):]:
        ax.axis('off')
    for ax, panel in zip(axes.flat, panels):
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
            ax.imshow(frames[panel.frame] if frames is not None and panel.frame is not None else image)
            vmin, vmax = panel.vrange or (None, None)
            shown = ax.imshow(_upsample(panel.data, height, width), cmap='jet', alpha=0.5, vmin=vmin, vmax=vmax)
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
    points = parse_queries(queries, height, width, 0 if model_input.frames is None else len(model_input.frames))
    pictures = block_pictures(model, model_input, points)
    if pictures and not any(picture.panels for picture in pictures):
        notes = '; '.join(f"{p.path} ({p.type}): {p.note}" for p in pictures[:4]) + (', ...' if len(pictures) > 4 else '')
        raise ConfigError(f"none of the {len(pictures)} attention block(s) gives a picture ({notes}); "
                          "nothing written")
    os.makedirs(out, exist_ok=True)
    written = []
    for index, picture in enumerate(pictures):
        if not picture.panels:
            print(f"{picture.path} ({picture.type}): no picture ({picture.note})")
            continue
        name = f"{index:02d}_{picture.path.replace('.', '_') or 'model'}.png"
        written.append(draw(picture, model_input.image, os.path.join(out, name), untrained, model_input.frames))
    print(f"input: {model_input.source}, {width}x{height}")
    return written


def viz_command(args) -> int:
    """`attn-plugins viz` (see cli.py)."""
    warnings.filterwarnings('ignore', category=UserWarning, module=r'mm(seg|det|engine|cv|action)')
    for path in visualize(args.config, args.checkpoint, args.image, args.sample, args.out, args.queries,
                          args.cfg_options, args.input_shape, args.trust_config):
        print(f"wrote {path}")
    return 0
