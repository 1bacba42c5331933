"""Detection data in the real COCO / VOC formats: the generators write what real files hold
(non-contiguous category ids, multi-polygon objects, crowd RLE, empty images, a degenerate box;
VOC XML with difficult / truncated), mmdet's own datasets, pipelines and metrics read it (perfect
predictions score 1.0, perturbed ones clearly less), and malformed files are an error that names
the file and the entry where mmdet would be silent or fail with a bare KeyError."""
import copy
import json
import os
import shutil
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
import torch
from mmengine.registry import DefaultScope

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # tools/ as a package

from attn_plugins.datasets.det_check import (AnnotationError, check_coco_file, check_detection_data,  # noqa: E402
                                              check_voc_split)
from tools.make_toy_coco import CATEGORY_IDS, CLASSES, make_toy_coco  # noqa: E402
from tools.make_toy_voc import CLASSES as VOC_CLASSES, make_toy_voc  # noqa: E402

COCO_TRAIN_PIPELINE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                       dict(type='Resize', scale=(200, 150), keep_ratio=True), dict(type='RandomFlip', prob=0.5),
                       dict(type='PackDetInputs')]
COCO_TEST_PIPELINE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True, with_mask=True),
                      dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape'))]
VOC_PIPELINE = [dict(type='LoadImageFromFile'), dict(type='LoadAnnotations', with_bbox=True),
                dict(type='PackDetInputs', meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape'))]


@pytest.fixture(autouse=True)
def _mmdet_scope():
    """mmdet's registries for the pipelines and wrappers built here (not left set for other modules)."""
    with DefaultScope.overwrite_default_scope('mmdet'):
        yield


@pytest.fixture(scope='module')
def toy_coco(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('det') / 'toy_coco')
    make_toy_coco(root, num_train=16, num_val=10, seed=0)
    return root


@pytest.fixture(scope='module')
def toy_voc(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('det') / 'toy_voc')
    make_toy_voc(root, voc2007_trainval=10, voc2007_test=8, voc2012_trainval=8, seed=0)
    return root


def load(root, split):
    with open(os.path.join(root, 'annotations', f'instances_{split}2017.json')) as f:
        return json.load(f)


def coco_dataset(root, split='val', ann_file=None, **kwargs):
    from mmdet.datasets import CocoDataset
    kwargs.setdefault('pipeline', COCO_TEST_PIPELINE)
    kwargs.setdefault('test_mode', split == 'val')
    return CocoDataset(data_root=root, ann_file=ann_file or f'annotations/instances_{split}2017.json',
                       data_prefix=dict(img=f'{split}2017/'), metainfo=dict(classes=CLASSES), **kwargs)


def shoelace(poly):
    x, y = np.array(poly[0::2]), np.array(poly[1::2])
    return abs(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))) / 2


