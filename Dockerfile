# The one kubesent binary on a distroless, non-root base (uid 65532, as the manifests expect).
FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p kubesent && cp target/release/kubesent /kubesent

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /kubesent /usr/local/bin/kubesent
USER 65532:65532
ENTRYPOINT ["/usr/local/bin/kubesent"]
