# Two commands do all set-up on a fresh machine: `make demo` and `make test`.
# torch is pinned here (CPU build, installed from local disk on the dev/CI machines);
# the package itself declares a range in pyproject.toml.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
TORCH_PIN ?= torch==2.13.0
# torchao (optional extra: PT2E quantizers, quantize_ samples, running torchao models) is
# installed without deps so pip never resolves another torch; 0.18.0 works with torch 2.13.
TORCHAO_PIN ?= torchao==0.18.0
STAMP := $(VENV)/.qinspect-installed

.PHONY: demo test env samples lint bench browser

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_PIN)"
	$(PY) -m pip install -q "$(TORCH_PIN)" -e ".[test,hf-test]"
	$(PY) -m pip install -q --no-deps "$(TORCHAO_PIN)"
	touch $(STAMP)

env: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/qinspect show sample_checkpoints/mlp_int8_fbgemm.pt --explain

test: $(STAMP)
	$(PY) -m pytest -q

bench: $(STAMP)
	$(PY) benchmarks/run.py

# ruff, then mypy (configured in pyproject.toml: the whole package, strict for model.py,
# quant/ and gate/config.py).
lint: $(STAMP)
	$(VENV)/bin/ruff check qinspect tests sample_checkpoints benchmarks
	$(VENV)/bin/mypy

samples: $(STAMP)
	$(PY) sample_checkpoints/make_samples.py
	$(PY) sample_checkpoints/make_format_samples.py
	$(PY) sample_checkpoints/make_hf_samples.py

# tests/render/test_html.py renders the --html pages in headless Chromium (Debian's package).
# Installed when missing and possible (root with apt-get, as in CI); otherwise this says
# why and those tests skip with the same reason.
browser:
	@if command -v chromium >/dev/null 2>&1; then \
	  echo "browser: $$(command -v chromium) is installed"; \
	elif [ "$$(id -u)" != 0 ] || ! command -v apt-get >/dev/null 2>&1; then \
	  echo "browser: chromium is missing and cannot be installed here (needs root and" \
	       "apt-get); the HTML page tests will skip"; \
	else \
	  (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium \
	    </dev/null >/tmp/qinspect-chromium-install.log 2>&1) \
	  && echo "browser: installed $$(command -v chromium)" \
	  || { tail -n 5 /tmp/qinspect-chromium-install.log; echo "browser: apt-get install" \
	       "chromium failed (log above); the HTML page tests will skip"; }; \
	fi