# ---------------------------------------------------------------- generators
def test_toy_coco_is_real_coco_format(toy_coco):
    import cv2
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO
    for split, count in (('train', 16), ('val', 10)):
        data = load(toy_coco, split)
        assert set(data) == {'info', 'licenses', 'images', 'annotations', 'categories'}
        assert data['categories'] == [dict(supercategory='shape', id=i, name=n) for i, n in zip((2, 5, 11), CLASSES)]
        images = {img['id']: img for img in data['images']}
        assert len(images) == count
        assert len({(i['width'], i['height']) for i in images.values()}) > 3            # varied sizes
        assert any(i['width'] != i['height'] for i in images.values())
        assert all(96 <= i['width'] <= 160 and 96 <= i['height'] <= 160 for i in images.values())
        anns = data['annotations']
        assert len({a['id'] for a in anns}) == len(anns)
        assert {a['category_id'] for a in anns} == {2, 5, 11}
        assert any(len(a['segmentation']) > 1 for a in anns if not a['iscrowd'])          # occluded: several polygons
        crowds = [a for a in anns if a['iscrowd']]
        assert crowds and all(isinstance(a['segmentation']['counts'], list) for a in crowds)   # uncompressed RLE
        assert set(images) - {a['image_id'] for a in anns}                                # images without objects
        assert sum(a['area'] == 0 for a in anns) == (1 if split == 'train' else 0)       # as real train2017
        coco = COCO(os.path.join(toy_coco, 'annotations', f'instances_{split}2017.json'))
        for ann in anns:
            img = images[ann['image_id']]
            if ann['area'] == 0:
                continue
            mask = coco.annToMask(ann).astype(bool)
            x, y, w, h = ann['bbox']
            assert 0 <= x and 0 <= y and x + w <= img['width'] + 1e-6 and y + h <= img['height'] + 1e-6
            ys, xs = np.nonzero(mask)              # the raster lies in the box (to rounding)
            assert xs.min() >= x - 1 and xs.max() <= x + w and ys.min() >= y - 1 and ys.max() <= y + h
            if ann['iscrowd']:
                rle = mask_utils.frPyObjects(ann['segmentation'], img['height'], img['width'])
                assert ann['area'] == mask.sum() == mask_utils.area(rle)
                assert ann['bbox'] == [round(float(v), 2) for v in mask_utils.toBbox(rle)]
                continue
            polys = ann['segmentation']
            assert ann['area'] == pytest.approx(sum(shoelace(p) for p in polys), abs=0.01)
            assert abs(ann['area'] - mask.sum()) < 0.2 * ann['area'] + 10
            points = np.concatenate([np.reshape(p, (-1, 2)) for p in polys])
            assert [x, y, x + w, y + h] == pytest.approx([*points.min(0), *points.max(0)], abs=0.011)
            # the image shows the object: the class's colour channel dominates inside its mask
            image = cv2.imread(os.path.join(toy_coco, f'{split}2017', img['file_name']))[..., ::-1]
            inner = cv2.erode(mask.astype(np.uint8), np.ones((3, 3), np.uint8)).astype(bool)
            colour = image[inner].mean(0)
            assert np.argmax(colour) == (0, 1, 2)[CATEGORY_IDS.index(ann['category_id'])], (ann['id'], colour)


def test_toy_coco_is_deterministic_and_seeded(toy_coco, tmp_path):
    make_toy_coco(str(tmp_path / 'again'), num_train=16, num_val=10, seed=0)
    assert load(str(tmp_path / 'again'), 'val') == load(toy_coco, 'val')
    make_toy_coco(str(tmp_path / 'other'), num_train=16, num_val=10, seed=1)
    assert load(str(tmp_path / 'other'), 'val')['annotations'] != load(toy_coco, 'val')['annotations']


def test_toy_voc_is_real_voc_layout(toy_voc):
    base = os.path.join(toy_voc, 'VOCdevkit')
    main07, main12 = (os.path.join(base, f'VOC{y}', 'ImageSets', 'Main') for y in ('2007', '2012'))
    read = lambda path: open(path).read().split()   # noqa: E731
    assert len(read(os.path.join(main07, 'trainval.txt'))) == 10 and len(read(os.path.join(main07, 'test.txt'))) == 8
    assert sorted(read(os.path.join(main07, 'trainval.txt'))) == sorted(
        read(os.path.join(main07, 'train.txt')) + read(os.path.join(main07, 'val.txt')))
    assert not os.path.exists(os.path.join(main12, 'test.txt'))                   # VOC2012 test has no labels
    ids12 = read(os.path.join(main12, 'trainval.txt'))
    assert len(ids12) == 8 and all(len(i) == 11 and i[4] == '_' for i in ids12)     # 2008_000123
    flags = dict(difficult=0, truncated=0)
    for year, ids in (('2007', read(os.path.join(main07, 'trainval.txt')) + read(os.path.join(main07, 'test.txt'))),
                      ('2012', ids12)):
        for image_id in ids:
            root = ET.parse(os.path.join(base, f'VOC{year}', 'Annotations', f'{image_id}.xml')).getroot()
            assert root.findtext('folder') == f'VOC{year}' and root.findtext('filename') == f'{image_id}.jpg'
            width, height = int(root.findtext('size/width')), int(root.findtext('size/height'))
            assert root.findtext('size/depth') == '3'
            assert os.path.isfile(os.path.join(base, f'VOC{year}', 'JPEGImages', f'{image_id}.jpg'))
            objects = root.findall('object')
            assert objects                                                    # every VOC image holds an object
            for obj in objects:
                assert obj.findtext('name') in VOC_CLASSES and obj.findtext('pose')
                box = [int(obj.findtext(f'bndbox/{k}')) for k in ('xmin', 'ymin', 'xmax', 'ymax')]
                assert 1 <= box[0] <= box[2] <= width and 1 <= box[1] <= box[3] <= height
                truncated = obj.findtext('truncated') == '1'
                assert truncated == (box[0] == 1 or box[1] == 1 or box[2] == width or box[3] == height)
                for k in flags:
                    flags[k] += obj.findtext(k) == '1'
    assert flags['difficult'] > 0 and flags['truncated'] > 0
    # per-class lists: 1 present, 0 only difficult, -1 absent
    lines = open(os.path.join(main07, 'car_test.txt')).read().splitlines()
    assert len(lines) == 8 and all(line.split()[1] in ('1', '0', '-1') for line in lines)


