"""tools/benchmark.py refuses a thread count below 1 with one usage error naming the option (it
reached torch.set_num_threads in the first child process: a traceback after the suite had started)."""
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), 'tools'))
import benchmark  # noqa: E402


@pytest.mark.parametrize('threads', ['0', '-2'])
def test_threads_below_one_is_a_usage_error(threads, capsys):
    with pytest.raises(SystemExit) as exit_info:
        benchmark.main(['--suite', 'models', '--quick', '--only', 'VGG', '--threads', threads], prog='attn-plugins bench')
    assert exit_info.value.code == 2
    assert f'attn-plugins bench: error: --threads: expected >= 1, got {threads}' in capsys.readouterr().err
