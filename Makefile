# The two commands a user types: `make demo` and `make test`; contributors also `make lint` (what
# CI checks after the tests) and `make format`. All bootstrap .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vilseg-installed
export PIP_CONSTRAINT := $(CURDIR)/requirements/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# What black, isort and flake8 look at (settings: pyproject.toml, .flake8).
LINT_PATHS := vilseg_d2 tools tests datasets setup.py

.PHONY: setup test demo lint format clean

setup: $(STAMP)

$(STAMP): setup.py requirements/constraints.txt tools/install_detectron2.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet wheel
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) tools/install_detectron2.py
	$(PY) -c "import torch, detectron2, open_clip, vilseg_d2; print('environment ready: torch', torch.__version__, 'detectron2', detectron2.__version__)"
	touch $@

test: $(STAMP)
	$(PY) -m pytest tests

demo: $(STAMP)
	$(PY) tools/run_demo.py --output output/demo

lint: $(STAMP)
	$(PY) -m black --check --diff $(LINT_PATHS)
	$(PY) -m isort --check-only --diff $(LINT_PATHS)
	$(PY) -m flake8 $(LINT_PATHS)

format: $(STAMP)
	$(PY) -m isort $(LINT_PATHS)
	$(PY) -m black $(LINT_PATHS)

clean:
	rm -rf output build *.egg-info
