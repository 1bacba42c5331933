"""Checks of COCO and Pascal VOC annotation files before mmdet reads them.

mmdet reads these formats itself (CocoDataset, VOCDataset, CocoMetric, VOCMetric), but some
malformed files pass it silently and give a wrong model or a wrong metric, and others fail
late (when the val set is first built, after an epoch of training) with a bare KeyError. What
mmdet 3.3 does, and what these checks say instead (each message names the file, the
annotation or image id, and what was expected):

COCO (`check_coco_file`)
- A box outside the image: CocoDataset drops it from training, CocoMetric (pycocotools) still
  counts it as ground truth no detection can match -> error (1 px tolerance for rounding).
- A category id not in `categories`, an `image_id` not in `images`: dropped from training and
  from evaluation without a word -> error.
- `metainfo.classes` naming a class the file lacks: `get_cat_ids` skips it, so the labels of
  the later classes shift by one (their objects train and are scored under another class's
  name) -> error with a did-you-mean. Classes listed in another order than the file's
  categories: mmdet numbers labels in the file's order, so every name would be wrong -> error.
- Missing `bbox`, `area`, `iscrowd`, `id`, image `width`/`height`/`file_name`: a bare KeyError
  from mmdet or pycocotools (`iscrowd` only at evaluation) -> error; `segmentation` is needed
  when the pipeline loads masks. Polygons need an even number (>= 6) of coordinates (mmdet
  would mark the object ignored), an RLE its image's size. Duplicate ids -> error.
- As in real COCO files (train2017 holds annotations with area 0 and a zero-height box), a box
  of zero width or height or an area of 0 is not an error: CocoDataset drops it from training
  (its documented filter); negative sizes are an error.
- A file without `annotations` (an image-info file such as COCO's test-dev) passes.
- A CocoMetric `ann_file` other than its dataset's, with images the dataset lacks: CocoMetric
  scores every image of its own file, so those images' objects all count as missed -> error
  (unless `format_only`).

VOC (`check_voc_split`)
- An object whose name is not a class of the config nor of VOC: VOCDataset skips it without a
  word (a typo loses all its objects from training and evaluation) -> error. Names of other VOC
  classes are skipped as mmdet does (a config may select some of VOC's classes).
- A bndbox outside the image (VOC boxes are 1-based: 1 <= xmin <= xmax <= width, with a 1 px
  tolerance), xmax < xmin, a missing or non-numeric coordinate, a missing XML or image, an XML
  that does not parse, `difficult`/`truncated` other than 0/1 -> error.

`check_detection_data(cfg, loaders)` runs these on every CocoDataset / VOCDataset (also inside
ConcatDataset / RepeatDataset / ClassBalancedDataset wrappers) and CocoMetric `ann_file` of the
named dataloaders of an mmengine config; attn_plugins' train/test tools call it before
training or testing. COCO results are cached per file (path, size, mtime) within a process
(VOC's are not: its annotations are many files).
"""
from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from typing import Iterable, Sequence

from ..registry import ConfigError, did_you_mean

SHOWN = 5                  # problems listed in one error message
BOX_TOLERANCE = 1.0        # px a box may reach past the image border (rounding in real files)
LOADER_EVALUATORS = {'val_dataloader': 'val_evaluator', 'test_dataloader': 'test_evaluator'}
_cache: dict = {}


class AnnotationError(ConfigError):
    """An annotation file mmdet would read wrongly or fail on; the message names the file, the
    entry and what was expected."""


def _fail(path: str, problems: list[str]) -> None:
    if problems:
        more = f" (and {len(problems) - SHOWN} more)" if len(problems) > SHOWN else ''
        raise AnnotationError(f"{path}: {len(problems)} annotation problem(s): " + '; '.join(problems[:SHOWN]) + more)


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _cached(key, compute):
    path = key[0]
    try:
        stat = os.stat(path)
    except OSError:
        return compute()
    full = (os.path.realpath(path), stat.st_size, stat.st_mtime_ns) + tuple(key[1:])
    if full not in _cache:
        _cache[full] = compute()
    return _cache[full]


# ---------------------------------------------------------------- COCO
def check_coco_file(ann_file: str, classes: Sequence[str] | None = None, img_dir: str | None = None,
                    with_mask: bool = False) -> dict:
    """Check a COCO instances file (see the module docstring); raises AnnotationError naming each
    problem. `classes`: the config's `metainfo.classes` (checked against `categories`); `img_dir`:
    where the images are (each `file_name` must exist there); `with_mask`: the pipeline loads masks.
    Returns counts: images, annotations, crowd, empty_images, degenerate (dropped by CocoDataset)."""
    key = (ann_file, tuple(classes) if classes is not None else None, img_dir, with_mask)
    return _cached(key, lambda: _check_coco(ann_file, classes, img_dir, with_mask))


