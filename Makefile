# remote-docker-operator. Every target installs or builds what it needs; slow builds are cached
# under $(RDO_CACHE) (Go binaries keyed by version, the Python virtualenv keyed by pyproject).
RDO_CACHE ?= /var/cache/remote-docker-operator
export RDO_CACHE
VENV := $(RDO_CACHE)/venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help venv bins crds lint test test-unit test-integration clean-cache

help:
	@echo "make test              lint, unit and integration tests (builds everything needed)"
	@echo "make test-unit         unit tests only (seconds)"
	@echo "make test-integration  against a real kube-apiserver + kwok"
	@echo "make crds              regenerate crds/ from the pydantic models"
	@echo "make lint              ruff and mypy --strict"

# The package is installed editable, so the stamp covers this checkout's path as well.
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml; echo $(CURDIR)) | sha256sum | cut -c1-12)
venv: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	@rm -f $(VENV)/.installed-*; touch $@

bins:
	cluster/build-bins.sh control-plane kwok

crds: venv
	$(PY) -m remote_docker_operator.crd crds/buildjobs.remotedocker.dev.yaml \
	  charts/remote-docker-operator/crds/buildjobs.remotedocker.dev.yaml

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test-unit: venv
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test-integration: venv bins
	$(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

test: venv bins lint
	$(VENV)/bin/pytest tests/unit tests/integration $(PYTEST_ARGS)

clean-cache:
	rm -rf $(RDO_CACHE)
