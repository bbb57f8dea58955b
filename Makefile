# Version stamping from git tags: `git describe` names the nearest tag.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.Version=$(VERSION)

.PHONY: build docker test
build:
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o pseudonymizer ./cmd/pseudonymizer

docker:
	docker build --build-arg VERSION=$(VERSION) -t pseudonymizer:$(VERSION) .

test:
	.ci/run
