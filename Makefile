# nonllama: `make all` runs the funnel on SOURCE; a second run with nothing changed does no work
# (every stage checks its input digest and config and says "up to date").

PY_SYSTEM ?= python3
VENV      ?= .venv
PY        := $(VENV)/bin/python
NONLLAMA  := $(VENV)/bin/nonllama

SOURCE    ?= sample
NAME      ?=
SPLIT_ON  ?=
WORK      ?= work
WORKERS   ?= 2
MAX_DOCS  ?=
NORMALIZE_CONFIG ?=

# Stage options built from the variables above (empty variables add nothing).
DOWNLOAD_OPTS := $(if $(NAME),--name $(NAME)) $(if $(SPLIT_ON),--split-on '$(SPLIT_ON)') \
                 $(if $(MAX_DOCS),--max-docs $(MAX_DOCS))
NORMALIZE_OPTS := $(if $(NORMALIZE_CONFIG),--config $(NORMALIZE_CONFIG))
COMMON_OPTS := --workdir $(WORK) --workers $(WORKERS)

.PHONY: all setup download normalize test bench lint clean

all: normalize
	@echo "funnel done: see $(WORK)/"

# Install once into a virtual environment: the CPU build of torch first (a bare `torch`
# requirement would pull a multi-GB CUDA build), then the package with its dev extra.
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PY_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

download: setup
	$(NONLLAMA) download $(SOURCE) $(COMMON_OPTS) $(DOWNLOAD_OPTS)

normalize: download
	$(NONLLAMA) normalize $(COMMON_OPTS) $(NORMALIZE_OPTS)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench.run

lint: setup
	$(PY) -m ruff check nonllama tests bench

clean:
	rm -rf $(WORK)
