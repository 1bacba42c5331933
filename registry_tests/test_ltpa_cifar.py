"""Learn to Pay Attention on CIFAR: the python-format reader (restricted unpickler), the toy
generator's Python 2 cPickle streams, the mmengine classifier / dataset / transforms / metric, and
the toy configs trained and evaluated with tools/train.py and tools/test.py."""
import glob
import json
import os
import pickle
import pickletools
import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import attn_plugins
from attn_plugins.datasets.cifar import (CifarFormatError, UnsafePickleError, decode_images, encode_images,
                                         load_cifar_pickle, read_cifar)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOY = sorted(glob.glob(os.path.join(ROOT, 'configs', 'ltpa', 'toy', '*.yaml')))
FULL = sorted(glob.glob(os.path.join(ROOT, 'configs', 'ltpa', '*.yaml')))
TOY_ATT3 = os.path.join(ROOT, 'configs', 'ltpa', 'toy', 'vgg-att3-concat-pc_toy-cifar10.yaml')
NUMPY_GLOBALS = {'numpy.core.multiarray _reconstruct', 'numpy ndarray', 'numpy dtype'}


from conftest import load_tool as tool  # noqa: E402


def generate(out, train, test, dataset='both'):
    """tools/make_toy_cifar.py, run in this process (its main(argv) is what the command line runs)."""
    assert tool('make_toy_cifar').main(['--out', str(out), '--dataset', dataset, '--train', str(train),
                                        '--test', str(test)]) == 0
    return str(out)


@pytest.fixture(scope='module')
def small_data(tmp_path_factory):
    return generate(tmp_path_factory.mktemp('cifar') / 'toy_cifar', 100, 40)


def data_options(root):
    return [f'{loader}.dataset.data_root={root}' for loader in ('train_dataloader', 'val_dataloader', 'test_dataloader')]


