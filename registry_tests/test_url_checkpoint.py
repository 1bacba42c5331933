"""A config's URL checkpoint (`load_from: https://...`, `init_cfg.checkpoint`) must not unpickle
code: mmengine fetches it with torch.hub.load_state_dict_from_url, whose default is
weights_only=False. The file is put in torch.hub's cache, so no network is used."""
import os

import pytest
import torch

from attn_plugins.checkpoint import allow_mmengine_checkpoints


class _RunsCode:
    def __reduce__(self):
        return (os.makedirs, (os.environ['ATTN_PLUGINS_TEST_MARKER'],))


def test_url_checkpoint_is_loaded_weights_only(tmp_path, monkeypatch):
    from mmengine.runner import CheckpointLoader
    marker = tmp_path / 'code_ran'
    monkeypatch.setenv('ATTN_PLUGINS_TEST_MARKER', str(marker))
    monkeypatch.setenv('TORCH_HOME', str(tmp_path / 'torch_home'))
    cache = tmp_path / 'torch_home' / 'hub' / 'checkpoints'
    cache.mkdir(parents=True)
    torch.save({'state_dict': {'w': torch.ones(1)}, 'payload': _RunsCode()}, cache / 'evil.pth')
    torch.save({'state_dict': {'w': torch.ones(2)}}, cache / 'plain.pth')
    allow_mmengine_checkpoints()
    allow_mmengine_checkpoints()          # idempotent
    with pytest.raises(Exception):
        CheckpointLoader.load_checkpoint('http://127.0.0.1:9/evil.pth', map_location='cpu')
    assert not marker.exists(), 'a URL checkpoint ran code while being loaded'
    plain = CheckpointLoader.load_checkpoint('https://127.0.0.1:9/plain.pth', map_location='cpu')
    assert torch.equal(plain['state_dict']['w'], torch.ones(2))
