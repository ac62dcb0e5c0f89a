# Kiln: every target installs what it needs first, so each one works as the first command on a fresh machine.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON_SYS ?= python3
VENV       ?= .venv
PY         := $(VENV)/bin/python
EXTRAS     ?= cpu,bench,dev
ifeq ($(GPU),1)
EXTRAS     := gpu,bench,dev
endif
comma      := ,
STAMP      := $(VENV)/.kiln-installed-$(subst $(comma),-,$(EXTRAS))

CHECKPOINTS ?= checkpoints
REPOSITORY  ?= model_repository
MODEL       ?= resnet18
EPOCHS      ?=
HTTP_PORT   ?= 8000
GRPC_PORT   ?= 8001
BACKEND     ?= onnxruntime
WORKERS     ?= 1
PROFILE     ?= quick
DEVICE      ?= cpu
ifeq ($(DEVICE),gpu)
PRECISIONS  ?= fp32,fp16
endif
PRECISIONS  ?= fp32,fp16,int8
PYTEST_ARGS ?=
BENCH_ARGS  ?=
# make test runs the suite in one process per core, four at most (pytest-xdist, whole files to a process so
# a module's fixtures are built once); TEST_JOBS=1 runs it in this one process.
TEST_JOBS   ?= $(shell n=$$(nproc 2>/dev/null || echo 1); echo $$(( n < 4 ? n : 4 )))
TRITON_URL  ?= 127.0.0.1:8101
SUDO        := $(if $(filter 0,$(shell id -u)),,sudo -n )

# The value of the variable named $(1) as one shell word, so a path with spaces or quotes stays one path
# (`make clean CHECKPOINTS="exp 1"` removed the directory exp); a leading ~ is still the home directory,
# as the shell made it before (`sh -c 'make CHECKPOINTS=~/ckpt'` hands make the ~ unexpanded).
home_relative = $(filter ~ ~/%,$(firstword $($(1))))
shell_path = $(if $(home_relative),"$$HOME")'$(subst ','\'',$(if $(home_relative),$(patsubst ~%,%,$($(1))),$($(1))))'

# GPU=1 swaps the CPU onnxruntime for the gpu extra (GBs of CUDA wheels) before any target runs: on a
# machine with no NVIDIA GPU device (WSL's is /dev/dxg), make demo GPU=1 could only refuse after that, so
# it refuses first. NVIDIA_DEVICES=<anything> vouches for a GPU found elsewhere.
# (/dev/nvidia0 appears on first CUDA use on some headless hosts: nvidia-smi, where it lists a GPU, vouches too;
# only a "GPU <n>:" line: it writes its failures, "No devices were found" among them, to stdout)
# GPU and FRESH are switches read as 1 or not: GPU=yes or FRESH=true was taken for unset, so make setup GPU=yes
# installed the CPU extra and make demo FRESH=true reused the checkpoints, saying nothing. Only unset, empty, 0
# and 1 pass (FRESH where demo runs, the one target that reads it).
switch_error = $(1)=$($(1))$(if $(filter environment%,$(origin $(1))), (from the environment)): $(1) takes 1 (or 0, or leave it unset) and nothing else, so nothing was installed or run; $(2)
ifneq ($(filter-out 0 1,$(GPU)),)
$(error $(call switch_error,GPU,GPU=1 installs the gpu extra and runs make demo on CUDA))
endif
ifneq ($(and $(filter-out 0 1,$(FRESH)),$(filter demo,$(MAKECMDGOALS))),)
$(error $(call switch_error,FRESH,make demo FRESH=1 retrains the checkpoints it would reuse))
endif
NVIDIA_DEVICES ?= $(or $(wildcard /dev/nvidia[0-9]* /dev/dxg),$(shell nvidia-smi -L 2>/dev/null | grep -m 1 '^GPU [0-9]'))
ifneq ($(and $(filter 1,$(GPU)),$(filter demo,$(MAKECMDGOALS))),)
ifeq ($(strip $(NVIDIA_DEVICES)),)
$(error make demo GPU=1: no NVIDIA GPU device on this machine (no /dev/nvidia0, nvidia-smi lists none), so nothing was installed or run; make demo without GPU=1 runs the CPU demo, and NVIDIA_DEVICES=1 vouches for a GPU found otherwise)
endif
endif

