"""`attn-plugins viz` inputs: an image file for a config whose test pipeline does not read image files
(video clips), a --sample whose dataset files are missing: one line naming the pipeline step or the
dataset key and what to pass instead, exit 2. An image file for CIFAR (arrays, no loading step) is read
by the dataset class (`CifarDataset.image_item`), and every picture shows the input in its true colours."""
import os
import subprocess
import sys

import numpy as np

from attn_plugins.cli import main
from conftest import load_tool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_viz_image_for_a_pipeline_without_image_loading_names_the_step(tmp_path, capsys):
    from PIL import Image
    image = tmp_path / 'x.png'
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    cases = [('video/toy/nonlocal_i3d_r50_toy.yaml', "SampleFrames needs 'total_frames'")]
    for config, step in cases:
        status = main(['viz', os.path.join(ROOT, 'configs', config), '--image', str(image),
                       '--out', str(tmp_path / 'v')])
        err = capsys.readouterr().err.strip()
        assert status == 2 and len(err.splitlines()) == 1, err
        assert err.startswith(f"attn-plugins viz: error: --image {str(image)!r}: the test pipeline of "
                              "test_dataloader.dataset cannot run on an image file alone")
        assert step in err and 'pass --sample N' in err
    assert not os.path.exists(tmp_path / 'v')


def test_viz_sample_of_a_missing_dataset_names_the_dataset_key(tmp_path, capsys):
    config = os.path.join(ROOT, 'configs', 'video', 'toy', 'nonlocal_i3d_r50_toy.yaml')
    missing = tmp_path / 'no_rawframes'
    status = main(['viz', config, '--sample', '0', '--out', str(tmp_path / 'v'),
                   '--cfg-options', f'test_dataloader.dataset.data_root={missing}'])
    err = capsys.readouterr().err.strip()
    assert status == 2 and len(err.splitlines()) == 1, err
    assert err.startswith("attn-plugins viz: error: --sample 0: test_dataloader.dataset could not be read")
    assert 'val.txt' in err and '--cfg-options test_dataloader.dataset.data_root=' in err and '--image' in err


def test_viz_image_for_cifar_runs_and_every_picture_keeps_the_colours(tmp_path, capsys):
    """A pure red image file is shown red under the maps: OpenMMLab loads BGR and the preprocessors swap
    (mmdet: `_channel_conversion`, mmseg: `channel_conversion`), CIFAR's arrays are RGB already. Before,
    seg and CIFAR pictures showed it blue, and CIFAR refused image files."""
    from PIL import Image
    from attn_plugins.config import load_config
    from attn_plugins.plan import build_config_model
    from attn_plugins.visualize import prepare_input
    image = tmp_path / 'red.png'
    Image.fromarray(np.tile(np.array([255, 0, 0], np.uint8), (40, 48, 1))).save(image)
    ltpa = os.path.join(ROOT, 'configs', 'ltpa', 'toy', 'vgg-att3-concat-pc_toy-cifar10.yaml')
    status = main(['viz', ltpa, '--image', str(image), '--out', str(tmp_path / 'v')])
    assert status == 0, capsys.readouterr().err
    pictures = sorted(os.listdir(tmp_path / 'v'))
    assert len(pictures) == 3 and all(p.endswith('.png') for p in pictures), pictures
    for config in (ltpa, 'seg/toy/se_fcn_r50-d8_toy.yaml', 'det/toy/retinanet_r50-se_fpn_toy-coco.yaml'):
        cfg = load_config(os.path.join(ROOT, 'configs', config))
        shown = prepare_input(cfg, build_config_model(cfg), str(image), None).image
        # padding (det / seg pad to a size divisor) is black; resizing blends the border into it
        lit = shown.reshape(-1, 3)[shown.reshape(-1, 3).max(1) > 0.1]
        assert len(lit) and np.allclose(np.median(lit, 0), [1, 0, 0], atol=0.02), (config, np.median(lit, 0))
        assert (lit[:, 0] > lit[:, 1:].max(1)).all(), config


