# Version stamping from git tags: `git describe` names the nearest tag.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -s -w -X main.Version=$(VERSION)
# The release image's name (a registry path for a published image).
IMAGE ?= pseudonymizer

.PHONY: build docker test release release-check dist reproducible image
build:
	CGO_ENABLED=0 go build -trimpath -ldflags "$(LDFLAGS)" -o pseudonymizer ./cmd/pseudonymizer

docker:
	docker build --build-arg VERSION=$(VERSION) -t pseudonymizer:$(VERSION) .

test:
	.ci/run

# Releases (docs/releasing.md): `make release VERSION=v0.1.0` checks the
# tree, builds reproducible linux/amd64 and linux/arm64 binaries with
# SHA256SUMS into dist/, tags HEAD (only once the binaries built), and
# builds the container image from them.
release: release-check
	$(MAKE) dist VERSION=$(VERSION)
	git tag -a $(VERSION) -m "pseudonymizer $(VERSION)"
	$(MAKE) image VERSION=$(VERSION) IMAGE=$(IMAGE)
	@echo "released $(VERSION): push the tag with: git push origin $(VERSION)"

release-check:
	scripts/release/release.sh check $(VERSION)

dist:
	scripts/release/release.sh dist $(VERSION)

# Builds twice from two clean clones of HEAD and compares the binaries.
reproducible:
	scripts/release/release.sh reproducible $(VERSION)

image:
	scripts/release/release.sh image $(VERSION) $(IMAGE)
