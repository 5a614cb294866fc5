"""remote-docker-operator: an isolated remote Docker engine for every CI job on Kubernetes."""
