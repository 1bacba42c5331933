"""Leave-one-person-out folds of the gaze configs: an evaluation loader that reads a person the
training loader also reads (only the train loader's test_person changed) is refused before training."""
import os

import pytest

from attn_plugins import ConfigError, load_config
from attn_plugins.datasets.mpiifacegaze import check_person_folds
from attn_plugins.runner import build_runner

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = os.path.join(ROOT, 'configs', 'gaze', 'toy', 'full_face_resnet18-narrow_toy-mpiifacegaze-64.yaml')
FULL = os.path.join(ROOT, 'configs', 'gaze', 'full_face_alexnet_mpiifacegaze-448.yaml')


def fold(person_train, person_val, person_test=None):
    return [f'train_dataloader.dataset.test_person={person_train}', f'val_dataloader.dataset.test_person={person_val}',
            f'test_dataloader.dataset.test_person={person_test or person_val}']


@pytest.mark.parametrize('config', [TOY, FULL], ids=os.path.basename)
def test_a_fold_changed_in_one_loader_only_is_refused(config, tmp_path):
    with pytest.raises(ConfigError, match=r"val_dataloader.dataset reads p00, also read by train_dataloader.dataset: "
                                          r"leave-one-person-out needs the same test_person"):
        build_runner(config, work_dir=str(tmp_path), cfg_options=['train_dataloader.dataset.test_person=p03'])
    check_person_folds(load_config(config, fold('p03', 'p03')))                # the whole fold: fine
    with pytest.raises(ConfigError, match='test_dataloader.dataset reads p04'):
        check_person_folds(load_config(config, fold('p03', 'p03', 'p04')))
    check_person_folds(load_config(config, fold('p03', 'p03', 'p04')), ('train_dataloader', 'val_dataloader'))


def test_explicit_person_lists_and_split_all():
    cfg = load_config(TOY, ['train_dataloader.dataset.test_person=null', 'train_dataloader.dataset.split=null',
                            'val_dataloader.dataset.test_person=null', 'val_dataloader.dataset.split=null'])
    cfg.train_dataloader.dataset.update(persons=['p01', 'p02'])
    del cfg.train_dataloader.dataset['split'], cfg.val_dataloader.dataset['split']
    for persons, shared in ((['p02', 'p03'], 'p02'), (['p03'], None)):
        cfg.val_dataloader.dataset.update(persons=persons)
        if shared:
            with pytest.raises(ConfigError, match=f'val_dataloader.dataset reads {shared},'):
                check_person_folds(cfg, ('train_dataloader', 'val_dataloader'))
        else:
            check_person_folds(cfg, ('train_dataloader', 'val_dataloader'))
    cfg.train_dataloader.dataset = dict(type='MPIIFaceGazeDataset', data_file='x.h5', split='all')
    with pytest.raises(ConfigError, match='val_dataloader.dataset reads p03,'):
        check_person_folds(cfg, ('train_dataloader', 'val_dataloader'))