# make bench installs haproxy (apt) and perf_analyzer (pip) before bench reads --profile: a PROFILE it has not
# (PROFILE=nope) was refused only after those installs, so it is refused first. bench/options.py's PROFILES
# (a test keeps the two in step).
BENCH_PROFILES := quick full gpu
ifneq ($(filter bench,$(MAKECMDGOALS)),)
ifneq ($(words $(filter $(BENCH_PROFILES),$(PROFILE))) $(words $(PROFILE)),1 1)
$(error make bench PROFILE=$(PROFILE): no such profile, so nothing was installed or run; choose from $(BENCH_PROFILES))
endif
endif

.PHONY: help setup lock demo train train-classifier train-translator export serve triton bench balancer perf-analyzer test lint format clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-18s %s\n", $$1, $$2}'

# Kiln needs Python 3.11 or newer (pyproject.toml's requires-python). An older python3 made a .venv that pip
# then refused to install into, and that .venv stayed: make setup PYTHON_SYS=python3.11 afterwards went on
# using it and failed the same way. $(1): the interpreter's name, $(2): what to do instead.
require_python = -c 'import sys; v = sys.version_info[:2]; v >= (3, 11) or sys.exit("make: $(1) is Python %d.%d; Kiln needs 3.11 or newer: $(2)" % v)'

# A failed step deletes its file target (.venv/bin/python): a python3 -m venv that stopped at "ensurepip
# is not available" (Debian without python3-venv) left a .venv with no pip that every later make reused.
.DELETE_ON_ERROR:

# A $(VENV) this user cannot read (another user's, in a shared checkout: its directory closed, or the Python its
# bin/python links to out of reach) looked missing to make, which ran venv over it: --clear where pyvenv.cfg
# showed, emptying it where its directory was writable. It is refused as it stands (make warns "stat: Permission
# denied" first); a python that is gone (no such file: a dangling link) is still made anew below.
require_readable_venv = -c 'import os, sys; p, v = sys.argv[1:]; e = []; \
  exec("try: os.stat(p)\nexcept PermissionError as x: e.append(x)\nexcept OSError: pass"); e and sys.exit( \
  f"make: {p}: {e[0].strerror}: this user cannot read the environment {v} (another user'"'"'s?), so make \
  neither uses nor replaces it; name one of your own (make $(or $(MAKECMDGOALS),setup) VENV=<new directory>) or \
  have its owner open it to you")' '$(PY)' '$(VENV)'

$(VENV)/bin/python:
	@$(PYTHON_SYS) $(require_readable_venv)
	@$(PYTHON_SYS) $(call require_python,$(PYTHON_SYS),make setup PYTHON_SYS=python3.11 (or a newer one))
	@# A venv whose python is gone (its Python upgraded or removed: bin/python a dangling link) is made anew:
	@# venv over it kept the dangling link ("bin/python: No such file or directory" at every make after).
	$(PYTHON_SYS) -m venv $(if $(wildcard $(VENV)/pyvenv.cfg),--clear )$(VENV)
	$(PY) -m pip install --quiet --upgrade pip

# A stamp says what was installed for a python: where $(PY) is missing or a dangling link, the venv made again
# (--clear above) holds none of it, so the install runs in this make (make had read the stamp's time before
# --clear removed it).
venv_gone = $(shell test -e '$(PY)' || echo gone)
.PHONY: venv-made-again
# A stamp says what was installed, not what is there now: a package removed or replaced since (pip uninstall
# fastapi, a pip install that downgraded numpy, .venv/triton-env removed or of another Python) kept it, and
# make setup said "Nothing to be done" while every target stopped on a ModuleNotFoundError. Where a target
# needs the stamp and it is there, kiln/installed.py reads the packages' metadata (a tenth of a second): what
# is missing or at a version pyproject.toml refuses is named, and installed again.
venv_incomplete := $(if $(and $(filter-out help clean balancer lock,$(or $(MAKECMDGOALS),help)),$(wildcard $(STAMP))),$(strip \
  $(shell '$(PY)' -m kiln.installed --triton-env '$(VENV)/triton-env' '$(EXTRAS)' 'nvidia-pytriton>=0.5' 2>/dev/null)))