# ------------------------------------------------------------------ reader and generator
def test_reader_on_generated_cifar10_and_cifar100(small_data):
    train = read_cifar(small_data, 'cifar10', 'train')
    assert train.images.shape == (100, 32, 32, 3) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int64 and np.bincount(train.labels).tolist() == [10] * 10
    assert train.classes == ('airplane', 'automobile', 'bird', 'cat', 'deer', 'dog', 'frog', 'horse', 'ship', 'truck')
    assert [os.path.basename(f) for f in train.files] == [f'data_batch_{i}' for i in range(1, 6)]
    assert len(train.filenames) == 100 and train.filenames[0].endswith('.png')
    assert train.filenames[0].startswith(train.classes[train.labels[0]])
    test = read_cifar(os.path.join(small_data, 'cifar-10-batches-py'), 'cifar10', 'test')   # the folder itself
    assert len(test) == 40 and [os.path.basename(f) for f in test.files] == ['test_batch']

    fine = read_cifar(small_data, 'cifar100', 'train', 'fine')
    coarse = read_cifar(small_data, 'cifar100', 'train', 'coarse')
    assert len(fine.classes) == 100 and len(coarse.classes) == 20 and fine.classes[17] == 'disk_with_tee'
    assert np.array_equal(fine.images, coarse.images)
    assert np.array_equal(coarse.labels, fine.labels // 5)         # CIFAR-100's 5 fine classes per coarse one
    assert fine.labels.max() < 100 and len(fine) == 100
    with pytest.raises(attn_plugins.ConfigError, match="label_type: cifar10 has \\['fine'\\]"):
        read_cifar(small_data, 'cifar10', 'train', 'coarse')
    with pytest.raises(FileNotFoundError, match='cifar-100-python/meta'):
        read_cifar(os.path.join(small_data, 'cifar-10-batches-py'), 'cifar100')


def test_rows_are_red_then_green_then_blue_planes():
    row = np.arange(3072, dtype=np.int64) % 251
    image = decode_images(row.astype(np.uint8)[None])[0]
    y, x = 5, 17
    assert image[y, x].tolist() == [row[y * 32 + x], row[1024 + y * 32 + x], row[2048 + y * 32 + x]]
    assert np.array_equal(encode_images(image[None])[0], row.astype(np.uint8))


def test_generated_files_are_python2_cpickle_streams_with_the_real_keys(small_data):
    expected = {
        'cifar-10-batches-py/data_batch_1': {b'batch_label', b'labels', b'data', b'filenames'},
        'cifar-10-batches-py/test_batch': {b'batch_label', b'labels', b'data', b'filenames'},
        'cifar-10-batches-py/batches.meta': {b'num_cases_per_batch', b'label_names', b'num_vis'},
        'cifar-100-python/train': {b'filenames', b'batch_label', b'fine_labels', b'coarse_labels', b'data'},
        'cifar-100-python/meta': {b'fine_label_names', b'coarse_label_names'},
    }
    for name, keys in expected.items():
        path = os.path.join(small_data, name)
        raw = open(path, 'rb').read()
        ops = [(op.name, arg) for op, arg, _ in pickletools.genops(raw)]
        assert ops[0] == ('PROTO', 2)
        names = {op for op, _ in ops}
        assert not names & {'SHORT_BINBYTES', 'BINBYTES', 'BINUNICODE', 'SHORT_BINUNICODE'}   # Python 2 `str`
        assert {arg for op, arg in ops if op == 'GLOBAL'} <= NUMPY_GLOBALS
        plain = pickle.loads(raw, encoding='bytes')        # what the dataset page's snippet reads
        ours = load_cifar_pickle(path)
        assert set(ours) == set(plain) == keys
        for key in keys:
            if isinstance(plain[key], np.ndarray):
                assert ours[key].dtype == np.uint8 and np.array_equal(ours[key], plain[key])
            else:
                assert ours[key] == plain[key]
    assert {arg for op, arg, _ in pickletools.genops(open(os.path.join(
        small_data, 'cifar-10-batches-py/data_batch_1'), 'rb').read()) if op.name == 'GLOBAL'} == NUMPY_GLOBALS


def test_generator_is_deterministic(small_data, tmp_path):
    again = generate(tmp_path / 'again', 100, 40, 'cifar10')
    for name in ('data_batch_3', 'test_batch', 'batches.meta'):
        path = os.path.join('cifar-10-batches-py', name)
        assert open(os.path.join(small_data, path), 'rb').read() == open(os.path.join(again, path), 'rb').read()


# ------------------------------------------------------------------ restricted unpickler
class RunsCode:
    """Unpickling an instance calls `fn(*args)` (what a malicious file does)."""

    def __init__(self, fn, *args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


def malicious_payloads(marker):
    code = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    return {
        'os.system': RunsCode(os.system, f'touch {marker}'),
        'builtins.eval': RunsCode(eval, code),
        'builtins.exec': RunsCode(exec, code),
        # hidden inside an otherwise well-formed CIFAR batch
        'nested': {b'batch_label': b'training batch 1 of 5', b'data': np.zeros((1, 3072), np.uint8),
                   b'labels': [RunsCode(eval, code)], b'filenames': [b'a.png']},
    }


@pytest.mark.parametrize('name', ['os.system', 'builtins.eval', 'builtins.exec', 'nested'])
def test_restricted_unpickler_refuses_code_that_plain_pickle_runs(name, tmp_path):
    marker = tmp_path / 'marker'
    payload = malicious_payloads(marker)[name]
    path = tmp_path / 'data_batch_1'
    path.write_bytes(pickle.dumps(payload, protocol=4 if name == 'nested' else 2))   # 4: bytes need no global
    pickle.loads(path.read_bytes(), encoding='bytes')          # plain pickle.load runs it ...
    assert marker.exists()
    marker.unlink()
    with pytest.raises(UnsafePickleError, match=re.escape(str(path)) +   # Python 2 names: protocol 2 pickles
                       r": refusing to load the global (posix\.system|(__builtin__|builtins)\.(eval|exec))") as err:
        load_cifar_pickle(str(path))                           # ... ours refuses before calling anything
    assert not marker.exists()
    assert isinstance(err.value, attn_plugins.ConfigError) and isinstance(err.value, pickle.UnpicklingError)


def test_restricted_unpickler_refuses_object_arrays_and_persistent_ids(tmp_path):
    objects = tmp_path / 'objects'
    objects.write_bytes(pickle.dumps({b'data': np.array([1, 'x'], dtype=object)}, protocol=4))
    with pytest.raises(UnsafePickleError, match='object arrays are not allowed'):
        load_cifar_pickle(str(objects))

    class WithPersistentId(pickle.Pickler):
        def persistent_id(self, obj):
            return 'ref' if obj == b'secret' else None

    import io
    buffer = io.BytesIO()
    WithPersistentId(buffer, protocol=4).dump({b'labels': [b'secret']})
    persistent = tmp_path / 'persistent'
    persistent.write_bytes(buffer.getvalue())
    with pytest.raises(UnsafePickleError, match='persistent id'):
        load_cifar_pickle(str(persistent))
    broken = tmp_path / 'broken'
    broken.write_bytes(b'\x80\x02}q\x01(U\x04data')          # truncated
    with pytest.raises(CifarFormatError, match='not a readable CIFAR pickle'):
        load_cifar_pickle(str(broken))


def test_restricted_unpickler_refuses_shared_containers_that_expand(tmp_path):
    """Memo references let a few bytes name an exponential tree (156 bytes took 18 s to rebuild at
    depth 22, each level doubling): a second reference to a container or a long string is refused
    by an opcode scan before unpickling. Short strings may repeat."""
    nested = []
    for _ in range(12):                                   # 4096 leaves here; depth 40 would never end
        nested = [nested, nested]
    key = ()
    for _ in range(12):
        key = (key, key)                                  # hashing it as a dict key expands it too
    long_name = b'n' * 2000
    cases = {'lists': {b'data': nested}, 'tuple key': {key: 1},
             'long string': {b'fine_label_names': [long_name] * 3}}
    for name, content in cases.items():
        path = tmp_path / name.replace(' ', '_')
        path.write_bytes(pickle.dumps(content, protocol=4))
        assert any(op.name in ('BINGET', 'LONG_BINGET') for op, _, _ in pickletools.genops(path.read_bytes()))
        with pytest.raises(UnsafePickleError, match=re.escape(str(path)) + '.*second reference to a container'):
            load_cifar_pickle(str(path))
    short = tmp_path / 'short'
    short.write_bytes(pickle.dumps({b'label_names': [b'cat'] * 3, b'data': np.zeros((2, 3), np.uint8)}, protocol=4))
    assert any(op.name == 'BINGET' for op, _, _ in pickletools.genops(short.read_bytes()))
    assert load_cifar_pickle(str(short))[b'label_names'] == [b'cat'] * 3


class Reduces:
    """Pickles as `fn(*args)`, then BUILD with `state` (a crafted numpy pickle)."""

    def __init__(self, fn, args, state=None):
        self.reduced = (fn, args) if state is None else (fn, args, state)

    def __reduce__(self):
        return self.reduced


def crafted_array(dtype_state, data=bytes(16), shape=(2,), code='V8'):
    from numpy._core.multiarray import _reconstruct
    dtype = Reduces(np.dtype, (code, False, True), dtype_state)
    return Reduces(_reconstruct, (np.ndarray, (0,), b'b'), (1, shape, dtype, False, data))


def test_restricted_unpickler_globals_cannot_be_tampered_with(tmp_path):
    """BUILD with a slot state on a resolved global would set its attributes for the whole process
    (a function's defaults, a class's __new__), even in a file that is refused afterwards."""
    import struct
    import attn_plugins.datasets.cifar as cifar

    def text(s):
        return b'X' + struct.pack('<I', len(s)) + s.encode()
    attacks = {'defaults': b'\x80\x02cnumpy\ndtype\nN}' + text('__defaults__') + b'(\x88K\x00\x88ts\x86b.',
               'new': b'\x80\x02cnumpy\nndarray\nN}' + text('__new__') + b'cnumpy\ndtype\ns\x86b.'}
    before = {name: dict(vars(obj)) if hasattr(obj, '__dict__') else None
              for name, obj in vars(cifar).items() if callable(obj)}
    for name, raw in attacks.items():
        path = tmp_path / name
        path.write_bytes(raw)
        with pytest.raises(UnsafePickleError, match=re.escape(str(path)) + ': .*may not set the state of a global'):
            load_cifar_pickle(str(path))
    after = {name: dict(vars(obj)) if hasattr(obj, '__dict__') else None
             for name, obj in vars(cifar).items() if callable(obj)}
    assert after == before
    assert {fn.__defaults__ for fn in (cifar._checked_dtype,) if hasattr(fn, '__defaults__')} <= {(False, True)}


@pytest.mark.parametrize('name', ['field_out_of_bounds', 'object_flag', 'size_mismatch', 'ndarray_called',
                                  'nested_deeply'])
def test_restricted_unpickler_checks_numpy_states(name, tmp_path):
    """numpy trusts the BUILD states of dtypes and arrays: a field at an arbitrary offset reads outside
    the array (a segfault, or process memory in the values), an object flag makes numpy treat bytes as
    pointers, `numpy.ndarray(shape, dtype)` called directly allocates any size without the file holding
    the bytes. Each is refused with the file's name; real numpy pickles load (tests above)."""
    i8 = Reduces(np.dtype, ('i8', False, True), (3, '<', None, None, None, -1, -1, 0))
    values = {
        'field_out_of_bounds': crafted_array((3, '|', None, ('a',), {'a': (i8, 2 ** 40)}, 8, 1, 0)),
        'object_flag': crafted_array((3, '<', None, None, None, -1, -1, 0x01), code='i8'),
        'size_mismatch': crafted_array((3, '|', None, None, None, -1, -1, 0), data=b'abcd', shape=(10 ** 6, 3072),
                                       code='u1'),
        'ndarray_called': Reduces(np.ndarray, ((3 * 10 ** 6, 3072), 'u1')),
    }
    path = tmp_path / 'test_batch'
    if name == 'nested_deeply':
        depth = 100000
        path.write_bytes(b'\x80\x02}C\x01x' + b']' * depth + b'a' * (depth - 1) + b's.')
    else:
        path.write_bytes(pickle.dumps({b'data': values[name]}, protocol=4))
    with pytest.raises(CifarFormatError, match=re.escape(str(path)) + ': ' + {
            'field_out_of_bounds': r"numpy\.dtype\('V8'\): unexpected state", 'object_flag': r"numpy\.dtype\('i8'\)",
            'size_mismatch': r'numpy array state: \(1000000, 3072\) x uint8 needs 3072000000 bytes, got 4',
            'ndarray_called': 'numpy.ndarray called directly', 'nested_deeply': 'containers nested too deeply'}[name]):
        load_cifar_pickle(str(path))


def test_reader_names_file_and_key_of_bad_content(small_data, tmp_path):
    import shutil
    folder = tmp_path / 'cifar-10-batches-py'
    shutil.copytree(os.path.join(small_data, 'cifar-10-batches-py'), folder)
    batch = load_cifar_pickle(str(folder / 'data_batch_2'))
    batch[b'labels'][0] = 10                                    # outside the 10 names
    (folder / 'data_batch_2').write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(CifarFormatError, match=r"data_batch_2: b'labels' outside 0\.\.9"):
        read_cifar(str(tmp_path), 'cifar10', 'train')
    del batch[b'labels']
    (folder / 'data_batch_2').write_bytes(pickle.dumps(batch, protocol=4))
    with pytest.raises(CifarFormatError, match=r"data_batch_2: no key b'labels'"):
        read_cifar(str(tmp_path), 'cifar10', 'train')


# ------------------------------------------------------------------ mmengine pieces
def test_metric_hand_cases():
    from attn_plugins.integrations.mmengine import TopKAccuracy
    scores = torch.tensor([[0.1, 0.5, 0.2, 0.1, 0.05, 0.05],     # label 1: top-1 hit
                           [0.3, 0.25, 0.2, 0.15, 0.06, 0.04],   # label 3: rank 4, a top-5 hit
                           [0.3, 0.25, 0.2, 0.15, 0.06, 0.04],   # label 5: rank 6, a miss
                           [0.0, 0.0, 0.1, 0.0, 0.9, 0.0]])      # label 4: top-1 hit
    labels = [1, 3, 5, 4]
    metric = TopKAccuracy(topk=(1, 5))
    metric.process({}, [dict(pred_score=s, pred_label=int(s.argmax()), gt_label=label)
                        for s, label in zip(scores, labels)])
    result = metric.compute_metrics(metric.results)
    assert result == pytest.approx({'top1_error': 50.0, 'top1_acc': 50.0, 'top5_acc': 75.0})
    top3 = TopKAccuracy(topk=3)
    top3.process({}, [dict(pred_score=s, gt_label=label) for s, label in zip(scores, labels)])
    assert top3.compute_metrics(top3.results) == pytest.approx({'top1_error': 50.0, 'top1_acc': 50.0, 'top3_acc': 50.0})
    too_many = TopKAccuracy(topk=(1, 10))
    with pytest.raises(ValueError, match='topk=10 but the scores have 6 classes'):
        too_many.process({}, [dict(pred_score=scores[0], gt_label=1)])
    with pytest.raises(attn_plugins.ConfigError, match='TopKAccuracy.topk'):
        TopKAccuracy(topk=(0,))


def small_classifier(backbone='PayAttentionVGG', **options):
    from mmengine.registry import MODELS
    spec = dict(type=backbone, num_classes=10, width_multiplier=0.125, conv_dropout=False, **options)
    if backbone == 'PayAttentionVGG':
        spec['global_channels'] = 64
    return MODELS.build(dict(type='AttentionClassifier', backbone=spec,
                             data_preprocessor=dict(type='ImgDataPreprocessor', mean=[127.5] * 3, std=[64.0] * 3)))


def test_classifier_returns_logits_with_attention_maps_at_the_three_layers():
    from mmengine.structures import BaseDataElement
    model = small_classifier().eval()
    images = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    samples = [BaseDataElement(gt_label=label, metainfo=dict(sample_idx=i)) for i, label in enumerate([2, 7, 0])]
    data = model.data_preprocessor(dict(inputs=list(images), data_samples=samples))
    with torch.no_grad():
        logits = model(data['inputs'], mode='tensor')
        predictions = model(**data, mode='predict')
        loss = model(**data, mode='loss')['loss_cls']
    assert logits.shape == (3, 10)
    torch.testing.assert_close(loss, F.cross_entropy(logits, torch.tensor([2, 7, 0])))
    for i, prediction in enumerate(predictions):
        torch.testing.assert_close(prediction.pred_score, logits[i].softmax(0))
        assert prediction.pred_label == int(logits[i].argmax()) and prediction.gt_label == samples[i].gt_label
        maps = prediction.attention_maps
        assert [tuple(m.shape) for m in maps] == [(1, 32, 32), (1, 16, 16), (1, 8, 8)]
        torch.testing.assert_close(torch.stack([m.sum() for m in maps]), torch.ones(3))
    # the maps are the attention modules' own (forward hooks see the same tensors)
    seen = []
    hooks = [m.register_forward_hook(lambda mod, args, out: seen.append(out[1])) for m in model.backbone.attention]
    with torch.no_grad():
        predictions = model(**data, mode='predict')
    for h in hooks:
        h.remove()
    for level, attn in enumerate(seen):
        torch.testing.assert_close(torch.stack([p.attention_maps[level] for p in predictions]), attn)

    baseline = small_classifier('VGGBNDrop').eval()
    with torch.no_grad():
        plain = baseline(**data, mode='predict')
    assert 'attention_maps' not in plain[0] and plain[0].pred_score.shape == (10,)


def test_classifier_options_are_checked():
    with pytest.raises(attn_plugins.ConfigError, match="model.backbone.type: .*'PayAttentionVGG'"):
        small_classifier('PayAttentionVG')
    with pytest.raises(attn_plugins.ConfigError, match="model.backbone.aggregaton: unknown option .*aggregation"):
        small_classifier(aggregaton='indep')
    with pytest.raises(attn_plugins.ConfigError, match=r"model.backbone \(PayAttentionVGG\): compatibility: "
                       r"expected 'pc' or 'dp', got 'pcc'"):     # a bad value: one line through the tools
        small_classifier(compatibility='pcc')


def test_dataset_and_transforms(small_data):
    from mmengine.registry import DATASETS
    pipeline = [dict(type='RandomCropWithPadding', size=32, padding=4), dict(type='RandomHorizontalFlip', prob=1.0),
                dict(type='PackClassificationInputs')]
    dataset = DATASETS.build(dict(type='CifarDataset', data_root=small_data, dataset='cifar100', split='test',
                                  label_type='coarse', pipeline=pipeline))
    reference = read_cifar(small_data, 'cifar100', 'test', 'coarse')
    assert len(dataset) == 40 and dataset.metainfo['classes'] == reference.classes
    torch.manual_seed(3)
    item = dataset[5]
    assert item['inputs'].shape == (3, 32, 32) and item['inputs'].dtype == torch.uint8
    assert item['data_samples'].gt_label == reference.labels[5] and item['data_samples'].sample_idx == 5
    # a window of the zero-padded, mirrored image
    padded = np.pad(reference.images[5][:, ::-1], ((4, 4), (4, 4), (0, 0)))
    window = item['inputs'].permute(1, 2, 0).numpy()
    assert any(np.array_equal(padded[t:t + 32, l:l + 32], window) for t in range(9) for l in range(9))
    assert not np.array_equal(window, reference.images[5])
    plain = DATASETS.build(dict(type='CifarDataset', data_root=small_data, dataset='cifar10', split='train',
                                pipeline=[dict(type='PackClassificationInputs')], indices=7))
    assert len(plain) == 7
    assert np.array_equal(plain[3]['inputs'].permute(1, 2, 0).numpy(), read_cifar(small_data).images[3])
    with pytest.raises(attn_plugins.ConfigError, match="CifarDataset.split: expected one of \\['train', 'test'\\]"):
        DATASETS.build(dict(type='CifarDataset', data_root=small_data, split='val'))


@pytest.mark.parametrize('config', FULL, ids=os.path.basename)
def test_full_configs_build_the_paper_models(config):
    cfg = attn_plugins.load_config(config)
    from mmengine.registry import MODELS
    model = MODELS.build(cfg.model)
    classes = 100 if 'cifar100' in config else 10
    assert model.backbone.num_classes == classes
    optimizer = cfg.optim_wrapper.optimizer
    assert (optimizer.lr, optimizer.momentum, optimizer.dampening, optimizer.weight_decay) == (1.0, 0.9, 0.9, 5e-4)
    assert cfg.train_dataloader.batch_size == 128 and cfg.train_cfg.max_epochs == 300
    assert cfg.param_scheduler == [dict(type='StepLR', step_size=25, gamma=0.5, by_epoch=True, begin=0, end=300)]
    if 'att3' in config:
        assert (model.backbone.aggregation, model.backbone.attention[0].compatibility) == ('concat', 'pc')
        assert sum(p.numel() for p in model.parameters()) > 14_000_000
    else:
        assert type(model.backbone).__name__ == 'VGGBNDrop' and not hasattr(model.backbone, 'attention')


# ------------------------------------------------------------------ tools, end to end
def test_tools_report_a_malicious_cifar_file_in_one_line(small_data, tmp_path, capsys):
    import shutil
    root = tmp_path / 'data'
    shutil.copytree(os.path.join(small_data, 'cifar-10-batches-py'), root / 'cifar-10-batches-py')
    marker = tmp_path / 'marker'
    (root / 'cifar-10-batches-py' / 'data_batch_4').write_bytes(
        pickle.dumps(RunsCode(os.system, f'touch {marker}'), protocol=2))
    status = tool('train').main([TOY_ATT3, '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                                 *data_options(root), 'log_level=WARNING'])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and not marker.exists()
    assert len(err) == 1 and 'data_batch_4: refusing to load the global posix.system' in err[0]


def test_tools_report_a_dataset_key_typo_in_one_line(small_data, tmp_path, capsys):
    """Datasets are built when training starts (not with the Runner): a key they do not take is
    still one line and status 2, naming the class and the key."""
    status = tool('train').main([TOY_ATT3, '--work-dir', str(tmp_path / 'work'), '--cfg-options',
                                 *data_options(small_data), 'train_dataloader.dataset.data_rot=x', 'log_level=WARNING'])
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert "CifarDataset.__init__() got an unexpected keyword argument 'data_rot'; check the config keys" in err[0]


@pytest.mark.parametrize('config', [c for c in TOY if c != TOY_ATT3], ids=os.path.basename)
def test_other_toy_configs_train_and_evaluate(config, small_data, tmp_path):
    """(The VGG-att3 CIFAR-10 toy trains in the resume and learning tests.)"""
    from attn_plugins.runner import build_runner
    options = data_options(small_data) + ['train_cfg.max_epochs=1', 'train_cfg.val_interval=1',
                                          'train_dataloader.dataset.indices=32', 'log_level=WARNING']
    runner = build_runner(config, work_dir=str(tmp_path), cfg_options=options)
    runner.train()
    metrics = runner.test()
    assert set(metrics) == {'top1_error', 'top1_acc', 'top5_acc'}
    assert metrics['top1_error'] == pytest.approx(100 - metrics['top1_acc'])


@pytest.mark.slow
def test_toy_vgg_att3_learns_with_the_tools(tmp_path):
    """tools/train.py on the generator's default 1000 CIFAR-10 images (the toy config as shipped),
    tools/test.py on its 200: the top-1 error ends well below that of always predicting the majority
    class (68 against 90 in our run: the class is the shape of one object among clutter of its colour)."""
    data = str(tmp_path / 'toy_cifar')
    assert tool('make_toy_cifar').main(['--out', data, '--dataset', 'cifar10']) == 0
    work = tmp_path / 'work'
    assert tool('train').main([TOY_ATT3, '--work-dir', str(work), '--cfg-options', *data_options(data),
                               'log_level=WARNING']) == 0
    out = tmp_path / 'metrics.json'
    assert tool('test').main([TOY_ATT3, str(work / 'epoch_3.pth'), '--work-dir', str(tmp_path / 'test'),
                              '--metrics-json', str(out), '--cfg-options', *data_options(data), 'log_level=WARNING']) == 0
    metrics = json.loads(out.read_text())
    labels = read_cifar(data, 'cifar10', 'test').labels
    majority_error = 100 * (1 - np.bincount(labels).max() / len(labels))
    assert majority_error == pytest.approx(90)
    assert metrics['top1_error'] < majority_error - 15, metrics



def test_toy_colour_statistics_do_not_tell_the_classes_apart(tmp_path):
    """The toy's class is a shape, not a colour: a nearest-centroid classifier on each image's
    per-channel means and standard deviations stays near chance (10%) on CIFAR-10, fine and coarse CIFAR-100 too."""
    data = generate(tmp_path / 'toy', 1000, 500)
    for dataset, label_type, chance in (('cifar10', 'fine', 0.1), ('cifar100', 'coarse', 0.05)):
        splits = [read_cifar(data, dataset, split, label_type) for split in ('train', 'test')]
        features = [np.concatenate([s.images.reshape(len(s), -1, 3).mean(1), s.images.reshape(len(s), -1, 3).std(1)],
                                   1) for s in splits]
        mean, std = features[0].mean(0), features[0].std(0)
        train, test = [(f - mean) / std for f in features]
        centroids = np.stack([train[splits[0].labels == c].mean(0) for c in range(len(splits[0].classes))])
        predicted = np.linalg.norm(test[:, None] - centroids[None], axis=2).argmin(1)
        accuracy = float((predicted == splits[1].labels).mean())
        assert accuracy < 2 * chance, (dataset, accuracy)


def test_resume_with_the_tools_continues_exactly(small_data, tmp_path):
    """An epoch-based run stopped after epoch 1 and resumed with --resume ends with the weights of the
    run that was never stopped (crops, flips and dropout included)."""
    from attn_plugins.checkpoint import load_state_dict_file
    from attn_plugins.runner import build_runner
    # validating every epoch as the interrupted run did (mmengine re-saves the epoch's checkpoint
    # after validating, with the random state after it)
    options = data_options(small_data) + ['train_dataloader.dataset.indices=32', 'train_cfg.val_interval=1',
                                          'model.backbone.conv_dropout=true', 'log_level=WARNING']
    train = tool('train').main
    assert train([TOY_ATT3, '--work-dir', str(tmp_path / 'a'), '--cfg-options', *options,
                  'train_cfg.max_epochs=2']) == 0
    first = build_runner(TOY_ATT3, work_dir=str(tmp_path / 'b'), cfg_options=options + ['train_cfg.max_epochs=2'])
    first.train_loop._max_epochs = 1                 # stop after epoch 1, as an interrupted run would
    first.train()
    assert train([TOY_ATT3, '--work-dir', str(tmp_path / 'b'), '--resume', '--cfg-options', *options,
                  'train_cfg.max_epochs=2']) == 0
    a = load_state_dict_file(str(tmp_path / 'a' / 'epoch_2.pth'))
    b = load_state_dict_file(str(tmp_path / 'b' / 'epoch_2.pth'))
    assert a.keys() == b.keys()
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=key)


# ------------------------------------------------------------------ the paper's baseline, narrow variants
def conv_layout(module):
    layout = []
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            layout.append(m.out_channels)
        elif isinstance(m, torch.nn.MaxPool2d):
            layout.append('M')
        elif isinstance(m, torch.nn.Dropout) and layout:
            layout[-1] = (layout[-1], m.p)
    return layout


def test_vgg_bn_drop_is_cifar_torch_vgg_and_width_multiplier_scales_every_width():
    from attn_plugins.models import PayAttentionVGG, VGGBNDrop
    model = VGGBNDrop(num_classes=100)
    # cifar.torch's vgg_bn_drop: ConvBNReLU widths, (width, dropout) where a Dropout follows, 'M' pools
    assert conv_layout(model.features) == [(64, 0.3), 64, 'M', (128, 0.4), 128, 'M', (256, 0.4), (256, 0.4), 256, 'M',
                                           (512, 0.4), (512, 0.4), 512, 'M', (512, 0.4), (512, 0.4), 512, 'M']
    assert all(bn.eps == 1e-3 for bn in model.modules() if isinstance(bn, torch.nn.BatchNorm2d))
    convs, in_c = 0, 3
    for width in [64, 64, 128, 128, 256, 256, 256] + [512] * 6:
        convs += 9 * in_c * width + width + 2 * width
        in_c = width
    classifier = (512 * 512 + 512) + 2 * 512 + (512 * 100 + 100)     # fc, BN, fc
    assert sum(p.numel() for p in model.parameters()) == convs + classifier
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 100) and model.forward_features(x).shape == (2, 512, 1, 1)

    narrow = PayAttentionVGG(num_classes=10, width_multiplier=0.125, global_channels=64)
    full = PayAttentionVGG(num_classes=10)
    scale = [w // 8 if w != 'M' else w for w in (c if isinstance(c, (int, str)) else c[0] for c in conv_layout(full.stages))]
    assert [c if isinstance(c, (int, str)) else c[0] for c in conv_layout(narrow.stages)] == scale
    assert narrow.local_channels == [32, 64, 64] and narrow.num_features == 160
    assert isinstance(narrow.attention[0].project, torch.nn.Conv2d)            # 32 -> g's 64 for compatibility
    with pytest.raises(ValueError, match='width_multiplier: expected a positive number'):
        VGGBNDrop(width_multiplier=0)
