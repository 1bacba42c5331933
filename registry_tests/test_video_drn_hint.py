"""mmaction2 1.2.0 from PyPI (`pip install ".[video]"` into a user's own environment) lacks
mmaction/models/localizers/drn: without tools/setup_env.sh's placeholder, `import mmaction.models`
fails. Our tools then say so in one line, with the command that installs the placeholder."""
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

WITHOUT_DRN = '''
import importlib.abc, runpy, sys
class NoDRN(importlib.abc.MetaPathFinder):          # mmaction2's PyPI package: no localizers/drn
    def find_spec(self, name, path, target=None):
        if name.startswith('mmaction.models.localizers.drn'):
            raise ModuleNotFoundError(f"No module named {name!r}", name=name)
sys.meta_path.insert(0, NoDRN())
sys.argv = ['train.py', 'configs/video/toy/nonlocal_i3d_r50_toy.yaml', '--work-dir', sys.argv[1]]
runpy.run_path('tools/train.py', run_name='__main__')
'''


def test_missing_mmaction_drn_is_one_clear_line(tmp_path):
    out = subprocess.run([sys.executable, '-c', WITHOUT_DRN, str(tmp_path)], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, 'PYTHONWARNINGS': 'ignore', 'OMP_NUM_THREADS': '1'})
    assert out.returncode == 2, out.stderr[-3000:]
    assert 'Traceback' not in out.stderr, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith('train.py: error:')]
    assert len(errors) == 1, out.stderr[-3000:]
    assert "mmaction2 1.2.0's PyPI package lacks mmaction/models/localizers/drn" in errors[0]
    assert 'cp tools/mmaction_drn/__init__.py tools/mmaction_drn/drn.py' in errors[0]
    assert os.path.join('mmaction', 'models', 'localizers', 'drn') + '/' in errors[0]