def _check_coco(ann_file, classes, img_dir, with_mask) -> dict:
    if not os.path.isfile(ann_file):
        raise AnnotationError(f"COCO annotation file {ann_file!r} not found")
    try:
        with open(ann_file) as f:
            data = json.load(f)
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise AnnotationError(f"{ann_file}: not a JSON file ({err})") from None
    if not isinstance(data, dict):
        raise AnnotationError(f"{ann_file}: expected a JSON object with 'images', 'annotations' and "
                              f"'categories', got a {type(data).__name__}")
    missing = [k for k in ('images', 'categories') if not isinstance(data.get(k), list)]
    if missing:
        raise AnnotationError(f"{ann_file}: expected lists under 'images' and 'categories' "
                              f"(COCO instances format); {', '.join(repr(k) for k in missing)} missing or not a list")
    annotations = data.get('annotations', [])
    if not isinstance(annotations, list):
        raise AnnotationError(f"{ann_file}: 'annotations' must be a list, got a {type(annotations).__name__}")
    problems: list[str] = []

    categories = {}
    for n, cat in enumerate(data['categories']):
        where = f"categories[{n}]"
        if not isinstance(cat, dict) or not isinstance(cat.get('id'), int) or not isinstance(cat.get('name'), str):
            problems.append(f"{where}: expected {{'id': int, 'name': str, ...}}, got {cat!r}"[:200])
        elif cat['id'] in categories:
            problems.append(f"{where}: category id {cat['id']} appears twice")
        else:
            categories[cat['id']] = cat['name']
    names = list(categories.values())
    for name in {n for n in names if names.count(n) > 1}:
        problems.append(f"category name {name!r} appears twice (mmdet selects classes by name)")

    images, bad_images = {}, set()       # annotations of an image already reported are not reported again
    for n, img in enumerate(data['images']):
        if not isinstance(img, dict):
            problems.append(f"images[{n}]: expected an object, got {img!r}"[:200])
            continue
        where = f"image id {img['id']}" if 'id' in img else f"images[{n}]"
        lacking = [k for k in ('id', 'file_name', 'width', 'height') if k not in img]
        if lacking:
            problems.append(f"{where}: missing {', '.join(repr(k) for k in lacking)} "
                            "(a COCO image has id, file_name, width, height)")
            bad_images.add(img.get('id'))
            continue
        if not (isinstance(img['width'], int) and isinstance(img['height'], int) and min(img['width'], img['height']) > 0):
            problems.append(f"{where}: width/height must be positive integers, got {img['width']!r} x {img['height']!r}")
            bad_images.add(img['id'])
            continue
        if img['id'] in images:
            problems.append(f"{where}: image id appears twice")
            continue
        images[img['id']] = img
        if img_dir is not None and not os.path.isfile(os.path.join(img_dir, img['file_name'])):
            problems.append(f"{where}: image file {os.path.join(img_dir, img['file_name'])!r} not found")

    seen, crowd, degenerate, with_objects = set(), 0, 0, set()
    for n, ann in enumerate(annotations):
        if not isinstance(ann, dict):
            problems.append(f"annotations[{n}]: expected an object, got {ann!r}"[:200])
            continue
        where = f"annotation id {ann['id']}" if 'id' in ann else f"annotations[{n}]"
        required = ('id', 'image_id', 'category_id', 'bbox', 'area', 'iscrowd') + (('segmentation',) if with_mask else ())
        lacking = [k for k in required if k not in ann]
        if lacking:
            problems.append(f"{where}: missing {', '.join(repr(k) for k in lacking)} (a COCO annotation has "
                            f"{', '.join(required)}{'; masks are loaded by the pipeline' if with_mask else ''})")
            continue
        if ann['id'] in seen:
            problems.append(f"{where}: annotation id appears twice")
        seen.add(ann['id'])
        img = images.get(ann['image_id'])
        where = f"{where} (image id {ann['image_id']})"
        if img is None and ann['image_id'] in bad_images:
            continue
        if img is None:
            problems.append(f"{where}: image_id not among the file's images")
            continue
        if ann['category_id'] not in categories:
            problems.append(f"{where}: category_id {ann['category_id']!r} not among the file's categories "
                            f"{sorted(categories)}")
        if ann['iscrowd'] not in (0, 1):
            problems.append(f"{where}: iscrowd must be 0 or 1, got {ann['iscrowd']!r}")
        crowd += ann['iscrowd'] == 1
        box = ann['bbox']
        if not (isinstance(box, list) and len(box) == 4 and all(_number(v) for v in box)):
            problems.append(f"{where}: bbox must be [x, y, width, height] (4 numbers), got {box!r}")
            continue
        x, y, w, h = box
        if w < 0 or h < 0:
            problems.append(f"{where}: bbox {box} has a negative width or height (expected [x, y, width, height])")
            continue
        if not _number(ann['area']) or ann['area'] < 0:
            problems.append(f"{where}: area must be a number >= 0, got {ann['area']!r}")
            continue
        W, H = img['width'], img['height']
        if x < -BOX_TOLERANCE or y < -BOX_TOLERANCE or x + w > W + BOX_TOLERANCE or y + h > H + BOX_TOLERANCE:
            problems.append(f"{where}: bbox {box} (x1, y1, x2, y2 = {x:g}, {y:g}, {x + w:g}, {y + h:g}) is not inside "
                            f"the {W}x{H} image")
            continue
        if w == 0 or h == 0 or ann['area'] == 0:
            degenerate += 1                      # as in real COCO; CocoDataset drops it from training
        elif ann['category_id'] in categories:
            with_objects.add(ann['image_id'])
        problems += _check_segmentation(where, ann.get('segmentation'), img, with_mask)

    if classes is not None:
        problems += _check_classes(classes, categories)
    _fail(ann_file, problems)
    return dict(images=len(images), annotations=len(annotations), crowd=crowd, degenerate=degenerate,
                empty_images=len(images) - len(with_objects))