# ---------------------------------------------------------------- mmdet reads it
def test_coco_dataset_and_pipeline_read_the_toy_data(toy_coco):
    data = load(toy_coco, 'train')
    ds = coco_dataset(toy_coco, 'train', pipeline=COCO_TRAIN_PIPELINE, filter_cfg=dict(filter_empty_gt=True))
    assert ds.cat_ids == [2, 5, 11]
    with_objects = {a['image_id'] for a in data['annotations']}
    assert len(ds) == len(with_objects) < len(data['images'])          # filter_empty_gt drops the empty images
    anns = {a['id']: a for a in data['annotations']}
    by_image = {}
    for a in data['annotations']:
        by_image.setdefault(a['image_id'], []).append(a)
    seen = dict(multi=0, crowd=0, degenerate=0)
    for idx in range(len(ds)):
        info = ds.get_data_info(idx)
        raw = by_image[info['img_id']]
        kept = [a for a in raw if a['area'] > 0]
        seen['degenerate'] += len(raw) - len(kept)                     # area 0 / flat box: dropped by mmdet
        assert len(info['instances']) == len(kept)
        for inst, ann in zip(info['instances'], kept):
            assert inst['bbox_label'] == CATEGORY_IDS.index(ann['category_id'])
            assert inst['ignore_flag'] == ann['iscrowd']
        sample = ds[idx]['data_samples']
        gt, ignored = sample.gt_instances, sample.ignored_instances
        assert len(gt) + len(ignored) == len(kept)
        assert len(ignored) == sum(a['iscrowd'] for a in kept)
        scale = sample.scale_factor[0] * sample.scale_factor[1]
        for inst, ann in zip([i for i in info['instances'] if not i['ignore_flag']], [a for a in kept if not a['iscrowd']]):
            seen['multi'] += len(ann['segmentation']) > 1
        for masks, group in ((gt.masks, [a for a in kept if not a['iscrowd']]), (ignored.masks, [a for a in kept if a['iscrowd']])):
            for mask, ann in zip(masks.masks, group):                   # resized mask areas follow the annotation's
                assert abs(mask.sum() / scale - ann['area']) < 0.25 * ann['area'] + 15, (ann['id'], mask.sum(), ann['area'])
        seen['crowd'] += len(ignored)
    assert seen['multi'] and seen['crowd'] and seen['degenerate'] == 1
    assert anns


def test_coco_empty_image_in_test_mode(toy_coco):
    data = load(toy_coco, 'val')
    empty = [i['id'] for i in data['images'] if i['id'] not in {a['image_id'] for a in data['annotations']}]
    ds = coco_dataset(toy_coco, 'val')
    assert len(ds) == len(data['images'])                               # test mode keeps every image
    idx = next(i for i in range(len(ds)) if ds.get_data_info(i)['img_id'] == empty[0])
    sample = ds[idx]['data_samples']
    assert len(sample.gt_instances) == 0 and sample.gt_instances.masks.masks.shape[0] == 0


