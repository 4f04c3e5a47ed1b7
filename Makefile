# The two commands a user types: `make demo` and `make test`. Both bootstrap .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vilseg-installed
export PIP_CONSTRAINT := $(CURDIR)/requirements/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: setup test demo clean

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

clean:
	rm -rf output build *.egg-info
