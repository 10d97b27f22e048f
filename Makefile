# Front door. `make demo` and `make test` each set up everything they need from scratch.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The tested dependency versions (`make lock` refreshes them); CONSTRAINTS= installs unpinned.
CONSTRAINTS ?= constraints.txt
DEMO ?= demo-run
# TORCH=cpu: torch and torchvision from PyTorch's CPU-only wheel index, then the rest as usual:
# about 200 MB instead of the 4 GB of CUDA libraries that torch pulls on Linux x86_64 (a laptop,
# CI). The versions are the pinned ones; `make test TORCH=cpu` runs the same suite.
TORCH ?=
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu
TORCH_PINS = $(or $(if $(CONSTRAINTS),$(shell grep -E '^(torch|torchvision)==' $(CONSTRAINTS))),\
  torch torchvision)
export DVC_NO_ANALYTICS := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install browser latex demo test test-fast lint clean-demo check-open-clip lock docs

$(BIN)/nsnet: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(if $(filter cpu,$(TORCH)),$(BIN)/python -m pip install --no-deps --index-url \
	  $(TORCH_CPU_INDEX) $(TORCH_PINS))
	$(BIN)/python -m pip install $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev]'
	touch $@

install: $(BIN)/nsnet

# Build the simulated demo set in a fresh DVC workspace, run the whole pipeline, show metrics,
# then a small sweep the DVC way: two head-only experiments queued and run in temporary
# workspaces, which reuse the feature store (no image is decoded, no model runs).
# cache.type hardlink,symlink: the images (dvc add) and the feature store's segments exist once
# on disk, in DVC's cache, linked into each workspace (see docs/feature-store.md).
DVC := PATH=$(abspath $(BIN)):$$PATH $(abspath $(BIN))/dvc
GIT_DEMO := git -c user.name=demo -c user.email=demo@localhost
demo: install
	rm -rf $(DEMO)
	$(BIN)/nsnet demo-data $(DEMO) --workspace --project .
	cd $(DEMO) && git init -q && $(DVC) init -q && \
	  $(DVC) config cache.type hardlink,symlink && $(DVC) add -q data/demo && \
	  git add -A && $(GIT_DEMO) commit -qm "demo" && \
	  $(DVC) repro && \
	  git add -A && $(GIT_DEMO) commit -qm "baseline run"
	cd $(DEMO) && $(DVC) exp run --queue -S train.lr=0.0005 && \
	  $(DVC) exp run --queue -S train.lr=0.002 && $(DVC) queue start -j 1 && \
	  while $(DVC) queue status | grep -qE 'Queued|Running'; do sleep 2; done && \
	  $(DVC) queue status && ! $(DVC) queue status | grep -q Failed && \
	  $(DVC) exp show --only-changed --no-pager --drop 'Created|Executor|State'
	@echo "Demo done (baseline run committed in $(DEMO), two experiments beside it): the" \
	  "tables above are in $(DEMO)/metrics/details/*.json, the paper's tables in" \
	  "$(DEMO)/reports/tables.{md,tex,csv}, the figures in $(DEMO)/plots/*.png; try: cd" \
	  "$(DEMO) && dvc metrics show / dvc plots show / nsnet cache / dvc exp show --only-changed"

# The suite runs on parallel workers (pytest-xdist), each taking whole test files so that a
# file's fixtures are built once: as many workers as cores, at most 4 (each holds ~1.5 GB).
TEST_WORKERS ?= $(shell n=$$(nproc 2>/dev/null || echo 2); echo $$(( n > 4 ? 4 : n )))
PYTEST = $(if $(filter no,$(SYSTEM_PACKAGES)),NSNET_SYSTEM_PACKAGES=no )$(BIN)/pytest -q \
  -n $(TEST_WORKERS) --dist loadfile --durations=10

test: install browser latex
	$(BIN)/ruff check .
	$(PYTEST)