def perfect_coco_predictions(root, split='val', shift=0.0, drop_every=0):
    """pred_instances for every image from the ground truth (non-crowd, non-degenerate objects):
    exact, or boxes and masks moved by `shift` of the object's size, or every `drop_every`-th left out."""
    from pycocotools.coco import COCO
    coco = COCO(os.path.join(root, 'annotations', f'instances_{split}2017.json'))
    samples = []
    for img in coco.dataset['images']:
        anns = [a for a in coco.imgToAnns[img['id']] if not a['iscrowd'] and a['area'] > 0]
        if drop_every:
            anns = [a for k, a in enumerate(anns) if k % drop_every]
        boxes, masks = [], []
        for a in anns:
            x, y, w, h = a['bbox']
            dx, dy = shift * w, shift * h
            boxes.append([x + dx, y + dy, x + w + dx, y + h + dy])
            masks.append(np.roll(coco.annToMask(a), (int(round(dy)), int(round(dx))), axis=(0, 1)))
        n = len(anns)
        pred = dict(bboxes=torch.tensor(boxes, dtype=torch.float32).reshape(n, 4), scores=torch.ones(n),
                    labels=torch.tensor([CATEGORY_IDS.index(a['category_id']) for a in anns], dtype=torch.long),
                    masks=torch.from_numpy(np.stack(masks).astype(bool) if n else np.zeros((0, img['height'], img['width']), bool)))
        samples.append(dict(img_id=img['id'], ori_shape=(img['height'], img['width']), pred_instances=pred))
    return samples


def coco_metric(root, samples, ann_file=None):
    from mmdet.evaluation import CocoMetric
    metric = CocoMetric(ann_file=ann_file or os.path.join(root, 'annotations', 'instances_val2017.json'),
                        metric=['bbox', 'segm'])
    metric.dataset_meta = dict(classes=CLASSES)
    metric.process({}, samples)
    return metric.evaluate(len(samples))


def test_coco_metric_scores_perfect_predictions_1_and_perturbed_lower(toy_coco):
    perfect = coco_metric(toy_coco, perfect_coco_predictions(toy_coco))
    assert perfect['coco/bbox_mAP'] == pytest.approx(1.0) and perfect['coco/segm_mAP'] == pytest.approx(1.0)
    # boxes moved by 10 % of their size (IoU 0.68): matched at IoU 0.5..0.65, missed from 0.7 on
    shifted = coco_metric(toy_coco, perfect_coco_predictions(toy_coco, shift=0.1))
    assert shifted['coco/bbox_mAP_50'] == pytest.approx(1.0) and shifted['coco/bbox_mAP_75'] == 0
    assert shifted['coco/bbox_mAP'] == pytest.approx(0.4, abs=0.02) and shifted['coco/segm_mAP'] < 0.7
    missing = coco_metric(toy_coco, perfect_coco_predictions(toy_coco, drop_every=2))
    assert 0.2 < missing['coco/bbox_mAP'] < 0.9


def voc_dataset(root, year='2007', split='test', classes=VOC_CLASSES, **kwargs):
    from mmdet.datasets import VOCDataset
    return VOCDataset(data_root=os.path.join(root, 'VOCdevkit'), ann_file=f'VOC{year}/ImageSets/Main/{split}.txt',
                      data_prefix=dict(sub_data_root=f'VOC{year}/'), metainfo=dict(classes=classes),
                      pipeline=VOC_PIPELINE, test_mode=split == 'test', **kwargs)


def test_voc0712_datasets_read_the_toy_data(toy_voc):
    from mmdet.registry import DATASETS
    concat = DATASETS.build(dict(type='ConcatDataset', ignore_keys=['dataset_type'], datasets=[
        dict(type='VOCDataset', data_root=os.path.join(toy_voc, 'VOCdevkit'), ann_file=f'VOC{y}/ImageSets/Main/trainval.txt',
             data_prefix=dict(sub_data_root=f'VOC{y}/'), metainfo=dict(classes=VOC_CLASSES), pipeline=VOC_PIPELINE,
             filter_cfg=dict(filter_empty_gt=True, min_size=32, bbox_min_size=8)) for y in ('2007', '2012')]))
    assert len(concat) == 18
    ds = voc_dataset(toy_voc)
    assert ds.metainfo['dataset_type'] == 'VOC2007' and len(ds) == 8
    difficult = 0
    for idx in range(len(ds)):
        info = ds.get_data_info(idx)
        root = ET.parse(info['xml_path']).getroot()
        objects = root.findall('object')
        assert [i['bbox'] for i in info['instances']] == [
            [int(o.findtext(f'bndbox/{k}')) - 1 for k in ('xmin', 'ymin', 'xmax', 'ymax')] for o in objects]
        assert [i['bbox_label'] for i in info['instances']] == [VOC_CLASSES.index(o.findtext('name')) for o in objects]
        sample = ds[idx]['data_samples']
        n_difficult = sum(o.findtext('difficult') == '1' for o in objects)
        assert len(sample.ignored_instances) == n_difficult and len(sample.gt_instances) == len(objects) - n_difficult
        difficult += n_difficult
    assert difficult > 0