.PHONY: venv-incomplete
venv-incomplete:
	@echo "make: $(VENV) lacks what make setup installed: $(venv_incomplete); installing it again" >&2
$(STAMP): pyproject.toml constraints/main.txt constraints/triton-env.txt $(if $(filter 1,$(GPU)),constraints/gpu.txt) $(if $(venv_gone),venv-made-again) $(if $(venv_incomplete),venv-incomplete) | $(VENV)/bin/python
	@$(PY) $(call require_python,$(PY),rm -rf $(VENV) then make setup PYTHON_SYS=python3.11 (or a newer one))
	@# Every stamp goes first: an install that fails part-way (after the uninstall below) leaves none that
	@# would make the next make setup say there is nothing to do.
	@rm -f $(VENV)/.kiln-installed-*
	@# onnxruntime and onnxruntime-gpu own the same module: remove the other flavour before installing one.
	$(PY) -m pip uninstall --quiet -y $(if $(filter 1,$(GPU)),onnxruntime,onnxruntime-gpu) 2>/dev/null || true
	@# constraints/ holds the versions the suite last passed with: a release upstream cannot break a fresh setup.
	$(PY) -m pip install --quiet -c constraints/main.txt $(if $(filter 1,$(GPU)),-c constraints/gpu.txt )-e ".[$(EXTRAS)]"
	@# The Triton server binary ships in nvidia-pytriton, whose own pins (numpy<2) must not rule the project.
	$(PY) -m pip install --quiet --no-deps -c constraints/main.txt "nvidia-pytriton>=0.5"
	@# Its python backend stub is built against numpy 1, so Triton's models get their own small environment,
	@# made from the venv's own Python: Triton runs them with the stub of that version, which does not see another
	@# version's packages (PYTHON_SYS's python3 made it, beside a venv from PYTHON_SYS=python3.11: every model
	@# failed, "No module named 'numpy'"). One of another Python, or whose python does not run, is made anew.
	@v='import sys; print(*sys.version_info[:2])'; test ! -d $(VENV)/triton-env || \
	  test "$$($(VENV)/triton-env/bin/python -c "$$v" 2>/dev/null)" = "$$($(PY) -c "$$v")" || rm -rf $(VENV)/triton-env
	$(PY) -m venv $(VENV)/triton-env
	$(VENV)/triton-env/bin/python -m pip install --quiet -c constraints/triton-env.txt "numpy<2" onnxruntime tokenizers
	@# The compiled beam step, built now rather than by the first translator (numpy step if no C compiler).
	$(PY) -c "import logging; logging.basicConfig(); from serving.decoding import native; native.load()"
	@touch $@

setup: $(STAMP) ## create .venv and install what is missing

LOCK_VENV := $(VENV)-lock
# Run it with the Python the CI runs (3.11): pip freeze keeps no markers, so a lock made on another
# version can pin releases that one lacks. constraints/gpu.txt is kept by hand.
lock: ## re-resolve the newest versions pyproject.toml allows into constraints/ (then: make test)
	rm -rf $(LOCK_VENV) && $(PYTHON_SYS) -m venv $(LOCK_VENV)
	$(LOCK_VENV)/bin/python -m pip install --quiet --upgrade pip
	$(LOCK_VENV)/bin/python -m pip install --quiet -e ".[cpu,bench,dev]"
	$(LOCK_VENV)/bin/python -m pip install --quiet --no-deps "nvidia-pytriton>=0.5"
	$(PYTHON_SYS) -m venv $(LOCK_VENV)/triton-env
	$(LOCK_VENV)/triton-env/bin/python -m pip install --quiet "numpy<2" onnxruntime tokenizers
	{ sed -n '/^#/p' constraints/main.txt; $(LOCK_VENV)/bin/python -m pip freeze --exclude-editable | grep -vi '^torch=='; } > constraints/main.txt.new
	{ sed -n '/^#/p' constraints/triton-env.txt; $(LOCK_VENV)/triton-env/bin/python -m pip freeze; } > constraints/triton-env.txt.new
	@# an unchanged lock leaves the files (and so every .venv's stamp) as they were
	for f in main triton-env; do cmp -s constraints/$$f.txt.new constraints/$$f.txt && rm constraints/$$f.txt.new || mv constraints/$$f.txt.new constraints/$$f.txt; done
	rm -rf $(LOCK_VENV)
	@git diff --stat -- constraints/ 2>/dev/null || true

