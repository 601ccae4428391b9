# One-command set-up on a fresh machine: `make demo`, `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
EXTRAS := broker,onnx,metrics,eval,privacy,dev

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# torch first and by exact version: 2.13.0 is the CPU build this machine kind has on disk.
	$(BIN)/pip install -q -c constraints.txt torch==2.13.0
	$(BIN)/pip install -q -c constraints.txt -e ".[$(EXTRAS)]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/shopstream demo

test: $(STAMP)
	$(BIN)/python -m pytest -q --durations=20

clean:
	rm -rf $(VENV) var
