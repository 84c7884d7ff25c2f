# nonllama: `make all` runs the funnel on SOURCE; a second run with nothing changed does no work
# (every stage checks its input digest and config and says "up to date").

PY_SYSTEM ?= python3
VENV      ?= .venv
PY        := $(VENV)/bin/python
# the command; given on the command line (e.g. NONLLAMA="python -m nonllama"), no venv is set up
NONLLAMA  ?= $(VENV)/bin/nonllama
SETUP     := $(if $(filter command line environment,$(origin NONLLAMA)),,setup)

# --- what to run on
SOURCE    ?= sample
# Real text (any SOURCE but the sample): defaults for about 15 minutes of training on 2 CPU
# cores, enough for recognisable English stories and Chinese prose. Each line of a .txt file
# is a document (TinyStories and People's Daily keep a paragraph a line).
ifneq ($(SOURCE),sample)
SPLIT_ON   ?= \n
VOCAB_SIZE ?= 8000
PRESET     ?= 2m
STEPS      ?= 1000
WARMUP     ?= 50
PROMPTS    ?= Once upon a time;新华社北京1月
endif
NAME      ?=
SPLIT_ON  ?=
MAX_DOCS  ?=
PART_ROWS ?=
WORK      ?= work
WORKERS   ?= 2
# where the data stages' tasks run: local (WORKERS processes here) or ray (RAY_ADDRESS, else a Ray
# instance started here with WORKERS CPUs); Ray needs absolute paths, so WORK is made absolute
EXECUTOR    ?= local
RAY_ADDRESS ?=
# --- data stages
CONFIG           ?=
NORMALIZE_CONFIG ?= $(CONFIG)
FILTER_CONFIG    ?= $(CONFIG)
# perplexity under a reference run (a run directory `nonllama train` wrote on clean text, e.g.
# ref/runs/2m; see the README): filter records each document's perplexity and bits per byte, and
# drops above MAX_PERPLEXITY or gives CCNet's head/middle/tail buckets (PERPLEXITY_BUCKETS=0.33,0.66)
PERPLEXITY_RUN     ?=
MAX_PERPLEXITY     ?=
PERPLEXITY_BUCKETS ?=
THRESHOLD        ?= 0.8
# SEMANTIC=1: dedup also removes paraphrases (dedup --semantic, the `semantic` extra), embedding
# with EMBEDDER (a sentence-transformers model: a local directory or a Hub id)
SEMANTIC         ?=
EMBEDDER         ?=
DEDUP_OPTS       ?=
# --- tokenizer and packing
VOCAB_SIZE   ?= 4096
MODEL_TYPE   ?= bpe
SAMPLE_BYTES ?= 1G
VAL_FRACTION ?= 0.005
MIX          ?=
# --- training (defaults sized for the sample: about two minutes on 2 CPU cores)
PRESET     ?= 260k
STEPS      ?= 200
SEQ_LEN    ?= 256
BATCH_SIZE ?= 16
GRAD_ACCUM ?= 1
LR         ?= 3e-3
MIN_LR     ?= 3e-4
WARMUP     ?= 20
NPROC      ?= 1
RUN        ?= $(PRESET)
TRAIN_OPTS ?=
# --- supervised fine-tuning (`make sft`, after train): conversations, by default the built-in chat sample
SFT_DATA  ?= sample
SFT_STEPS ?= 200
SFT_OPTS  ?=
SFT_RUN   := $(WORK)/runs/$(RUN)-sft
# --- generation at the end of the funnel: prompts separated by ';'
PROMPTS        ?= Once upon a time;很久很久以前
MAX_NEW_TOKENS ?= 100
GEN_OPTS       ?= --temperature 0.8 --top-k 40 --seed 0

# Stage options built from the variables above (empty variables add nothing).
WORKDIR        := $(if $(filter ray,$(EXECUTOR)),$(abspath $(WORK)),$(WORK))
SOURCES        := $(if $(filter ray,$(EXECUTOR)),$(foreach s,$(SOURCE),$(if $(wildcard $(s)),$(abspath $(wildcard $(s))),$(s))),$(SOURCE))
COMMON_OPTS    := --workdir $(WORKDIR) --workers $(WORKERS) --executor $(EXECUTOR) $(if $(RAY_ADDRESS),--ray-address $(RAY_ADDRESS))
STAGE_CONFIG   := $(if $(CONFIG),--config $(CONFIG))
DOWNLOAD_OPTS  := $(STAGE_CONFIG) $(if $(NAME),--name $(NAME)) $(if $(SPLIT_ON),--split-on '$(SPLIT_ON)') \
                  $(if $(MAX_DOCS),--max-docs $(MAX_DOCS)) $(if $(PART_ROWS),--part-rows $(PART_ROWS))
NORMALIZE_OPTS := $(if $(NORMALIZE_CONFIG),--config $(NORMALIZE_CONFIG))
FILTER_OPTS    := $(if $(FILTER_CONFIG),--config $(FILTER_CONFIG)) \
                  $(if $(PERPLEXITY_RUN),--perplexity-run $(abspath $(PERPLEXITY_RUN))) \
                  $(if $(MAX_PERPLEXITY),--max-perplexity $(MAX_PERPLEXITY)) \
                  $(if $(PERPLEXITY_BUCKETS),--perplexity-buckets $(PERPLEXITY_BUCKETS))