train: train-classifier train-translator ## train the classifier MODEL (resnet18) and the transformer translator (EPOCHS=...)

train-classifier: $(STAMP)
	$(PY) -m training.classify --model $(MODEL) $(if $(EPOCHS),--epochs $(EPOCHS)) --output-dir $(call shell_path,CHECKPOINTS)

train-translator: $(STAMP)
	$(PY) -m training.translate --model transformer $(if $(EPOCHS),--epochs $(EPOCHS)) --output-dir $(call shell_path,CHECKPOINTS)

export: $(STAMP) ## export every checkpoint (PRECISIONS=fp32,fp16,int8, DEVICE=cpu|gpu) to ONNX/TensorRT + Triton repository
	$(PY) -m export $(call shell_path,CHECKPOINTS) --repository $(call shell_path,REPOSITORY) --precisions $(PRECISIONS) --device $(DEVICE)

# make serve passes a variable as a flag only when it was given to make (command line or environment):
# otherwise the gateway's own default or KILN_* variable applies (a flag would win over KILN_WORKERS=2).
# $(3), where given, is the value as the shell must see it.
serve_flag = $(if $(filter-out file,$(origin $(1))), $(2) $(or $(3),$($(1))))
# BACKEND=triton forwards to make triton's server (gRPC 127.0.0.1:8101) unless TRITON_URL or KILN_TRITON_URL
# names another: the gateway's own default Triton address, 127.0.0.1:8001, is its own gRPC port, refused.
# TRITON_URL on make's command line is always passed; else, where the backend is triton (BACKEND, or KILN_BACKEND
# from the environment) and KILN_TRITON_URL is unset, TRITON_URL's value (its default, or the environment's).
serve_backend = $(if $(filter-out file,$(origin BACKEND)),$(BACKEND),$(KILN_BACKEND))
triton_url_flag = $(if $(or $(filter command line,$(origin TRITON_URL)),$(and $(filter triton TRITON,$(serve_backend)),$(if $(KILN_TRITON_URL),,default))), --triton-url $(TRITON_URL))
serve: $(STAMP) ## run the gateway on the model repository (BACKEND=onnxruntime|triton, WORKERS=N; or KILN_* variables)
	$(PY) -m serving$(call serve_flag,REPOSITORY,--model-repository,$(call shell_path,REPOSITORY))$(call serve_flag,HTTP_PORT,--http-port)$(call serve_flag,GRPC_PORT,--grpc-port)$(call serve_flag,BACKEND,--backend)$(call serve_flag,WORKERS,--workers)$(triton_url_flag)

triton: $(STAMP) ## run the real Triton server (python flavour of the repository) on 127.0.0.1
	$(PY) -m serving.triton --model-repository $(call shell_path,REPOSITORY)

demo: $(STAMP) ## train small models (FRESH=1: again), export them, serve them and answer real requests (GPU=1: on CUDA)
	$(PY) -m kiln.demo --checkpoints $(call shell_path,CHECKPOINTS) --repository $(call shell_path,REPOSITORY)$(if $(filter 1,$(FRESH)), --fresh)$(if $(filter 1,$(GPU)), --gpu)

bench: $(STAMP) balancer perf-analyzer ## latency/throughput side by side (PROFILE=quick|full|gpu; gpu: CPU_REPOSITORY=dir for the CPU side)
	$(PY) -m bench --profile $(PROFILE) --repository $(call shell_path,REPOSITORY) --checkpoints $(call shell_path,CHECKPOINTS)$(if $(CPU_REPOSITORY), --cpu-repository $(call shell_path,CPU_REPOSITORY)) $(BENCH_ARGS)