def voc_metric(ds, shift=0.0, skip_difficult=True):
    """VOCMetric on predictions made from the dataset's ground truth (boxes moved by `shift` of their size)."""
    from mmdet.evaluation import VOCMetric
    metric = VOCMetric(metric='mAP', eval_mode='11points')
    metric.dataset_meta = ds.metainfo
    samples = []
    for idx in range(len(ds)):
        sample = ds[idx]['data_samples']
        gt = sample.gt_instances
        boxes = gt.bboxes.tensor.clone()
        wh = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)
        samples.append(dict(gt_instances=dict(labels=gt.labels, bboxes=gt.bboxes.tensor),
                            ignored_instances=dict(labels=sample.ignored_instances.labels,
                                                   bboxes=sample.ignored_instances.bboxes.tensor),
                            pred_instances=dict(bboxes=boxes + shift * wh, scores=torch.ones(len(boxes)),
                                                labels=gt.labels)))
    metric.process({}, samples)
    return metric.evaluate(len(samples))['pascal_voc/mAP']


def test_voc_metric_scores_perfect_predictions_1_and_perturbed_lower(toy_voc):
    ds = voc_dataset(toy_voc)
    assert voc_metric(ds) == pytest.approx(1.0)            # difficult objects left undetected: ignored, still 1.0
    assert voc_metric(ds, shift=0.3) < 0.5


# ---------------------------------------------------------------- malformed files
def write_broken(root, tmp_path, mutate, split='val'):
    data = load(root, split)
    mutate(data)
    path = str(tmp_path / f'broken_{split}.json')
    with open(path, 'w') as f:
        json.dump(data, f)
    return path


def first(data, crowd=False):
    return next(a for a in data['annotations'] if a['iscrowd'] == crowd and a['area'] > 0)


def _move_out(data):
    a = first(data)
    img = next(i for i in data['images'] if i['id'] == a['image_id'])
    a['bbox'][0] = img['width'] + 5.0


BROKEN_COCO = {
    'box outside the image': (_move_out, r'annotation id \d+ \(image id \d+\): bbox .* is not inside the \d+x\d+ image'),
    'unknown category id': (lambda d: first(d).update(category_id=7),
                            r"annotation id \d+ \(image id \d+\): category_id 7 not among the file's categories \[2, 5, 11\]"),
    'missing bbox': (lambda d: first(d).pop('bbox'), r"annotation id \d+: missing 'bbox'"),
    'missing area': (lambda d: first(d).pop('area'), r"annotation id \d+: missing 'area'"),
    'missing iscrowd': (lambda d: first(d).pop('iscrowd'), r"annotation id \d+: missing 'iscrowd'"),
    'missing segmentation': (lambda d: first(d).pop('segmentation'),
                             r"annotation id \d+: missing 'segmentation' .*masks are loaded"),
    'image without width': (lambda d: d['images'][0].pop('width'), r"image id \d+: missing 'width'"),
    'unknown image id': (lambda d: first(d).update(image_id=123456789), r"image id 123456789\): image_id not among"),
    'duplicate annotation id': (lambda d: d['annotations'][1].update(id=d['annotations'][0]['id']),
                                r'annotation id \d+: annotation id appears twice'),
    'odd polygon': (lambda d: first(d)['segmentation'][0].pop(), r'polygon 0 must be .*even number'),
    'rle of another size': (lambda d: first(d, crowd=True)['segmentation'].update(size=[5, 5]),
                            r'RLE size \[5, 5\] differs'),
    'negative width': (lambda d: first(d)['bbox'].__setitem__(2, -3.0), r'negative width or height'),
    'no categories': (lambda d: d.pop('categories'), r"'categories' missing or not a list"),
}