SEMANTIC_OPTS  := $(if $(SEMANTIC),--semantic $(if $(EMBEDDER),--embedder $(if $(wildcard $(EMBEDDER)),$(abspath $(EMBEDDER)),$(EMBEDDER))))
TOKENIZER_OPTS := $(STAGE_CONFIG) --vocab-size $(VOCAB_SIZE) --model-type $(MODEL_TYPE) --sample-bytes $(SAMPLE_BYTES)
PACK_OPTS      := --val-fraction $(VAL_FRACTION) $(foreach m,$(MIX),--mix $(m))
TRAIN_ARGS     := --workdir $(WORK) --name $(RUN) --preset $(PRESET) --max-steps $(STEPS) \
                  --seq-len $(SEQ_LEN) --batch-size $(BATCH_SIZE) --grad-accum $(GRAD_ACCUM) \
                  --lr $(LR) --min-lr $(MIN_LR) --warmup $(WARMUP) --nproc $(NPROC) $(TRAIN_OPTS)

.PHONY: all setup dev download normalize filter dedup train-tokenizer pack train generate sft report ablation test bench lint clean

all: generate
	@echo "funnel done: see $(WORK)/ (and \`make report\`)"

# Install once into a virtual environment: the CPU build of torch first (a bare `torch`
# requirement would pull a multi-GB CUDA build), then the package with what the funnel needs
# (Ray too when EXECUTOR=ray). The test suite's extra (transformers, Ray, gguf...) is
# installed by `make test` and `make lint` only: `make all` on a fresh clone does not wait for it.
setup: $(VENV)/.installed $(if $(filter ray,$(EXECUTOR)),$(VENV)/.installed-ray)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PY_SYSTEM) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet torch==2.13.0
	$(PY) -m pip install --quiet -e .
	touch $@

$(VENV)/.installed-ray: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[ray]'
	touch $@

dev: $(VENV)/.installed-dev

$(VENV)/.installed-dev: $(VENV)/.installed
	$(PY) -m pip install --quiet -e '.[dev]'
	touch $@

download: $(SETUP)
	$(NONLLAMA) download $(SOURCES) $(COMMON_OPTS) $(DOWNLOAD_OPTS)

normalize: download
	$(NONLLAMA) normalize $(COMMON_OPTS) $(NORMALIZE_OPTS)

filter: normalize
	$(NONLLAMA) filter $(COMMON_OPTS) $(FILTER_OPTS)

dedup: filter
	$(NONLLAMA) dedup $(COMMON_OPTS) $(STAGE_CONFIG) --threshold $(THRESHOLD) $(SEMANTIC_OPTS) $(DEDUP_OPTS)

train-tokenizer: dedup
	$(NONLLAMA) train-tokenizer $(COMMON_OPTS) $(TOKENIZER_OPTS)

pack: train-tokenizer
	$(NONLLAMA) pack $(COMMON_OPTS) $(PACK_OPTS)

# A finished run with the same config and data is left alone, an interrupted one is resumed,
# and one whose config or data changed starts over.
train: pack
	$(NONLLAMA) train $(TRAIN_ARGS) --auto-resume

# Samples saved beside the run; the same checkpoint and settings print the saved ones.
generate: train
	printf '%s\n' '$(subst ;,' ',$(PROMPTS))' | $(NONLLAMA) generate - --run $(WORK)/runs/$(RUN) \
	    --max-new-tokens $(MAX_NEW_TOKENS) $(GEN_OPTS) --save $(WORK)/runs/$(RUN)/samples.json

# Fine-tunes the run on conversations, then answers two questions (in $(SFT_RUN)/chat-out.jsonl).
sft: train
	$(NONLLAMA) sft --from $(WORK)/runs/$(RUN) --data $(SFT_DATA) --out $(SFT_RUN) \
	    --max-steps $(SFT_STEPS) --nproc $(NPROC) $(SFT_OPTS) --auto-resume
	printf '%s\n' '{"messages":[{"role":"user","content":"What is 2 plus 3?"}]}' \
	    '{"messages":[{"role":"user","content":"3加4等于几？"}]}' > $(SFT_RUN)/chat-in.jsonl
	$(NONLLAMA) generate --chat --run $(SFT_RUN) --input $(SFT_RUN)/chat-in.jsonl \
	    --output $(SFT_RUN)/chat-out.jsonl --temperature 0 --max-new-tokens 40
	cat $(SFT_RUN)/chat-out.jsonl

report: $(SETUP)
	$(NONLLAMA) report --workdir $(WORK) -o $(WORK)/report.html

# Does the funnel pay? The same model, seed and training tokens on the raw text and on the funnel's
# output (and dedup only, filter only), scored in bits per byte on held-out clean text; needs
# ../shared/corpora. The table, plot and every command's output land in $(WORK)-ablation/.
ABLATION_VARIANTS ?= raw,funnel,dedup-only,filter-only
ablation: setup
	$(PY) -m bench.ablation --work $(WORK)-ablation --variants $(ABLATION_VARIANTS) --workers $(WORKERS)

test: dev
	$(PY) -m pytest -q

bench: setup
	$(PY) -m pip install --quiet -e '.[bench,ray]'  # the peers, and Ray for bench.scaling
	$(PY) -m bench.run

lint: dev
	$(PY) -m ruff check nonllama tests bench

clean:
	rm -rf $(WORK)
