# `make test` and `make demo` each set up .venv first (once; later runs skip the install).
PY := .venv/bin/python
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: setup test test-fast demo bench env clean
setup:
	@./tools/setup_env.sh

test: setup
	$(PY) -m pytest registry_tests -q -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest registry_tests -q -p no:cacheprovider -m "not slow"

demo: setup
	$(PY) tools/demo.py --work-dir work_dirs/demo

bench: setup
	$(PY) tools/benchmark.py --suite blocks

env: setup
	.venv/bin/attn-plugins env

clean:
	rm -rf work_dirs data/toy_cityscapes