@pytest.mark.parametrize('case', sorted(BROKEN_COCO))
def test_malformed_coco_file_is_a_clear_error(toy_coco, tmp_path, case):
    import re
    mutate, pattern = BROKEN_COCO[case]
    path = write_broken(toy_coco, tmp_path, mutate)
    with pytest.raises(AnnotationError) as err:
        check_coco_file(path, CLASSES, os.path.join(toy_coco, 'val2017'), with_mask=True)
    message = str(err.value)
    prefix = path + (': ' if case == 'no categories' else ': 1 annotation problem(s): ')   # one problem, not a cascade
    assert message.startswith(prefix) and re.search(pattern, message), message


def test_coco_checks_pass_real_coco_quirks_and_count_them(toy_coco):
    summary = check_coco_file(os.path.join(toy_coco, 'annotations', 'instances_train2017.json'), CLASSES,
                              os.path.join(toy_coco, 'train2017'), with_mask=True)
    data = load(toy_coco, 'train')
    assert summary == dict(images=16, annotations=len(data['annotations']), degenerate=1,
                           crowd=sum(a['iscrowd'] for a in data['annotations']),
                           empty_images=16 - len({a['image_id'] for a in data['annotations'] if a['area'] > 0}))


def test_mmdet_is_silent_where_the_checks_speak(toy_coco, tmp_path):
    """What the checks guard against: with these files mmdet runs on and the result is wrong."""
    # a box outside the image: dropped from training, yet scored as ground truth no detection matches
    path = write_broken(toy_coco, tmp_path, _move_out)
    ds = coco_dataset(toy_coco, ann_file=path)
    assert sum(len(ds.get_data_info(i)['instances']) for i in range(len(ds))) == \
        sum(not a['iscrowd'] for a in load(toy_coco, 'val')['annotations']) + \
        sum(a['iscrowd'] for a in load(toy_coco, 'val')['annotations']) - 1
    assert coco_metric(toy_coco, perfect_coco_predictions(toy_coco), ann_file=path)['coco/bbox_mAP'] < 1.0
    # a class name the file lacks: no error, and the labels of the classes after it shift
    from mmdet.datasets import CocoDataset
    shifted = CocoDataset(data_root=toy_coco, ann_file='annotations/instances_val2017.json', data_prefix=dict(img='val2017/'),
                          metainfo=dict(classes=('square', 'circle', 'triangle')), pipeline=[], test_mode=True)
    triangle = next(i for k in range(len(shifted)) for i in shifted.get_data_info(k)['instances']
                    if i['bbox'] and shifted.cat_ids[i['bbox_label']] == 11)
    assert shifted.metainfo['classes'][triangle['bbox_label']] == 'circle'
    with pytest.raises(AnnotationError, match=r"'circle' is not a category of the file.*shift the labels"):
        check_coco_file(os.path.join(toy_coco, 'annotations', 'instances_val2017.json'), ('square', 'circle', 'triangle'))
    # classes in another order: mmdet numbers labels in the file's order, names no longer match
    swapped = CocoDataset(data_root=toy_coco, ann_file='annotations/instances_val2017.json', data_prefix=dict(img='val2017/'),
                          metainfo=dict(classes=('disc', 'square', 'triangle')), pipeline=[], test_mode=True)
    assert swapped.cat2label[2] == 0 and swapped.metainfo['classes'][0] == 'disc'     # squares named 'disc'
    with pytest.raises(AnnotationError, match=r"another order .* list them as \('square', 'disc', 'triangle'\)"):
        check_coco_file(os.path.join(toy_coco, 'annotations', 'instances_val2017.json'), ('disc', 'square', 'triangle'))
    # a missing key: mmdet's bare KeyError names neither the file nor the annotation
    path = write_broken(toy_coco, tmp_path, lambda d: first(d).pop('area'))
    with pytest.raises(KeyError, match='area'):
        coco_dataset(toy_coco, ann_file=path)


def copy_voc(root, tmp_path):
    out = str(tmp_path / 'voc')
    shutil.copytree(root, out)
    return out


def first_xml(root):
    base = os.path.join(root, 'VOCdevkit', 'VOC2007')
    image_id = open(os.path.join(base, 'ImageSets', 'Main', 'test.txt')).read().split()[0]
    return os.path.join(base, 'Annotations', f'{image_id}.xml')


