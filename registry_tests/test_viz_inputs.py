"""`attn-plugins viz` inputs a pipeline cannot take: an image file for a config whose test pipeline
does not read image files (CIFAR arrays, video clips), a --sample whose dataset files are missing.
Each is one line naming the pipeline step or the dataset key and what to pass instead, exit 2."""
import os

import numpy as np

from attn_plugins.cli import main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_viz_image_for_a_pipeline_without_image_loading_names_the_step(tmp_path, capsys):
    from PIL import Image
    image = tmp_path / 'x.png'
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(image)
    cases = [('ltpa/toy/vgg-att3-concat-pc_toy-cifar10.yaml', "PackClassificationInputs needs 'img'"),
             ('video/toy/nonlocal_i3d_r50_toy.yaml', "SampleFrames needs 'total_frames'")]
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