def _check_segmentation(where: str, segm, img: dict, with_mask: bool) -> list[str]:
    if segm is None or (isinstance(segm, list) and not segm):
        return [f"{where}: empty segmentation, but the pipeline loads masks"] if with_mask else []
    if isinstance(segm, list):
        for k, poly in enumerate(segm):
            if not (isinstance(poly, list) and len(poly) >= 6 and len(poly) % 2 == 0 and all(_number(v) for v in poly)):
                got = f"{len(poly)} values" if isinstance(poly, list) else type(poly).__name__
                return [f"{where}: segmentation polygon {k} must be [x1, y1, x2, y2, ...] with an even number (>= 6) "
                        f"of coordinates, got {got}"]
        return []
    if isinstance(segm, dict):
        if not isinstance(segm.get('counts'), (list, str)) or 'size' not in segm:
            return [f"{where}: an RLE segmentation needs 'counts' (list or string) and 'size' [height, width]"]
        if list(segm['size']) != [img['height'], img['width']]:
            return [f"{where}: RLE size {segm['size']} differs from the image's [height, width] "
                    f"[{img['height']}, {img['width']}]"]
        if isinstance(segm['counts'], list) and sum(segm['counts']) != img['height'] * img['width']:
            return [f"{where}: RLE counts sum to {sum(segm['counts'])}, expected height x width = "
                    f"{img['height'] * img['width']}"]
        return []
    return [f"{where}: segmentation must be a list of polygons or an RLE dict, got {type(segm).__name__}"]


def _check_classes(classes: Sequence[str], categories: dict) -> list[str]:
    names = list(categories.values())
    absent = [c for c in classes if c not in names]
    if absent:
        return [f"metainfo.classes {c!r} is not a category of the file{did_you_mean(c, names)} (mmdet would "
                "skip it and shift the labels of the classes after it)" for c in absent]
    in_file_order = [n for n in names if n in classes]
    if list(classes) != in_file_order:
        return [f"metainfo.classes {tuple(classes)} are in another order than the file's categories: mmdet numbers "
                f"labels in the file's order, so the names would not match the labels; list them as "
                f"{tuple(in_file_order)}"]
    return []


# ---------------------------------------------------------------- VOC
def check_voc_split(ann_file: str, sub_data_root: str, classes: Sequence[str], known_classes: Iterable[str] = (),
                    img_subdir: str = 'JPEGImages', ann_subdir: str = 'Annotations') -> dict:
    """Check the images and XML files listed in a VOC `ImageSets/Main/<split>.txt` (see the module
    docstring). `classes`: the config's classes; `known_classes`: names mmdet may skip on purpose
    (VOC's 20 classes). Returns counts: images, objects, difficult, truncated, skipped."""
    return _check_voc(ann_file, sub_data_root, classes, set(known_classes), img_subdir, ann_subdir)