def test_viz_sample_shows_the_datasets_own_colours(tmp_path):
    """`--sample N` draws the item as the dataset gives it: CIFAR's RGB arrays, also inside a
    RepeatDataset, and MPIIFaceGaze faces in the config's `channel_order` (default RGB; 'bgr' shown
    flipped back). Before, the gaze and wrapped CIFAR pictures showed the channels reversed."""
    from mmengine.registry import DATASETS
    from attn_plugins.config import load_config
    from attn_plugins.plan import build_config_model
    from attn_plugins.visualize import prepare_input

    def shown_and_raw(cfg, raw_of):
        model = build_config_model(cfg)
        shown = prepare_input(cfg, model, None, 0).image
        with DATASETS.switch_scope_and_registry(None) as registry:
            raw = raw_of(registry.build(cfg.test_dataloader.dataset)) / 255.0
        return shown, raw

    cifar = str(tmp_path / 'toy_cifar')
    assert load_tool('make_toy_cifar').main(['--out', cifar, '--dataset', 'cifar10', '--train', '10', '--test', '4']) == 0
    for wrapped in (False, True):
        cfg = load_config(os.path.join(ROOT, 'configs', 'ltpa', 'toy', 'vgg-att3-concat-pc_toy-cifar10.yaml'))
        cfg.test_dataloader.dataset.data_root = cifar
        if wrapped:
            cfg.test_dataloader.dataset = dict(type='RepeatDataset', times=2, dataset=cfg.test_dataloader.dataset)
        shown, raw = shown_and_raw(cfg, lambda ds: ds.get_data_info(0)['img'])
        assert np.abs(shown - raw).max() < 1e-6 < np.abs(shown - raw[..., ::-1]).max(), wrapped

    faces = str(tmp_path / 'gaze.h5')
    assert load_tool('make_toy_mpiifacegaze').main(['--out', faces, '--persons', '1', '--per-person', '2',
                                                '--size', '64']) == 0
    for order in ('rgb', 'bgr'):
        cfg = load_config(os.path.join(ROOT, 'configs', 'gaze', 'toy', 'full_face_resnet18-narrow_toy-mpiifacegaze-64.yaml'))
        cfg.test_dataloader.dataset.update(data_file=faces, test_person=None, split='all', channel_order=order)
        shown, raw = shown_and_raw(cfg, lambda ds: ds[0]['inputs'].permute(1, 2, 0).numpy())
        rgb = raw if order == 'rgb' else raw[..., ::-1]
        assert np.abs(shown - rgb).max() < 1e-6 < np.abs(shown - rgb[..., ::-1]).max(), order


def test_viz_with_no_drawable_block_fails_and_writes_nothing(tmp_path, capsys):
    """A config whose blocks all record no map (mmcv's ContextBlock) exits 2 with one line naming
    them, as a model without blocks does; before, it printed a note per block and exited 0."""
    from PIL import Image
    image = tmp_path / 'x.png'
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    config = os.path.join(ROOT, 'configs', 'det', 'toy', 'faster-rcnn_r50-gcb-r16_fpn_toy-coco.yaml')
    result = subprocess.run([sys.executable, '-m', 'attn_plugins.cli', 'viz', config, '--image', str(image),
                             '--out', str(tmp_path / 'v')], capture_output=True, text=True, cwd=ROOT)
    errors = [line for line in result.stderr.splitlines() if 'error' in line.lower()]
    assert result.returncode == 2 and len(errors) == 1, result.stderr
    assert 'none of the 16 attention block(s) gives a picture' in errors[0] and 'ContextBlock' in errors[0]
    assert not os.path.exists(tmp_path / 'v')


def test_viz_image_too_large_for_pil_is_one_line(tmp_path, monkeypatch, capsys):
    """PIL's decompression-bomb guard (not an OSError) is a one-line --image error on the timm path too."""
    from PIL import Image
    image = tmp_path / 'big.png'
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    monkeypatch.setattr(Image, 'MAX_IMAGE_PIXELS', 10)          # 1600 pixels: over twice the limit
    config = tmp_path / 't.yaml'
    config.write_text("model:\n  type: timm/resnet18\n  plugins:\n    - {type: SE, where: 'layer4.1', position: 'after:bn2'}\n")
    status = main(['viz', str(config), '--image', str(image), '--out', str(tmp_path / 'v')])
    errors = [line for line in capsys.readouterr().err.splitlines() if 'error' in line]
    assert status == 2 and len(errors) == 1 and 'not an image PIL can read' in errors[0], errors
