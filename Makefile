# The commands a user types: `make demo`, `make app` (the web demo of its model) and `make test`;
# contributors also `make lint` (what CI checks after the tests) and `make format`. All bootstrap
# .venv first.
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.vilseg-installed
APP_STAMP := $(VENV)/.vilseg-app-installed
# The model `make app` serves (`make demo` trains it); APP_ARGS: e.g. "--port 8000".
APP_CONFIG ?= output/demo/train/config.yaml
APP_ARGS ?=
export PIP_CONSTRAINT := $(CURDIR)/requirements/constraints.txt
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# What black, isort and flake8 look at (settings: pyproject.toml, .flake8).
LINT_PATHS := vilseg_d2 tools tests datasets setup.py

.PHONY: setup test demo app browser lint format clean

setup: $(STAMP)

$(STAMP): setup.py requirements/constraints.txt tools/install_detectron2.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet wheel
	$(PY) -m pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(PY) -m pip install --quiet -e '.[dev]'
	$(PY) tools/install_detectron2.py
	$(PY) -c "import torch, detectron2, open_clip, vilseg_d2; print('environment ready: torch', torch.__version__, 'detectron2', detectron2.__version__)"
	touch $@

# The browser test's headless Chromium (tests/test_web_app_browser.py): apt-get installs it where
# it is missing, as root (CI); otherwise the script says what to run.
browser:
	bash tools/install_browser.sh

test: $(STAMP) browser
	$(PY) -m pytest tests

demo: $(STAMP)
	$(PY) tools/run_demo.py --output output/demo

$(APP_STAMP): setup.py requirements/constraints.txt | $(STAMP)
	$(PY) -m pip install --quiet -e '.[app]'
	touch $@

app: $(APP_STAMP)
	@test -f $(APP_CONFIG) || { echo "No model at $(APP_CONFIG): run 'make demo' first (it \
	trains the demo model on the CPU in about 30 minutes), or pass APP_CONFIG=your/config.yaml." >&2; \
	exit 1; }
	$(PY) tools/web_demo.py --config-file $(APP_CONFIG) $(APP_ARGS)

lint: $(STAMP)
	$(PY) -m black --check --diff $(LINT_PATHS)
	$(PY) -m isort --check-only --diff $(LINT_PATHS)
	$(PY) -m flake8 $(LINT_PATHS)

format: $(STAMP)
	$(PY) -m isort $(LINT_PATHS)
	$(PY) -m black $(LINT_PATHS)

clean:
	rm -rf output build *.egg-info
