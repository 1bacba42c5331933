"""--cfg-options values mmengine's DictAction cannot parse are a ConfigError naming the option, not
its AssertionError (unbalanced brackets) or RecursionError (YAML's `!!python/tuple [1, 2]` typed
on the command line, as a user of the YAML tuple tags might): the tools print one line, status 2."""
import os

import pytest

from attn_plugins.config import parse_overrides
from attn_plugins.registry import ConfigError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.mark.parametrize('item, hint', [
    ('train_dataloader.dataset.pipeline.2.scale=!!python/tuple [160, 160]', r'write a tuple as \(a, b\)'),
    ('model.neck.in_channels=!tuple [1, 2]', r'write a tuple as \(a, b\)'),
    ('model.neck.in_channels=[1, 2', 'unbalanced brackets'),
    ('a=(1, [2, 3)', 'unbalanced brackets'),
])
def test_unparsable_value_names_the_option(item, hint):
    key = item.partition('=')[0]
    with pytest.raises(ConfigError, match=rf"--cfg-options {key}=.*{hint}"):
        parse_overrides([item])


def test_tuples_lists_and_plain_values_still_parse():
    assert parse_overrides(['a.scale=(1333, 800)', 'b=[1,(2,3)]', 'c=x', 'd=1', 'e=[[1, 2], [3]]']) == \
        {'a.scale': (1333, 800), 'b': [1, (2, 3)], 'c': 'x', 'd': 1, 'e': [[1, 2], [3]]}


def test_train_tool_prints_one_line(capsys):
    from attn_plugins.cli import train_main
    code = train_main([os.path.join(ROOT, 'configs', 'det', 'toy', 'faster-rcnn_r50-cbam_fpn_toy-coco.yaml'), '--cfg-options',
                       'train_dataloader.dataset.pipeline.2.scale=!!python/tuple [160, 160]'], prog='train.py')
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and 'Traceback' not in err, err
    assert err.startswith('train.py: error: --cfg-options train_dataloader.dataset.pipeline.2.scale=')


def test_a_plain_string_starting_with_an_exclamation_mark_is_still_a_string():
    assert parse_overrides(['work_dir=!tmp', 'x=!']) == {'work_dir': '!tmp', 'x': '!'}
