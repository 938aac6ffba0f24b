# The two entry points of the README's quick start. Both set everything up first.
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(CURDIR)/$(BIN):$(PATH)

.PHONY: setup demo test lint unit

setup:
	./scripts/setup.sh

## demo: set up, boot a lab GPU host, show its stand-in GPU and IOMMU state.
demo: setup
	gpuprov lab up demo
	gpuprov lab list
	gpuprov lab ssh demo -- 'lspci -nnk -d ::0300; lspci -nnk -d ::0403; echo "cmdline: $$(cat /proc/cmdline)"; echo "IOMMU groups: $$(ls /sys/kernel/iommu_groups | wc -l)"'
	@echo "log in with: $(BIN)/gpuprov lab ssh demo   remove with: $(BIN)/gpuprov lab destroy demo"

## test: set up, lint, then every test (unit, lab VMs, molecule).
test: setup lint
	$(BIN)/pytest

lint:
	$(BIN)/ruff check gpuprov tests bench molecule
	$(BIN)/yamllint --strict .
	$(BIN)/ansible-lint --offline
