# `make test` and `make demo` each set up .venv first (once; later runs skip the install).
PY := .venv/bin/python
export PYTHONWARNINGS ?= ignore::DeprecationWarning

.PHONY: setup test test-fast demo bench bench-full env clean
setup:
	@./tools/setup_env.sh

test: setup
	$(PY) -m pytest registry_tests -q -p no:cacheprovider

test-fast: setup
	$(PY) -m pytest registry_tests -q -p no:cacheprovider -m "not slow"

demo: setup
	$(PY) tools/demo.py --work-dir work_dirs/demo

# quick subset (a few minutes): the goal cases (ResNet-50 + SE / + CBAM vs timm's, real shapes) and the
# papers' rows; its own JSON, README untouched (README's results section is bench-full's)
bench: setup
	$(PY) tools/benchmark.py --suite models --only 'ResNet-50 + SE' 'ResNet-50 + CBAM' --no-sweep --paper --json work_dirs/benchmark/models_subset.json --plots work_dirs/benchmark/subset

# the measurement behind README's results section: run it on a quiet machine (27 min in session 9, 42 in session 7)
bench-full: setup
	$(PY) tools/benchmark.py --suite models --paper --json work_dirs/benchmark/models.json
	$(PY) tools/benchmark.py --readme work_dirs/benchmark/models.json

env: setup
	.venv/bin/attn-plugins env

clean:
	rm -rf work_dirs data/toy_cityscapes data/toy_coco data/toy_voc
