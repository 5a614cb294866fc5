module remote-docker-operator/gate

go 1.24
