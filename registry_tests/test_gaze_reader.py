"""MPIIFaceGaze reader edge cases: split 'all' with a test_person, non-person groups in the file."""
import h5py
import numpy as np
import pytest

from attn_plugins import ConfigError
from attn_plugins.datasets.mpiifacegaze import MPIIFaceGaze, persons_in_file


def _write(path, persons=('p00', 'p01'), n=2, extra=None):
    with h5py.File(path, 'w') as f:
        for person in persons:
            for i in range(n):
                f.create_dataset(f'{person}/image/{i:04d}', data=np.zeros((8, 8, 3), np.uint8))
                f.create_dataset(f'{person}/gaze/{i:04d}', data=np.full(2, 0.1 * i))
                f.create_dataset(f'{person}/pose/{i:04d}', data=np.zeros(2))
        for name, value in (extra or {}).items():
            f.create_dataset(name, data=value)
    return str(path)


def test_split_all_refuses_a_test_person(tmp_path):
    path = _write(tmp_path / 'faces.h5')
    for kwargs in (dict(split='all'), {}):                  # 'all' is the default split
        with pytest.raises(ConfigError, match=r"split: 'all' reads every person, 'p01' included, so "
                                              r"test_person='p01' would be ignored; use split 'train' or 'test'"):
            MPIIFaceGaze(path, test_person='p01', **kwargs)
    assert MPIIFaceGaze(path, split='all').persons == ['p00', 'p01']


def test_only_pNN_groups_are_persons(tmp_path):
    path = _write(tmp_path / 'faces.h5', extra={'meta/created_by': b'preprocess', 'p1/gaze/0000': np.zeros(2),
                                               'notes': np.arange(3)})
    assert persons_in_file(path) == ['p00', 'p01']
    data = MPIIFaceGaze(path)
    assert data.persons == ['p00', 'p01'] and len(data) == 4
    assert MPIIFaceGaze(path, test_person='p00', split='train').persons == ['p01']
    with pytest.raises(ConfigError, match=r"faces\.h5': 'meta' is not a person group \(persons are the pNN groups: "
                                          r"p00, p01\)"):
        MPIIFaceGaze(path, persons=['p00', 'meta'])
    with pytest.raises(ConfigError, match=r"test_person: 'meta' is not a person of the file \(p00, p01\)"):
        MPIIFaceGaze(path, test_person='meta', split='test')


def test_a_file_without_person_groups_says_what_it_holds(tmp_path):
    path = _write(tmp_path / 'other.h5', persons=(), extra={'meta/x': np.zeros(1), 'person0/image/0000': np.zeros(1)})
    with pytest.raises(ConfigError, match=r"other\.h5' has no person groups \(expected groups p00 \.\.\. p14; "
                                          r"it holds meta, person0\)"):
        MPIIFaceGaze(path)


def test_a_huge_declared_sample_is_refused_before_reading(tmp_path):
    """A few KB of compressed HDF5 can declare a 1 GB image: its size is checked from the metadata,
    before h5py reads (and allocates) it."""
    path = _write(tmp_path / 'faces.h5', persons=('p00',), n=1)
    with h5py.File(path, 'a') as f:
        del f['p00/image/0000']
        f.create_dataset('p00/image/0000', shape=(20000, 20000, 3), dtype=np.uint8, chunks=(1000, 1000, 3),
                         compression='gzip')
    import os
    assert os.path.getsize(path) < 100_000
    reader = MPIIFaceGaze(path)
    with pytest.raises(ConfigError, match=r"p00/image/0000 has shape \(20000, 20000, 3\) and dtype uint8 \(1144 MiB, "
                                          r"more than the 64 MiB a sample may take\); expected \(H, W, 3\) uint8"):
        reader[0]
