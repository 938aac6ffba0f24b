# The two entry points of the README's quick start. Both set everything up first.
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup demo test lint unit

setup:
	./scripts/setup.sh

## demo: set up, boot a lab GPU host, give its GPU to vfio-pci (one reboot), prove it.
demo: setup
	gpuprov lab up demo
	gpuprov host inspect demo || [ $$? -eq 10 ]  # 10: needs setup, as a stock host does
	gpuprov host setup demo --yes
	gpuprov host inspect demo
	gpuprov lab ssh demo -- 'lspci -nnk -s 01:00; ls -l /dev/vfio'
	@echo "log in with: $(BIN)/gpuprov lab ssh demo   undo with: $(BIN)/gpuprov host rollback demo   remove with: $(BIN)/gpuprov lab destroy demo"

## test: set up, lint, then every test (unit, lab VMs, molecule).
test: setup lint
	$(BIN)/pytest

lint:
	$(BIN)/ruff check gpuprov tests bench molecule
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint --offline
