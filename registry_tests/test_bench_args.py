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


def test_make_bench_keeps_its_own_json_and_bench_full_writes_the_readme_from_its_json():
    """README's results section comes from `make bench-full`'s JSON (its command is recorded in the section);
    `make bench` (the quick subset) writes its own JSON and plots and leaves README alone: rewriting it
    replaced every case of the section with its two."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    targets, name = {}, None
    for line in open(os.path.join(root, 'Makefile')):
        if line[:1].isalpha() and ':' in line:
            name = line.split(':')[0].strip()
            targets[name] = []
        elif line.startswith('\t') and name:
            targets[name].append(line.strip())

    def json_of(command):
        words = command.split()
        return words[words.index('--json') + 1] if '--json' in words else None
    bench, full = targets['bench'], targets['bench-full']
    assert not any('--readme' in c for c in bench)
    subset = [json_of(c) for c in bench if json_of(c)]
    full_json = [json_of(c) for c in full if json_of(c)]
    assert subset and full_json and not set(subset) & set(full_json), (subset, full_json)
    assert any(c.endswith(f'--readme {full_json[0]}') for c in full), full
    assert any('--plots' in c for c in bench), bench      # its plots apart from bench-full's (same file names)
