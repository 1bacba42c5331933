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


def test_unusable_json_or_plots_paths_fail_before_the_run(tmp_path, capsys, monkeypatch):
    """`--json` naming a folder, or a path under a file, is a usage error before anything runs (it
    failed with a traceback after the whole benchmark, having written its plots next to that folder)."""
    ran = []
    a_file = tmp_path / 'a_file'
    a_file.write_text('x')
    cases = [(['--json', str(tmp_path)], f"--json {tmp_path}: is a directory"),
             (['--json', str(a_file / 'r.json')], f"--json {a_file / 'r.json'}: cannot create its folder"),
             (['--json', str(tmp_path / 'r.json'), '--plots', str(a_file)], f"--plots {a_file}: cannot create its folder")]
    import bench_models
    monkeypatch.setattr(bench_models, 'run_suite', lambda *a, **k: ran.append(1) or {})
    for extra, message in cases:
        with pytest.raises(SystemExit) as exit_info:
            benchmark.main(['--suite', 'models', '--quick', '--only', 'VGG', '--no-sweep', *extra], prog='attn-plugins bench')
        assert exit_info.value.code == 2
        assert f'attn-plugins bench: error: {message}' in capsys.readouterr().err
    assert ran == [] and sorted(os.listdir(tmp_path)) == ['a_file']
