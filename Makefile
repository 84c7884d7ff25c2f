# nonllama: `make all` runs the funnel on SOURCE; a second run with nothing changed does no work
# (every stage checks its input digest and config and says "up to date").

PY_SYSTEM ?= python3
VENV      ?= .venv
PY        := $(VENV)/bin/python
NONLLAMA  := $(VENV)/bin/nonllama

# --- what to run on
SOURCE    ?= sample
NAME      ?=
SPLIT_ON  ?=
MAX_DOCS  ?=
WORK      ?= work
WORKERS   ?= 2
# --- data stages
NORMALIZE_CONFIG ?=
FILTER_CONFIG    ?=
THRESHOLD        ?= 0.8
DEDUP_OPTS       ?=
# --- tokenizer and packing
VOCAB_SIZE   ?= 4096
MODEL_TYPE   ?= bpe
SAMPLE_BYTES ?= 1G
VAL_FRACTION ?= 0.005
MIX          ?=
# --- training
PRESET     ?= 260k
STEPS      ?= 200
SEQ_LEN    ?= 256
BATCH_SIZE ?= 16
NPROC      ?= 1
RUN        ?= $(PRESET)
TRAIN_OPTS ?=

# Stage options built from the variables above (empty variables add nothing).
COMMON_OPTS    := --workdir $(WORK) --workers $(WORKERS)
DOWNLOAD_OPTS  := $(if $(NAME),--name $(NAME)) $(if $(SPLIT_ON),--split-on '$(SPLIT_ON)') \
                  $(if $(MAX_DOCS),--max-docs $(MAX_DOCS))
NORMALIZE_OPTS := $(if $(NORMALIZE_CONFIG),--config $(NORMALIZE_CONFIG))
FILTER_OPTS    := $(if $(FILTER_CONFIG),--config $(FILTER_CONFIG))
TOKENIZER_OPTS := --vocab-size $(VOCAB_SIZE) --model-type $(MODEL_TYPE) --sample-bytes $(SAMPLE_BYTES)
PACK_OPTS      := --val-fraction $(VAL_FRACTION) $(foreach m,$(MIX),--mix $(m))
TRAIN_ARGS     := --workdir $(WORK) --name $(RUN) --preset $(PRESET) --max-steps $(STEPS) \
                  --seq-len $(SEQ_LEN) --batch-size $(BATCH_SIZE) --nproc $(NPROC) $(TRAIN_OPTS)

.PHONY: all setup download normalize filter dedup train-tokenizer pack train test bench lint clean

all: train
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

filter: normalize
	$(NONLLAMA) filter $(COMMON_OPTS) $(FILTER_OPTS)

dedup: filter
	$(NONLLAMA) dedup $(COMMON_OPTS) --threshold $(THRESHOLD) $(DEDUP_OPTS)

train-tokenizer: dedup
	$(NONLLAMA) train-tokenizer --workdir $(WORK) $(TOKENIZER_OPTS)

pack: train-tokenizer
	$(NONLLAMA) pack $(COMMON_OPTS) $(PACK_OPTS)

# A finished run with the same config is left alone; an interrupted one is resumed.
train: pack
	$(NONLLAMA) train $(TRAIN_ARGS) $(if $(wildcard $(WORK)/runs/$(RUN)/checkpoints/*.pt),--resume)

test: setup
	$(PY) -m pytest -q

bench: setup
	$(PY) -m pip install --quiet -e '.[bench]'
	$(PY) -m bench.run

lint: setup
	$(PY) -m ruff check nonllama tests bench

clean:
	rm -rf $(WORK)
