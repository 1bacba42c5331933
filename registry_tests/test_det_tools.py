"""Detection through the tools as a user runs them: tools/train.py and tools/test.py on a
configs/det/toy config and generated COCO data (--cfg-options, --resume continuing exactly,
--metrics-json, --out predictions .pkl as mmdet's), progress lines, DDP on gloo with torchrun, mmdet's own tools/train.py on
our YAML, the demo's detection part, and malformed annotation files stopped before training
with one line naming the file and the annotation."""
import glob
import json
import os
import pickle
import re
import subprocess
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))   # tools/ as a package

from attn_plugins.checkpoint import load_state_dict_file  # noqa: E402
from tools.make_toy_coco import make_toy_coco  # noqa: E402
from tools.make_toy_voc import make_toy_voc  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COCO_CFG = os.path.join(ROOT, 'configs', 'det', 'toy', 'faster-rcnn_r50-cbam_fpn_toy-coco.yaml')
VOC_CFG = os.path.join(ROOT, 'configs', 'det', 'toy', 'faster-rcnn_r50-se_fpn_toy-voc.yaml')
pytestmark = pytest.mark.slow


from conftest import load_tool as tool  # noqa: E402


@pytest.fixture(scope='module')
def toy_coco(tmp_path_factory):
    root = str(tmp_path_factory.mktemp('det') / 'toy_coco')
    make_toy_coco(root, num_train=8, num_val=4, seed=0)
    return root


def coco_options(root, epochs, ann_file=None):
    ann_file = ann_file or os.path.join(root, 'annotations', 'instances_val2017.json')
    return ([f'{loader}.dataset.data_root={root}/' for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]
            + [f'val_evaluator.ann_file={ann_file}', f'test_evaluator.ann_file={ann_file}',
               f'train_cfg.max_epochs={epochs}', f'train_cfg.val_interval={epochs}',
               'default_hooks.checkpoint.interval=1', 'log_level=WARNING'])


def last_val_metrics(work_dir):
    """The val metrics mmengine logged last (vis_data/scalars.json of the run)."""
    lines = [json.loads(line) for path in glob.glob(os.path.join(work_dir, '*', 'vis_data', 'scalars.json'))
             for line in open(path)]
    return [line for line in lines if 'coco/bbox_mAP' in line][-1]


@pytest.fixture(scope='module')
def trained(toy_coco, tmp_path_factory):
    """Two epochs of the toy Faster R-CNN + CBAM with tools/train.py (a checkpoint each epoch)."""
    work_dir = str(tmp_path_factory.mktemp('straight'))
    assert tool('train').main([COCO_CFG, '--work-dir', work_dir, '--cfg-options', *coco_options(toy_coco, 2)]) == 0
    return work_dir


def test_train_writes_checkpoints_and_test_reproduces_the_val_metrics(trained, toy_coco, tmp_path, capsys):
    assert sorted(os.listdir(trained)).count('epoch_2.pth') == 1 and os.path.exists(os.path.join(trained, 'epoch_1.pth'))
    out, predictions = str(tmp_path / 'metrics.json'), str(tmp_path / 'predictions.pkl')
    code = tool('test').main([COCO_CFG, os.path.join(trained, 'epoch_2.pth'), '--work-dir', str(tmp_path / 'test'),
                              '--metrics-json', out, '--out', predictions, '--cfg-options', *coco_options(toy_coco, 2)])
    assert code == 0
    with open(os.path.join(toy_coco, 'annotations', 'instances_val2017.json')) as f:
        val_ids = sorted(image['id'] for image in json.load(f)['images'])
    with open(predictions, 'rb') as f:             # mmdet's --out: DumpDetResults, one entry per image
        dumped = pickle.load(f)
    assert sorted(entry['img_id'] for entry in dumped) == val_ids
    assert all(set(entry['pred_instances']) >= {'bboxes', 'scores', 'labels'} for entry in dumped)
    assert sum(len(entry['pred_instances']['scores']) for entry in dumped) > 0
    metrics = json.load(open(out))
    assert set(metrics) == {f'coco/bbox_mAP{s}' for s in ('', '_50', '_75', '_s', '_m', '_l')}
    logged = last_val_metrics(trained)
    assert metrics == pytest.approx({k: logged[k] for k in metrics}, abs=1e-4)
    printed = capsys.readouterr().out
    assert json.loads(printed[printed.rindex('{\n  "coco/'):]) == metrics          # and printed, last


