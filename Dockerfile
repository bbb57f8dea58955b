# Build: docker build --build-arg VERSION=$(git describe --tags --always --dirty) -t pseudonymizer .
# (or `make docker`). The Go version matches go.mod.
FROM golang:1.26.8 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
ARG VERSION=dev
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w -X main.Version=${VERSION}" -o /out/pseudonymizer ./cmd/pseudonymizer

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pseudonymizer /usr/local/bin/pseudonymizer
EXPOSE 9464
HEALTHCHECK --interval=10s --timeout=5s --start-period=30s CMD ["/usr/local/bin/pseudonymizer", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/pseudonymizer"]
CMD ["run", "--config", "/etc/pseudonymizer/config.yaml"]
