"""`test --out` means what it means in the task's OpenMMLab tools/test.py (predictions: mmseg a
directory of label PNGs, mmdet a .pkl via DumpDetResults, others mmengine's DumpResults .pkl);
the metrics JSON is `--metrics-json`. End to end: test_det_tools.py (det .pkl), test_install.py
(seg PNGs)."""
import argparse
from types import SimpleNamespace

import pytest
from mmdet.evaluation import DumpDetResults, VOCMetric
from mmengine.evaluator import DumpResults
from mmseg.evaluation import IoUMetric

from attn_plugins import ConfigError
from attn_plugins.cli import add_test_arguments, dump_predictions
from attn_plugins.integrations.mmengine import MeanAngularError


def _runner(*metrics):
    return SimpleNamespace(test_evaluator=SimpleNamespace(metrics=list(metrics)))


def test_segmentation_out_is_a_directory_of_label_pngs(tmp_path):
    iou = IoUMetric()
    runner = _runner(iou)
    dump_predictions(runner, str(tmp_path / 'preds'))
    assert iou.output_dir == str(tmp_path / 'preds') and (tmp_path / 'preds').is_dir()
    assert runner.test_evaluator.metrics == [iou]           # metrics still computed, nothing added
    for name in ('metrics.json', 'preds.pkl'):
        with pytest.raises(ConfigError, match=r"for segmentation --out is the directory the predicted label PNGs go "
                                              r"to .*metrics as JSON: --metrics-json"):
            dump_predictions(_runner(IoUMetric()), str(tmp_path / name))


def test_detection_out_is_mmdets_pickle(tmp_path):
    runner = _runner(VOCMetric())
    dump_predictions(runner, str(tmp_path / 'preds.pkl'))
    dumper = runner.test_evaluator.metrics[-1]
    assert type(dumper) is DumpDetResults and dumper.out_file_path == str(tmp_path / 'preds.pkl')
    with pytest.raises(ConfigError, match=r"--out .*metrics\.json: the predictions are dumped as a pickle \(as "
                                          r"mmdet's and mmpretrain's tools/test\.py --out\); name a \.pkl file"):
        dump_predictions(_runner(VOCMetric()), str(tmp_path / 'metrics.json'))


def test_other_tasks_dump_the_model_outputs(tmp_path):
    runner = _runner(MeanAngularError())
    dump_predictions(runner, str(tmp_path / 'gaze.pkl'))
    assert [type(m) for m in runner.test_evaluator.metrics] == [MeanAngularError, DumpResults]


def test_metrics_json_is_its_own_flag():
    args = add_test_arguments(argparse.ArgumentParser()).parse_args(
        ['cfg.yaml', 'ckpt.pth', '--out', 'p.pkl', '--metrics-json', 'm.json'])
    assert (args.out, args.metrics_json) == ('p.pkl', 'm.json')
