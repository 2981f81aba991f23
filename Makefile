# One entry point for people and CI. `make demo` sets up everything and runs the door daemon on
# demo input; `make test` runs the test suite (building the models first when needed).

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
MODELS ?= models

.PHONY: setup system-packages models test lint demo bench clean-models device-size

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[tools,test]"
	touch $@

setup: system-packages $(VENV)/.installed

# Mosquitto is the MQTT broker the tests start (and the demo publishes to); systemd-analyze
# checks the service unit; headless Chromium tests the live view page; Debian's python3 needs
# python3-venv for `python3 -m venv`.
system-packages:
	@missing=""; \
	command -v mosquitto >/dev/null 2>&1 || test -x /usr/sbin/mosquitto || missing="$$missing mosquitto"; \
	command -v systemd-analyze >/dev/null 2>&1 || missing="$$missing systemd"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	$(PYTHON) -c "import ensurepip, venv" >/dev/null 2>&1 || missing="$$missing python3-venv"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && $$SUDO apt-get install -y -qq $$missing; \
	fi

models: $(VENV)/.installed
	$(PY) -m tools.build_models --out $(MODELS)

lint: $(VENV)/.installed
	$(PY) -m ruff check .

test: setup models lint
	$(PY) -m pytest

demo: setup models
	$(PY) -m edge.daemon --config config.yaml --demo

bench: setup models
	$(PY) -m bench.run_all

device-size:
	$(PYTHON) bench/device_install_size.py

clean-models:
	rm -rf $(MODELS)
