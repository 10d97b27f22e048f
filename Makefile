# Front door. `make demo` and `make test` each set up everything they need from scratch.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The tested dependency versions (`make lock` refreshes them); CONSTRAINTS= installs unpinned.
CONSTRAINTS ?= constraints.txt
DEMO ?= demo-run
export DVC_NO_ANALYTICS := 1
export HF_HUB_DISABLE_TELEMETRY := 1

.PHONY: install browser latex demo test lint clean-demo check-open-clip lock

$(BIN)/nsnet: pyproject.toml $(CONSTRAINTS)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install $(if $(CONSTRAINTS),-c $(CONSTRAINTS)) -e '.[dev]'
	touch $@

install: $(BIN)/nsnet

# Build the simulated demo set in a fresh DVC workspace, run the whole pipeline, show metrics,
# then a small sweep the DVC way: two head-only experiments queued and run in temporary
# workspaces, which reuse the feature store (no image is decoded, no model runs).
# cache.type hardlink,symlink: the images (dvc add) and the feature store's segments exist once
# on disk, in DVC's cache, linked into each workspace (see docs/feature-store.md).
DVC := PATH=$(CURDIR)/$(BIN):$$PATH $(CURDIR)/$(BIN)/dvc
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

test: install browser latex
	$(BIN)/ruff check .
	$(BIN)/pytest -q

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
	  $(BIN)/python -m pip freeze --exclude-editable | grep -v -i '^nsnet=='; } > $(CONSTRAINTS).tmp
	mv $(CONSTRAINTS).tmp $(CONSTRAINTS)
	@echo "wrote $(CONSTRAINTS): $$(grep -c '==' $(CONSTRAINTS)) pinned packages"

# The web page's test drives Debian's chromium through chromedriver. Installed here when missing
# and we are root with apt-get (as on CI); otherwise that test fails loudly, unless
# NSNET_SKIP_BROWSER_TESTS=1 opts out.
browser:
	@if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then \
	  :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing chromium + chromium-driver for the browser test (apt-get)"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get update -q && apt-get install -y -q chromium chromium-driver; } || \
	    echo "WARNING: could not install chromium; the browser test will fail"; \
	else \
	  echo "WARNING: chromium/chromedriver missing and not root: the browser test will fail" \
	    "(install them, or set NSNET_SKIP_BROWSER_TESTS=1)"; \
	fi

# The report's LaTeX is compiled by a slow test when pdflatex and booktabs are present (Debian's
# texlive-latex-base + texlive-latex-recommended, about 200 MB); installed here when missing and
# we are root with apt-get, else that test skips and says why (NSNET_SKIP_LATEX=1: do not
# install). Never fails the build.
latex:
	@if command -v pdflatex >/dev/null 2>&1 && kpsewhich booktabs.sty >/dev/null 2>&1; then \
	  :; \
	elif [ -n "$$NSNET_SKIP_LATEX" ]; then \
	  echo "NSNET_SKIP_LATEX set: not installing texlive; the pdflatex test will skip"; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing texlive-latex-base + texlive-latex-recommended for the LaTeX test"; \
	  export DEBIAN_FRONTEND=noninteractive; \
	  { apt-get update -q && apt-get install -y -q --no-install-recommends \
	      texlive-latex-base texlive-latex-recommended; } || \
	    echo "WARNING: could not install texlive; the pdflatex test will skip"; \
	else \
	  echo "NOTE: pdflatex/booktabs missing and not root: the pdflatex test will skip"; \
	fi

lint: install
	$(BIN)/ruff check .

clean-demo:
	rm -rf $(DEMO)