def test_resume_continues_exactly(trained, toy_coco, tmp_path):
    """Resuming from epoch 1 gives the uninterrupted run's epoch-2 weights (seeded config: the same
    data order, flips and sampling of anchors and RoIs)."""
    work_dir = tmp_path / 'resumed'
    work_dir.mkdir()
    state = torch.load(os.path.join(trained, 'epoch_1.pth'), weights_only=True)
    torch.save(state, work_dir / 'epoch_1.pth')
    (work_dir / 'last_checkpoint').write_text(str(work_dir / 'epoch_1.pth'))
    assert tool('train').main([COCO_CFG, '--work-dir', str(work_dir), '--resume',
                               '--cfg-options', *coco_options(toy_coco, 2)]) == 0
    a = load_state_dict_file(os.path.join(trained, 'epoch_2.pth'))
    b = load_state_dict_file(str(work_dir / 'epoch_2.pth'))
    assert a.keys() == b.keys()
    before = load_state_dict_file(os.path.join(trained, 'epoch_1.pth'))
    assert sum(not torch.equal(a[k], before[k]) for k in a) > len(a) // 2     # epoch 2 trained the model
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


def test_malformed_annotations_stop_the_tools_with_one_line(toy_coco, tmp_path, capsys):
    data = json.load(open(os.path.join(toy_coco, 'annotations', 'instances_val2017.json')))
    ann = next(a for a in data['annotations'] if not a['iscrowd'])
    ann['category_id'] = 3                                  # not a category of the file
    broken = str(tmp_path / 'instances_val2017.json')
    json.dump(data, open(broken, 'w'))
    options = coco_options(toy_coco, 1, ann_file=broken)
    assert tool('test').main([COCO_CFG, 'no_such.pth', '--cfg-options', *options]) == 2     # checkpoint first
    assert "checkpoint 'no_such.pth' not found" in capsys.readouterr().err
    code = tool('train').main([COCO_CFG, '--work-dir', str(tmp_path / 'w'), '--cfg-options', *options])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f'train.py: error: {broken}: 1 annotation problem(s): annotation id {ann["id"]} '
                          f'(image id {ann["image_id"]}): category_id 3 not among the file') and 'Traceback' not in err
    assert not glob.glob(str(tmp_path / 'w' / '*' / '*.log'))          # stopped before training


def test_voc_config_with_a_misspelt_class_stops_before_training(tmp_path, capsys):
    root = str(tmp_path / 'toy_voc')
    make_toy_voc(root, voc2007_trainval=4, voc2007_test=2, voc2012_trainval=2, seed=0)
    test_list = os.path.join(root, 'VOCdevkit', 'VOC2007', 'ImageSets', 'Main', 'test.txt')
    image_id = open(test_list).read().split()[0]
    xml = os.path.join(root, 'VOCdevkit', 'VOC2007', 'Annotations', f'{image_id}.xml')
    text = open(xml).read()
    name = text.split('<name>')[1].split('</name>')[0]
    open(xml, 'w').write(text.replace(f'<name>{name}</name>', f'<name>{name.upper()}</name>', 1))
    loaders = [f'{loader}.dataset.data_root={root}/VOCdevkit/' for loader in ('val_dataloader', 'test_dataloader')]
    train_roots = [f'train_dataloader.dataset.dataset.datasets.{i}.data_root={root}/VOCdevkit/' for i in (0, 1)]
    code = tool('train').main([VOC_CFG, '--work-dir', str(tmp_path / 'w'), '--cfg-options', *loaders, *train_roots])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"{xml}: object 1 ('{name.upper()}'): name is not one of the classes" in err and f"did you mean '{name}'" in err