balancer: ## install haproxy (Debian/Ubuntu apt) for the multi-replica test and bench row; warns if it cannot
	@command -v haproxy >/dev/null || test -x /usr/sbin/haproxy || \
	  { $(SUDO)apt-get install -y -qq haproxy || \
	    { $(SUDO)apt-get update -qq && $(SUDO)apt-get install -y -qq haproxy; } || \
	    echo "warning: haproxy could not be installed; the multi-replica test and bench row will skip"; }

# perf_analyzer without Triton's SDK container: the tritonclient 2.48 wheel is the last to ship the binary; it
# needs libb64 (distribution package) and libcudart.so.12 (a pip wheel; no GPU is used). Kept out of the
# project venv's site-packages so the newer tritonclient the project uses stays in charge.
PERF_ANALYZER_DIR := $(VENV)/perf-analyzer
perf-analyzer: $(STAMP) ## install Triton's perf_analyzer under .venv/perf-analyzer (make bench uses it)
	@test -x $(PERF_ANALYZER_DIR)/bin/perf_analyzer || \
	  { { ldconfig -p | grep -q libb64.so.0d || $(SUDO)apt-get install -y -qq libb64-0d || \
	      { $(SUDO)apt-get update -qq && $(SUDO)apt-get install -y -qq libb64-0d; }; } && \
	    $(PY) -m pip install --quiet --no-deps --target $(PERF_ANALYZER_DIR) "tritonclient==2.48.0" "nvidia-cuda-runtime-cu12>=12,<13"; } || \
	  echo "warning: perf_analyzer could not be installed; make bench uses Kiln's own load generator only"
	@LD_LIBRARY_PATH=$(PERF_ANALYZER_DIR)/nvidia/cuda_runtime/lib $(PERF_ANALYZER_DIR)/bin/perf_analyzer --version 2>/dev/null || true

lint: $(STAMP) ## ruff lint and format check
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP) ## apply ruff fixes and formatting
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

test: lint balancer ## lint, haproxy where it can be installed (the replica tests), then the whole test suite
	$(PY) -m pytest $(if $(filter-out 0 1,$(TEST_JOBS)),-n $(TEST_JOBS) --dist loadfile) $(PYTEST_ARGS)

# make clean removes what Kiln wrote and nothing else, so a REPOSITORY or CHECKPOINTS naming a directory of
# other things (REPOSITORY=~ emptied the home directory) keeps them: training's files in CHECKPOINTS; in
# REPOSITORY the entries export wrote (a directory with a kiln.json: export's own test of an entry it
# owns), its .kiln* files and staging leftovers (.<entry>.tmp-*, .old-*), and its staging area beside it.
# An empty REPOSITORY, or one that holds the current directory (the checkout, .git included), is refused.
clean: ## remove generated artifacts (keeps .venv)
	$(if $(strip $(CHECKPOINTS)),,$(error CHECKPOINTS is empty: make clean removes files in it))
	$(if $(strip $(REPOSITORY)),,$(error REPOSITORY is empty: make clean removes the entries in it))
	@repository=$$(realpath -m -- $(call shell_path,REPOSITORY)); case "$$(pwd -P)/" in "$${repository%/}/"*) \
	  echo "make clean: REPOSITORY="$(call shell_path,REPOSITORY)" holds the current directory; refusing to empty it" >&2; exit 2;; esac
	rm -rf $(call shell_path,CHECKPOINTS)/{*.pt,*.metrics.jsonl,*.curves.png,.*.pt.*.tmp,.*.training.lock} bench/results build dist .pytest_cache .ruff_cache
	test ! -d $(call shell_path,REPOSITORY) || find $(call shell_path,REPOSITORY) -mindepth 1 -maxdepth 1 \
	  ! -name .kiln_export.lock \( -name '.kiln[-_]*' -o -name '.*.tmp-*' -o -name '.*.old-*' -o -exec test -f {}/kiln.json \; \) -exec rm -rf {} +
	repository=$$(realpath -m -- $(call shell_path,REPOSITORY)); rm -rf "$${repository%/*}/.$${repository##*/}.kiln-staging"
	find . -name __pycache__ -not -path './$(VENV)/*' -prune -exec rm -rf {} +
