# Build: docker build -t pseudonymizer .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags "-s -w" -o /out/pseudonymizer ./cmd/pseudonymizer

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pseudonymizer /usr/local/bin/pseudonymizer
EXPOSE 9464
ENTRYPOINT ["/usr/local/bin/pseudonymizer"]
CMD ["run", "--config", "/etc/pseudonymizer/config.yaml"]
