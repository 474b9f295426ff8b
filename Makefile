# Set-up and the two commands README opens with. Everything installs into .venv.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
TASK ?= detect
ARGS ?= --backbone resnet50

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,openvino]"
	$(BIN)/python -c "import torch, torchvision; torchvision.ops.nms(torch.zeros(1, 4), torch.zeros(1), 0.5)" \
		|| { echo "error: torch/torchvision pair cannot run torchvision.ops.nms"; exit 1; }
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m tasks.$(TASK) $(ARGS)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m tasks.bench

clean:
	rm -rf $(VENV) build *.egg-info
