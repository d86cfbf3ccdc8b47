# edgecell: the two commands of the README are `make demo` and `make test`.
# Each builds its own virtual environment (.venv) first; nothing else needs to be installed.

PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
DEMO   ?= demo
# The Pi-only environment: the runtime without TensorFlow, as installed on a Raspberry Pi.
PI_VENV ?= .venv-pi
# The runtime tests (marked `pi`) that must pass there, at least.
PI_MIN_TESTS ?= 250
# The test files holding them (the others import TensorFlow, scikit-learn or hypothesis at collection).
PI_TESTS = $(shell grep -l "pytest.mark.pi" tests/test_*.py)

.PHONY: install lint demo test pi-check pi-arm64 bench clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[train,pi,dev]"
	touch $@

install: $(BIN)/.installed

## demo: synthetic data -> train -> convert --int8 -> classify unseen images -> parity and latency
## (lymphocytes and eosinophils are taught as `other`; the non-cell images in unseen_objects are never trained on)
demo: install
	$(BIN)/edgecell demo-data $(DEMO)/data --per-class 110 --seed 0
	$(BIN)/edgecell demo-data $(DEMO)/unseen --per-class 8 --seed 1 --objects $(DEMO)/unseen_objects
	$(BIN)/edgecell train --data $(DEMO)/data --out $(DEMO)/run --epochs 25
	$(BIN)/edgecell convert $(DEMO)/run --int8
	$(BIN)/edgecell classify --model $(DEMO)/run/export $(DEMO)/unseen $(DEMO)/unseen_objects --json $(DEMO)/classify.json
	$(BIN)/edgecell bench $(DEMO)/run/export/model_float32.tflite $(DEMO)/run/export/model_int8.tflite --data $(DEMO)/unseen --runs 200 --json $(DEMO)/bench.json

## lint: ruff lint and format check (one configuration, in pyproject.toml)
lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

## test: lint, then the whole test suite
test: lint
	$(BIN)/python -m pytest

## pi-check: install .[pi] alone in a fresh environment (no TensorFlow); classify, bench, scan and the `pi` tests there (committed .tflite fixtures)
pi-check: install
	rm -rf $(PI_VENV) build/pi-check
	$(BIN)/edgecell demo-data build/pi-check/data --per-class 20 --seed 3
	$(BIN)/edgecell train --data build/pi-check/data --out build/pi-check/run --epochs 2 --img-size 48 --widths 8,16
	$(BIN)/edgecell convert build/pi-check/run --int8 --max-drop 100
	$(PYTHON) -m venv $(PI_VENV)
	$(PI_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(PI_VENV)/bin/python -m pip install --quiet ".[pi]"
	$(PI_VENV)/bin/python -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('tensorflow') is not None)" \
		|| (echo "pi-check: TensorFlow got installed into the Pi environment" && false)
	cd build && ../$(PI_VENV)/bin/edgecell classify --model pi-check/run/export pi-check/data/myeloblast --json pi-check/classify.json
	cd build && ../$(PI_VENV)/bin/edgecell bench pi-check/run/export/model_int8.tflite --runs 50 --warmup 5 --data pi-check/data --json pi-check/bench.json
	$(PI_VENV)/bin/python tests/_fields.py build/pi-check/fields
	cd build && ../$(PI_VENV)/bin/edgecell scan --model pi-check/run/export pi-check/fields --json pi-check/scan.json --annotate pi-check/scan-boxes
	$(PI_VENV)/bin/python -m pip install --quiet "pytest>=8"
	$(PI_VENV)/bin/python -m pytest -m pi -q -p no:cacheprovider --junitxml=build/pi-check/pytest.xml $(PI_TESTS)
	$(PI_VENV)/bin/python tests/count_passed.py build/pi-check/pytest.xml --at-least $(PI_MIN_TESTS)
	@echo "pi-check: classify, bench, scan and the runtime's tests ran without TensorFlow"

## pi-arm64: the Pi runtime (no TensorFlow) in an emulated 64-bit ARM Debian (qemu, root), outputs compared with x86
## on the pi-check models (run first when missing); the arm64 root is cached in /var/cache/edgecell-arm64
pi-arm64: install
	PI_VENV=$(PI_VENV) VENV=$(VENV) PI_ARM64_TESTS="$(PI_TESTS)" PI_MIN_TESTS=$(PI_MIN_TESTS) bash .ci/pi_arm64.sh

## bench: the side-by-side benchmark on the real data (../shared/bloodcells)
bench: install
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) $(PI_VENV) build $(DEMO) .pytest_cache