# The edit-test loop (under 2 minutes on 2 cores): ruff and every test that is neither `slow`
# (dvc workspaces, the dask cluster, the docs' output blocks) nor `heavy` (the session's image
# set and its extracted cache). `make test` before a commit runs them all.
test-fast: install
	$(BIN)/ruff check .
	$(PYTEST) -m "not slow and not heavy"

# The open_clip floor (2.24.0) and last 2.x (2.32.0) beside the installed 3.x: real checkpoint
# loading under each (tests/test_open_clip_compat.py). Needs the package index.
OPEN_CLIP_RELEASES ?= 2.24.0 2.32.0
check-open-clip: install
	for v in $(OPEN_CLIP_RELEASES); do \
	  $(BIN)/python -m pip install -q --no-deps --target .floors/open_clip-$$v open_clip_torch==$$v \
	  || exit 1; done
	NSNET_OPEN_CLIP_RELEASES=$$(for v in $(OPEN_CLIP_RELEASES); do printf '%s:' \
	  $(CURDIR)/.floors/open_clip-$$v; done) $(BIN)/pytest -q tests/test_open_clip_compat.py

# Refresh constraints.txt from the venv after a deliberate upgrade (e.g. `pip install -U
# transformers` then `make test`), so `make install` reproduces the tested environment.
lock:
	{ echo "# Tested dependency versions: \`make install\` uses them (pip -c). Refresh with"; \
	  echo "# \`make lock\`. Made on Python $$($(BIN)/python -c 'import platform; \
	print(platform.python_version(), platform.system(), platform.machine())')."; \
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -i '^nsnet==' | \
	  sed -E 's/\+[A-Za-z0-9.]+$$//'; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)
	@echo "wrote $(CONSTRAINTS): $$(grep -c '==' $(CONSTRAINTS)) pinned packages"
	@grep -q '^nvidia-' $(CONSTRAINTS) || echo "note: no CUDA wheels pinned (a CPU-only venv);" \
	  "lock from a default install to pin them for GPU machines"

# System packages. Two groups of tests need Debian packages that pip cannot bring: the web
# page and `dvc plots show` tests drive chromium (+ chromium-driver), and a slow test compiles
# the report's LaTeX with pdflatex (texlive-latex-base + -recommended, about 200 MB).
# `make test` installs the missing ones with apt-get when it runs as root (as CI does), saying
# so first. SYSTEM_PACKAGES=no installs nothing: those tests then skip, naming this variable.
SYSTEM_PACKAGES ?= yes
APT_INSTALL = DEBIAN_FRONTEND=noninteractive apt-get install -y -q
define system_packages
	@if $(2); then \
	  :; \
	elif [ "$(SYSTEM_PACKAGES)" = no ]; then \
	  echo "SYSTEM_PACKAGES=no: not installing $(1); the tests that need them will skip"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "make test: installing Debian packages $(1) with apt-get, as root, for the tests" \
	    "that need them (SYSTEM_PACKAGES=no: skip those tests instead)"; \
	  { apt-get update -q >/dev/null && $(APT_INSTALL) $(3) $(1) >/dev/null; } || \
	    echo "WARNING: could not install $(1); the tests that need them will fail"; \
	else \
	  echo "WARNING: $(1) missing and not root: the tests that need them will fail (install" \
	    "them, or run with SYSTEM_PACKAGES=no to skip those tests)"; \
	fi
endef

browser:
	$(call system_packages,chromium chromium-driver,command -v chromium >/dev/null 2>&1 && \
	  command -v chromedriver >/dev/null 2>&1)

latex:
	$(call system_packages,texlive-latex-base texlive-latex-recommended,command -v pdflatex \
	  >/dev/null 2>&1 && kpsewhich booktabs.sty >/dev/null 2>&1,--no-install-recommends)

# The documentation the code determines: the command and parameter references (seconds), then
# every output block of the README and docs/ by running the real commands (minutes; the
# `make test` block only with `tools/gen_docs.py outputs --only test`).
docs: install
	$(BIN)/python tools/gen_docs.py references
	$(BIN)/python tools/gen_docs.py outputs

lint: install
	$(BIN)/ruff check .

clean-demo:
	rm -rf $(DEMO)