def _check_voc(ann_file, sub_data_root, classes, known, img_subdir, ann_subdir) -> dict:
    if not os.path.isfile(ann_file):
        raise AnnotationError(f"VOC image list {ann_file!r} not found")
    with open(ann_file) as f:
        ids = [line.strip() for line in f if line.strip()]
    if not ids:
        raise AnnotationError(f"{ann_file}: no image ids listed")
    problems: list[str] = []
    counts = dict(images=len(ids), objects=0, difficult=0, truncated=0, skipped=0)
    for image_id in ids:
        xml_path = os.path.join(sub_data_root, ann_subdir, f'{image_id}.xml')
        if not os.path.isfile(os.path.join(sub_data_root, img_subdir, f'{image_id}.jpg')):
            problems.append(f"image {image_id}: {os.path.join(sub_data_root, img_subdir, image_id + '.jpg')!r} not found")
        if not os.path.isfile(xml_path):
            problems.append(f"image {image_id}: annotation {xml_path!r} not found")
            continue
        try:
            root = ET.parse(xml_path).getroot()
        except ET.ParseError as err:
            problems.append(f"{xml_path}: not a valid XML file ({err})")
            continue
        problems += [f"{xml_path}: {p}" for p in _check_voc_xml(root, classes, known, counts, sub_data_root,
                                                                img_subdir, image_id)]
    _fail(ann_file, problems)
    return counts


def _text(node, tag: str):
    child = node.find(tag)
    return None if child is None or child.text is None else child.text.strip()


def _check_voc_xml(root, classes, known, counts, sub_data_root, img_subdir, image_id) -> list[str]:
    problems = []
    size = root.find('size')
    try:
        width, height = (int(_text(size, 'width')), int(_text(size, 'height'))) if size is not None else (None, None)
    except (TypeError, ValueError):
        return [f"<size> needs integer <width> and <height>"]
    if size is None:                    # mmdet then reads the image; so do we
        import cv2
        image = cv2.imread(os.path.join(sub_data_root, img_subdir, f'{image_id}.jpg'))
        if image is None:
            return ["no <size> and the image does not read"]
        height, width = image.shape[:2]
    if width <= 0 or height <= 0:
        return [f"<size> {width}x{height} is not a positive size"]
    for n, obj in enumerate(root.findall('object'), 1):
        name = _text(obj, 'name')
        where = f"object {n} ({name!r})"
        if name not in classes:
            if name in known:
                counts['skipped'] += 1
                continue
            problems.append(f"{where}: name is not one of the classes {tuple(classes)}{did_you_mean(name, classes)} "
                            "(mmdet's VOCDataset would drop the object without a word)")
            continue
        flags = {}
        for flag in ('difficult', 'truncated'):
            value = _text(obj, flag)
            if value is not None and value not in ('0', '1'):
                problems.append(f"{where}: <{flag}> must be 0 or 1, got {value!r}")
            flags[flag] = value == '1'
        box = obj.find('bndbox')
        try:
            xmin, ymin, xmax, ymax = (float(_text(box, k)) for k in ('xmin', 'ymin', 'xmax', 'ymax'))
        except (TypeError, ValueError, AttributeError):
            problems.append(f"{where}: needs <bndbox> with numeric <xmin>, <ymin>, <xmax>, <ymax>")
            continue
        if xmax < xmin or ymax < ymin:
            problems.append(f"{where}: bndbox ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) has xmax < xmin or ymax < ymin")
        elif (xmin < 1 - BOX_TOLERANCE or ymin < 1 - BOX_TOLERANCE or xmax > width + BOX_TOLERANCE
              or ymax > height + BOX_TOLERANCE):
            problems.append(f"{where}: bndbox ({xmin:g}, {ymin:g}, {xmax:g}, {ymax:g}) is not inside the {width}x{height} "
                            "image (VOC boxes are 1-based: 1 <= xmin <= xmax <= width)")
        counts['objects'] += 1
        counts['difficult'] += flags['difficult']
        counts['truncated'] += flags['truncated']
    return problems


# ---------------------------------------------------------------- configs
def _plain_type(dataset_cfg) -> str:
    kind = dataset_cfg.get('type', '')
    return kind.rsplit('.', 1)[-1] if isinstance(kind, str) else getattr(kind, '__name__', '')


