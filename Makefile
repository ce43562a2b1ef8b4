# Everything ftviz needs, from a fresh clone: `make animate` and `make test`.
# torch==2.13.0 is installed first so that no other requirement pulls a multi-GB CUDA build;
# on a GPU machine install the CUDA build of torch into .venv first and this keeps it.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
SUDO   := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
RUN    ?= runs/vit-digits
RUNS   ?= runs/vit-digits runs/swin-digits runs/ddpm-digits runs/sd-digits
COMMA  := ,
# ftviz with the given extras, never replacing the installed torch: uv, else pip.
INSTALL = { test -x $(BIN)/uv && $(BIN)/uv pip install -q --compile-bytecode --python $(BIN)/python --constraint $(VENV)/torch-constraint.txt -e ".[$(1)]"; } \
          || $(BIN)/pip install -q --constraint $(VENV)/torch-constraint.txt -e ".[$(1)]"

.PHONY: install animate test test-fast spotlight compare bench browser clean device-wheels

install: $(STAMP)

# The rest goes in with uv (resolves and installs in parallel: 52 s against pip's 146 s on a
# fresh 2-core machine), held to the torch already installed; pip does it where uv cannot.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q torch==2.13.0
	$(BIN)/python -c "import torch; print('torch==' + torch.__version__)" 2>/dev/null > $(VENV)/torch-constraint.txt
	$(BIN)/pip install -q uv || true
	$(call INSTALL,hub$(COMMA)diffusion$(COMMA)spotlight$(COMMA)serve$(COMMA)export$(COMMA)projection$(COMMA)bench$(COMMA)test)
	# timm needs torchvision built for the installed torch; PyPI has only CUDA builds of it, which
	# fail to import beside a CPU-only torch (and break transformers' image processors with them).
	if $(BIN)/python -c "import sys, torch; sys.exit('+cpu' in torch.__version__)"; then $(call INSTALL,timm); \
	else echo "make: skipped the timm extra (CPU-only torch: get torchvision from the PyTorch CPU index, then pip install -e '.[timm]')"; fi
	touch $@

# Debian's Chromium for the browser tests (a browser's download of itself fails offline).
browser:
	@if [ ! -x /usr/bin/chromium ]; then \
	  if command -v apt-get >/dev/null; then \
	    $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium chromium-driver fonts-dejavu-core >/dev/null; \
	  else echo "browser tests need Chromium at /usr/bin/chromium"; fi; \
	fi

animate: $(STAMP)
	$(BIN)/ftviz run experiments/default.toml --force

test: $(STAMP) browser
	$(BIN)/pytest -q -n 2

test-fast: $(STAMP)
	$(BIN)/pytest -q -m "not slow"

spotlight: $(STAMP)
	$(BIN)/ftviz spotlight $(RUN)

compare: $(STAMP)
	$(BIN)/ftviz run experiments/default.toml --force
	$(BIN)/ftviz run experiments/swin_digits.toml --force
	$(BIN)/ftviz run experiments/ddpm_digits.toml --force
	$(BIN)/ftviz run experiments/sd_digits.toml --force
	$(BIN)/ftviz compare $(RUNS) --out runs/compare

bench: $(STAMP)
	$(BIN)/python experiments/bench_pipeline.py

clean:
	rm -rf runs .pytest_cache

# The wheels a GPU machine's image lacks (Python 3.12, no package index there), at the versions
# installed here, into .whl/ (git-ignored) for experiments/device_check.sh to install there.
DEVICE_WHEELS := cleanlab termcolor openTSNE plotly
device-wheels: $(STAMP)
	mkdir -p .whl
	$(BIN)/python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
	  $$($(BIN)/python -c "import importlib.metadata as m; print(' '.join(f'{n}=={m.version(n)}' for n in '$(DEVICE_WHEELS)'.split()))")