def test_ddp_two_processes_on_gloo(toy_coco, tmp_path):
    cmd = [os.path.join(os.path.dirname(sys.executable), 'torchrun'), '--nproc_per_node=2', '--master_port=29541',
           os.path.join(ROOT, 'tools', 'train.py'), COCO_CFG, '--launcher', 'pytorch', '--work-dir', str(tmp_path),
           '--cfg-options', *coco_options(toy_coco, 1)[:-1], 'log_level=INFO']
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, OMP_NUM_THREADS='1'), timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    log = out.stdout + out.stderr
    assert 'Distributed training: True' in log and 'GPU number: 2' in log
    assert os.path.exists(tmp_path / 'epoch_1.pth') and 'coco/bbox_mAP' in log
    # each rank trains on half of the non-empty images (batch 2 a rank)
    data = json.load(open(os.path.join(toy_coco, 'annotations', 'instances_train2017.json')))
    per_rank = -(-len({a['image_id'] for a in data['annotations']}) // 2)
    iters = -(-per_rank // 2)
    assert re.search(rf'Epoch\(train\)\s+\[1\]\[{iters}/{iters}\]', log), log[-3000:]


def test_mmdet_own_train_script_runs_our_yaml(toy_coco, tmp_path):
    import mmdet
    script = os.path.join(os.path.dirname(mmdet.__file__), '.mim', 'tools', 'train.py')
    out = subprocess.run([sys.executable, script, COCO_CFG, '--work-dir', str(tmp_path), '--cfg-options',
                          *coco_options(toy_coco, 1)[:-1]], capture_output=True, text=True, timeout=600, cwd=ROOT,
                         env=dict(os.environ, OMP_NUM_THREADS='1'))
    assert out.returncode == 0, out.stderr[-3000:]
    assert os.path.exists(tmp_path / 'epoch_1.pth')
    assert 'coco/bbox_mAP' in out.stdout + out.stderr


def test_detection_checkpoints_are_not_put_through_the_mmseg_converter(trained, toy_coco, tmp_path, monkeypatch):
    import attn_plugins.runner as runner_module
    from attn_plugins.registry import ConfigError

    def refuse(*args, **kwargs):
        raise AssertionError('mmseg checkpoint conversion called for a detection config')
    monkeypatch.setattr(runner_module, 'convert_checkpoint_file', refuse)
    checkpoint = os.path.join(trained, 'epoch_2.pth')
    runner = runner_module.build_runner(COCO_CFG, work_dir=str(tmp_path), load_from=checkpoint,
                                        cfg_options=coco_options(toy_coco, 1))
    assert runner.cfg.load_from == checkpoint
    wider = runner_module.build_runner(COCO_CFG, work_dir=str(tmp_path), cfg_options=coco_options(toy_coco, 1) + [
        'model.roi_head.bbox_head.fc_out_channels=48'])                   # --cfg-options reach the detector
    assert wider.model.roi_head.bbox_head.shared_fcs[-1].out_features == 48
    with pytest.raises(ConfigError, match="checkpoint 'missing.pth' not found"):
        runner_module.build_runner(COCO_CFG, work_dir=str(tmp_path), load_from='missing.pth',
                                   cfg_options=coco_options(toy_coco, 1))


def test_demo_detection_part_trains_evaluates_and_draws(toy_coco, tmp_path, monkeypatch, capsys):
    import shutil

    import matplotlib.pyplot as plt
    monkeypatch.chdir(tmp_path)
    shutil.copytree(toy_coco, 'coco')                 # paths relative to the current directory
    assert tool('demo').main(['--parts', 'det', '--det-epochs', '1', '--work-dir', 'out', '--det-data-root', 'coco']) == 0
    report = json.load(open(os.path.join('out', 'det', 'metrics.json')))
    assert report['epochs'] == 1 and report['iterations'] >= 3 and os.path.isfile(report['checkpoint'])
    assert set(report['metrics']) >= {'coco/bbox_mAP', 'coco/bbox_mAP_50'}
    printed = capsys.readouterr().out
    total = report['iterations']                                      # ProgressHook: the last iteration's line
    assert re.search(rf'^\[train\] \[#{{30}}\] {total}/{total} loss \d+\.\d{{3}} elapsed \d+s eta 0s$', printed, re.M)
    assert f"bbox mAP={report['metrics']['coco/bbox_mAP']:.3f}, mAP_50={report['metrics']['coco/bbox_mAP_50']:.3f}" in printed
    picture = plt.imread(os.path.join('out', 'det', 'detections.png'))
    assert picture.shape[1] > 2.5 * picture.shape[0] and picture.std() > 0.05     # a row of val images, drawn
    assert not os.path.exists(os.path.join(ROOT, 'out')) and not os.path.exists(os.path.join(ROOT, 'coco'))