def edit_xml(path, edit):
    tree = ET.parse(path)
    edit(tree.getroot().find('object'), tree.getroot())
    tree.write(path)


BROKEN_VOC = {
    'misspelt class': (lambda o, r: o.find('name').__setattr__('text', 'shep'),
                       r"object 1 \('shep'\): name is not one of the classes .*did you mean 'sheep'"),
    'box outside the image': (lambda o, r: o.find('bndbox/xmax').__setattr__('text', str(int(r.findtext('size/width')) + 9)),
                              r'object 1 .*not inside the \d+x\d+ image'),
    'xmax before xmin': (lambda o, r: o.find('bndbox/xmax').__setattr__('text', '0'), r'xmax < xmin'),
    'missing coordinate': (lambda o, r: o.find('bndbox').remove(o.find('bndbox/ymin')), r'needs <bndbox> with numeric'),
    'bad difficult flag': (lambda o, r: o.find('difficult').__setattr__('text', 'yes'), r"<difficult> must be 0 or 1"),
}


@pytest.mark.parametrize('case', sorted(BROKEN_VOC))
def test_malformed_voc_file_is_a_clear_error(toy_voc, tmp_path, case):
    import re
    edit, pattern = BROKEN_VOC[case]
    root = copy_voc(toy_voc, tmp_path)
    xml_path = first_xml(root)
    edit_xml(xml_path, edit)
    base = os.path.join(root, 'VOCdevkit', 'VOC2007')
    with pytest.raises(AnnotationError) as err:
        check_voc_split(os.path.join(base, 'ImageSets', 'Main', 'test.txt'), base, VOC_CLASSES)
    message = str(err.value)
    assert message.startswith(os.path.join(base, 'ImageSets', 'Main', 'test.txt') + ': 1 annotation problem(s): '
                              + xml_path + ': ') and re.search(pattern, message), message


def test_voc_misspelt_class_is_silently_dropped_by_mmdet(toy_voc, tmp_path):
    root = copy_voc(toy_voc, tmp_path)
    edit_xml(first_xml(root), lambda o, r: o.find('name').__setattr__('text', 'shep'))
    before = voc_dataset(toy_voc).get_data_info(0)['instances']
    assert len(voc_dataset(root).get_data_info(0)['instances']) == len(before) - 1    # gone, without a word
    # other VOC classes are skipped on purpose (a config may select some of VOC's classes)
    from mmdet.datasets import VOCDataset
    base = os.path.join(toy_voc, 'VOCdevkit', 'VOC2007')
    counts = check_voc_split(os.path.join(base, 'ImageSets', 'Main', 'test.txt'), base, ('car', 'sheep'),
                             VOCDataset.METAINFO['classes'])
    ds = voc_dataset(toy_voc)
    boats = sum(o.findtext('name') == 'boat' for i in range(len(ds))
                for o in ET.parse(ds.get_data_info(i)['xml_path']).getroot().findall('object'))
    assert counts['skipped'] == boats > 0


