#!/usr/bin/env bash
# Release tooling; the Makefile's release targets call it (docs/releasing.md).
#
#   release.sh check VERSION          the tree may be released as VERSION
#   release.sh dist VERSION [DIR]     reproducible binaries + SHA256SUMS in DIR (dist/)
#   release.sh reproducible VERSION   build twice from two clean clones, compare
#   release.sh image VERSION IMAGE    container image of dist/'s binaries (docker)
#
# Reproducible: CGO_ENABLED=0, -trimpath, -buildvcs=true (the commit and its
# time, not the build's), -buildid= and fixed ldflags, the Go toolchain of
# go.mod; no timestamps of the build machine enter the binaries. The same
# commit built with the same toolchain gives byte-identical binaries.
set -euo pipefail
cd "$(dirname "$0")/../.."

# RELEASE_PLATFORMS narrows the set (for a quicker local check only).
platforms="${RELEASE_PLATFORMS:-linux/amd64 linux/arm64}"

die() { echo "release: $*" >&2; exit 1; }

semver() {
	[[ "$1" =~ ^v[0-9]+\.[0-9]+\.[0-9]+(-[0-9A-Za-z.-]+)?$ ]] || die "VERSION $1 is not vMAJOR.MINOR.PATCH[-PRERELEASE]"
}

# source_date_epoch is the commit time: the only time a release carries.
source_date_epoch() { git log -1 --format=%ct HEAD; }

# build VERSION OUT GOOS GOARCH: one binary.
build() {
	local version=$1 out=$2 os=$3 arch=$4
	CGO_ENABLED=0 GOOS=$os GOARCH=$arch GOFLAGS=-mod=readonly \
		go build -trimpath -buildvcs=true \
		-ldflags "-s -w -buildid= -X main.Version=$version" \
		-o "$out" ./cmd/pseudonymizer
}

cmd_check() {
	local version=$1
	semver "$version"
	[ -z "$(git status --porcelain)" ] || die "the working tree is not clean (git status): commit or stash first"
	if git rev-parse -q --verify "refs/tags/$version" >/dev/null; then
		die "tag $version exists already"
	fi
	grep -Eq "^## \[${version#v}\]" CHANGELOG.md ||
		die "CHANGELOG.md has no section \"## [${version#v}] - $(date -u +%Y-%m-%d)\": move the Unreleased entries there first"
	local want have
	want="$(sed -n 's/^go //p' go.mod)"
	have="$(go env GOVERSION)"
	[ "$have" = "go$want" ] || die "Go $have builds, go.mod says $want: release with go.mod's toolchain (GOTOOLCHAIN=go$want)"
	[ -z "$(gofmt -l .)" ] || die "gofmt -l lists files"
	go vet ./...
}

cmd_dist() {
	local version=$1 dir=${2:-dist}
	semver "$version"
	rm -rf "$dir"
	mkdir -p "$dir"
	local p os arch
	for p in $platforms; do
		os=${p%/*} arch=${p#*/}
		build "$version" "$dir/pseudonymizer-$version-$os-$arch" "$os" "$arch"
	done
	(cd "$dir" && sha256sum pseudonymizer-* >SHA256SUMS)
	cat "$dir/SHA256SUMS"
}

cmd_reproducible() {
	local version=$1 tmp rev
	semver "$version"
	# The commit is fixed once: a commit made meanwhile must not reach
	# the second build.
	rev="$(git rev-parse HEAD)"
	tmp="$(mktemp -d)"
	trap 'rm -rf "$tmp"' RETURN
	# Two clones at different paths, two empty build caches: nothing of
	# one build can reach the other.
	for d in a b; do
		git clone -q --no-local . "$tmp/$d/src"
		git -C "$tmp/$d/src" checkout -q "$rev"
		(cd "$tmp/$d/src" && GOCACHE="$tmp/$d/cache" scripts/release/release.sh dist "$version" "$tmp/$d/dist" >/dev/null)
	done
	if ! diff "$tmp/a/dist/SHA256SUMS" "$tmp/b/dist/SHA256SUMS"; then
		die "two builds of $rev differ"
	fi
	echo "reproducible: two builds of $rev are byte-identical"
	cat "$tmp/a/dist/SHA256SUMS"
}

cmd_image() {
	local version=$1 image=$2
	semver "$version"
	[ -s dist/SHA256SUMS ] || die "no dist/: run make dist first"
	(cd dist && sha256sum -c --quiet SHA256SUMS) || die "dist/ does not match its SHA256SUMS"
	command -v docker >/dev/null || die "docker is not installed: the binaries in dist/ are the release; build the image where docker runs (make image VERSION=$version)"
	docker buildx version >/dev/null 2>&1 || die "docker buildx (BuildKit) is not available: the binaries in dist/ are the release; build the image where docker buildx runs (make image VERSION=$version)"
	# The image holds dist/'s binary for its platform: the checksummed
	# bytes, not a second build. rewrite-timestamp sets the layers' file
	# times to SOURCE_DATE_EPOCH (BuildKit).
	docker buildx build -f Dockerfile.release \
		--platform "${PLATFORMS:-linux/$(go env GOARCH)}" \
		--build-arg VERSION="$version" \
		--build-arg SOURCE_DATE_EPOCH="$(source_date_epoch)" \
		--output "type=${IMAGE_OUTPUT:-docker},name=$image:$version,rewrite-timestamp=true" \
		.
}

[ $# -ge 2 ] || die "usage: release.sh check|dist|reproducible|image VERSION [...]"
sub=$1
shift
case "$sub" in
check) cmd_check "$@" ;;
dist) cmd_dist "$@" ;;
reproducible) cmd_reproducible "$@" ;;
image) [ $# -ge 2 ] || die "usage: release.sh image VERSION IMAGE"; cmd_image "$@" ;;
*) die "unknown subcommand $sub" ;;
esac