def _join(root, path):
    if not path or os.path.isabs(path) or '://' in str(path) or not root:
        return path
    return os.path.join(root, path)


def _datasets(dataset_cfg):
    """The leaf dataset configs inside wrapper datasets (`dataset` / `datasets` keys)."""
    if not isinstance(dataset_cfg, dict):
        return
    inner = dataset_cfg.get('datasets')
    if isinstance(inner, (list, tuple)):
        for d in inner:
            yield from _datasets(d)
    elif isinstance(dataset_cfg.get('dataset'), dict):
        yield from _datasets(dataset_cfg['dataset'])
    else:
        yield dataset_cfg


def _loads_masks(pipeline) -> bool:
    return any(isinstance(t, dict) and str(t.get('type', '')).endswith('LoadAnnotations') and t.get('with_mask')
               for t in pipeline or [])


def _default_classes(kind: str):
    from mmdet.datasets import CocoDataset, VOCDataset
    return (CocoDataset if kind == 'CocoDataset' else VOCDataset).METAINFO['classes']


def check_detection_data(cfg, loaders: Sequence[str] = ('train_dataloader', 'val_dataloader', 'test_dataloader')) -> int:
    """Check the annotation files of every CocoDataset / VOCDataset in the named dataloaders of an
    mmengine config (and the `ann_file` of a CocoMetric evaluating them); raises AnnotationError.
    Files on remote backends (a '://' path) are left to mmdet. Returns how many files were checked."""
    checked = 0
    for loader in loaders:
        loader_cfg = cfg.get(loader)
        if not isinstance(loader_cfg, dict):
            continue
        coco_classes, coco_files = None, []
        for ds in _datasets(loader_cfg.get('dataset')):
            kind = _plain_type(ds)
            if kind not in ('CocoDataset', 'VOCDataset') or '://' in str(ds.get('ann_file', '')):
                continue
            metainfo = ds.get('metainfo') or {}
            classes = tuple(metainfo.get('classes') or _default_classes(kind))
            root = ds.get('data_root') or ''
            prefix = ds.get('data_prefix') or {}
            ann_file = _join(root, ds.get('ann_file', ''))
            if kind == 'CocoDataset':
                img_dir = _join(root, prefix.get('img', prefix.get('img_path', '')))
                check_coco_file(ann_file, classes, img_dir, _loads_masks(ds.get('pipeline')))
                coco_classes = classes
                coco_files.append(ann_file)
            else:
                check_voc_split(ann_file, _join(root, prefix.get('sub_data_root', '')), classes,
                                _default_classes(kind), ds.get('img_subdir', 'JPEGImages'),
                                ds.get('ann_subdir', 'Annotations'))
            checked += 1
        evaluators = cfg.get(LOADER_EVALUATORS.get(loader, ''))
        for metric in evaluators if isinstance(evaluators, (list, tuple)) else [evaluators]:
            if (isinstance(metric, dict) and _plain_type(metric) == 'CocoMetric' and metric.get('ann_file')
                    and '://' not in str(metric['ann_file']) and coco_classes is not None):
                check_coco_file(metric['ann_file'], coco_classes)
                if not metric.get('format_only'):
                    _check_scored_images(metric['ann_file'], coco_files, LOADER_EVALUATORS[loader], loader)
                checked += 1
    return checked


def _image_ids(ann_file: str) -> frozenset:
    def read():
        with open(ann_file) as f:
            return frozenset(img['id'] for img in json.load(f)['images'])
    return _cached((ann_file, 'image ids'), read)


def _check_scored_images(metric_file: str, dataset_files: Sequence[str], key: str, loader: str) -> None:
    """CocoMetric scores every image of its own file: one the dataset lacks gets no prediction and
    all its objects count as missed (mmdet says nothing)."""
    if any(os.path.realpath(metric_file) == os.path.realpath(f) for f in dataset_files):
        return
    scored = _image_ids(metric_file)
    missing = scored - frozenset().union(*(_image_ids(f) for f in dataset_files))
    if missing:
        raise AnnotationError(
            f"{key}.ann_file {metric_file!r} is not the file of {loader}'s dataset ({', '.join(dataset_files)}): "
            f"{len(missing)} of its {len(scored)} images are not in {loader}'s dataset (e.g. image id "
            f"{sorted(missing, key=str)[0]}); CocoMetric would count all their objects as missed. Point "
            f"{key}.ann_file at the dataset's annotation file (or set format_only)")