def test_check_detection_data_walks_voc0712_and_coco_configs(toy_coco, toy_voc, tmp_path):
    voc_root = copy_voc(toy_voc, tmp_path)
    voc = lambda y, split: dict(type='VOCDataset', data_root=os.path.join(voc_root, 'VOCdevkit'),   # noqa: E731
                                ann_file=f'VOC{y}/ImageSets/Main/{split}.txt', data_prefix=dict(sub_data_root=f'VOC{y}/'),
                                metainfo=dict(classes=VOC_CLASSES))
    cfg = dict(train_dataloader=dict(dataset=dict(type='RepeatDataset', times=3, dataset=dict(
                   type='ConcatDataset', datasets=[voc('2007', 'trainval'), voc('2012', 'trainval')]))),
               val_dataloader=dict(dataset=voc('2007', 'test')))
    assert check_detection_data(cfg) == 3
    bad_id = open(os.path.join(voc_root, 'VOCdevkit', 'VOC2012', 'ImageSets', 'Main', 'trainval.txt')).read().split()[0]
    bad = os.path.join(voc_root, 'VOCdevkit', 'VOC2012', 'Annotations', f'{bad_id}.xml')
    edit_xml(bad, lambda o, r: o.find('name').__setattr__('text', 'Car'))
    with pytest.raises(AnnotationError, match=rf"{bad}: object 1 \('Car'\): .*did you mean 'car'"):
        check_detection_data(cfg)
    assert check_detection_data(cfg, loaders=('val_dataloader',)) == 1
    # COCO: the dataset and the CocoMetric's ann_file; mmdet's default classes are COCO's 80, absent here
    coco = dict(type='mmdet.CocoDataset', data_root=toy_coco, ann_file='annotations/instances_val2017.json',
                data_prefix=dict(img='val2017/'), metainfo=dict(classes=CLASSES), pipeline=COCO_TEST_PIPELINE)
    broken = write_broken(toy_coco, tmp_path, _move_out)
    cfg = dict(test_dataloader=dict(dataset=coco),
               test_evaluator=dict(type='CocoMetric', ann_file=broken, metric='bbox'))
    with pytest.raises(AnnotationError, match=rf'{broken}: 1 annotation problem'):
        check_detection_data(cfg)
    cfg['test_evaluator']['ann_file'] = os.path.join(toy_coco, 'annotations', 'instances_val2017.json')
    assert check_detection_data(cfg) == 2
    without_classes = copy.deepcopy(cfg)
    without_classes['test_dataloader']['dataset'].pop('metainfo')
    with pytest.raises(AnnotationError, match=r"'person' is not a category of the file"):
        check_detection_data(without_classes)


@pytest.mark.parametrize('tool, argv, message', [
    ('make_toy_coco', ['--train', '0'], 'num_train and num_val must be >= 1'),
    ('make_toy_coco', ['--sides', '200', '100'], 'sides must be (min, max)'),
    ('make_toy_voc', ['--voc2012', '1'], 'voc2012_trainval must be >= 2'),
])
def test_generator_bad_arguments_are_one_line_usage_errors(tool, argv, message, tmp_path, capsys):
    import importlib
    main = importlib.import_module(f'tools.{tool}').main
    with pytest.raises(SystemExit) as exit_info:
        main(['--out', str(tmp_path / 'out'), *argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and ': error: ' in err[-1] and message in err[-1]
    assert not (tmp_path / 'out').exists()


def test_coco_metric_file_with_images_the_dataset_lacks_is_an_error(toy_coco, tmp_path):
    """CocoMetric scores every image of its own ann_file: one the dataset lacks (e.g. only the
    dataset's data_root or ann_file overridden) counts all its objects as missed, without a word."""
    val = os.path.join(toy_coco, 'annotations', 'instances_val2017.json')
    data = load(toy_coco, 'val')
    fewer = dict(data, images=data['images'][:-2])
    kept = {i['id'] for i in fewer['images']}
    fewer['annotations'] = [a for a in data['annotations'] if a['image_id'] in kept]
    subset = str(tmp_path / 'instances_val_subset.json')
    json.dump(fewer, open(subset, 'w'))
    coco = dict(type='CocoDataset', data_root=toy_coco, ann_file=subset, data_prefix=dict(img='val2017/'),
                metainfo=dict(classes=CLASSES), pipeline=COCO_TEST_PIPELINE)
    # mmdet: predictions perfect for every image the dataset has, yet the mAP is below 1
    perfect = [s for s in perfect_coco_predictions(toy_coco) if s['img_id'] in kept]
    assert coco_metric(toy_coco, perfect)['coco/bbox_mAP'] < 0.95
    cfg = dict(val_dataloader=dict(dataset=coco), val_evaluator=dict(type='CocoMetric', ann_file=val, metric='bbox'))
    with pytest.raises(AnnotationError, match=rf"val_evaluator\.ann_file {val!r} .* 2 of its {len(data['images'])} "
                                              r"images are not in val_dataloader's dataset"):
        check_detection_data(cfg)
    cfg['val_evaluator']['format_only'] = True                 # no scores computed: nothing to check
    assert check_detection_data(cfg) == 2
    cfg['val_evaluator'] = dict(type='CocoMetric', ann_file=subset, metric='bbox')       # the same images
    assert check_detection_data(cfg) == 2
    cfg['val_dataloader']['dataset'] = dict(coco, ann_file=val)                           # a superset: pycocotools fails loudly
    assert check_detection_data(cfg) == 2
