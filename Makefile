# remote-docker-operator. Every target installs or builds what it needs; slow builds are cached
# under $(RDO_CACHE): Go binaries keyed by version, images by their inputs, the virtualenv by
# pyproject.toml.
RDO_CACHE ?= /var/cache/remote-docker-operator
RDO_CLUSTER_DIR ?= $(CURDIR)/.artifacts/cluster
export RDO_CACHE RDO_CLUSTER_DIR
VENV := $(RDO_CACHE)/venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=

.PHONY: help up down kind-up kind-down test test-unit test-integration test-e2e lint generate crds deps bins images venv \
	bench bench-latency bench-cache bench-scale

help:
	@echo "make up                a local cluster, the operator, and examples/hello.yaml run to the end"
	@echo "make down              stop the local cluster and everything it started"
	@echo "make kind-up           the same on a kind cluster (needs Docker; see docs/development.md)"
	@echo "make test              lint, unit, integration and e2e tests (builds everything needed)"
	@echo "make test-unit         unit tests only (seconds)"
	@echo "make test-integration  against a real kube-apiserver with kwok"
	@echo "make test-e2e          on a real single-node cluster where pods run"
	@echo "make generate          regenerate crds/, the chart's copies and the settings' values, schema,"
	@echo "                       env and README table from the pydantic models (make crds: the same)"
	@echo "make lint              ruff and mypy --strict"
	@echo "make bench             every benchmark below; tables in .artifacts/bench/"
	@echo "make bench-latency     BuildJob and DockerEngine (cold, warm) vs a dind-sidecar pod, real cluster"
	@echo "make bench-cache       a build cold and on its cache key's kept volume; hit rate over keys"
	@echo "make bench-scale       1,000 at once, restart with 2,000, RSS at 5,000, churn 2,000 (kwok)"

# The package is installed editable, so the stamp covers this checkout's path as well.
STAMP := $(VENV)/.installed-$(shell (cat pyproject.toml; echo $(CURDIR)) | sha256sum | cut -c1-12)
venv: $(STAMP)
$(STAMP): pyproject.toml
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test,lint]'
	@rm -f $(VENV)/.installed-*; touch $@

deps:
	cluster/install-deps.sh

# runc links libseccomp (deps).
bins: deps
	cluster/build-bins.sh

images: deps
	$(PY) images/build.py >/dev/null

# Every generated copy: the CRDs and the chart's engineClass.spec schema from models.py; the
# chart's operator values, their schema, its env helper and the README's table from config.py.
generate: venv
	$(PY) -m remote_docker_operator.crd crds charts/remote-docker-operator/crds \
	  --values-schema charts/remote-docker-operator/values.schema.json
	$(PY) -m remote_docker_operator.settings_chart .

crds: generate

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test-unit: venv
	$(VENV)/bin/pytest tests/unit $(PYTEST_ARGS)

test-integration: venv bins
	$(VENV)/bin/pytest tests/integration $(PYTEST_ARGS)

test-e2e: venv deps bins images
	$(VENV)/bin/pytest tests/e2e $(PYTEST_ARGS)

# The e2e tier's builds run behind the unit and integration tiers (tests/run.sh says why).
test: venv deps lint
	PYTEST_ARGS='$(PYTEST_ARGS)' tests/run.sh

up: venv
	cluster/up.sh

down: venv
	$(PY) cluster/localcluster.py down --dir $(RDO_CLUSTER_DIR)

kind-up:
	cluster/kind-up.sh up

kind-down:
	cluster/kind-up.sh down

# Benchmarks, not tests: they print figures and targets and never fail on a missed target.
bench: bench-latency bench-cache bench-scale

bench-latency: venv deps bins images
	cd bench && $(PY) latency.py

bench-cache: venv deps bins images
	cd bench && $(PY) cache.py

bench-scale: venv bins
	cd bench && $(PY) scale.py
