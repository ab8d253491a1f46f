# syntax=docker/dockerfile:1
# Build: docker build -t keyproxy .
# Run:   docker run --rm -p 127.0.0.1:8787:8787 -e OPENAI_API_KEY \
#          -v "$PWD/config/keyproxy.docker.toml:/etc/keyproxy/keyproxy.toml:ro" \
#          -v keyproxy-state:/var/lib/keyproxy keyproxy

FROM rust:1-slim-bookworm AS build
WORKDIR /src
# Dependencies first, in their own layer: source edits don't rebuild them.
COPY Cargo.toml Cargo.lock ./
COPY .cargo ./.cargo
RUN mkdir -p src benches \
 && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs \
 && echo 'fn main() {}' > benches/hot_path.rs \
 && echo 'fn main() {}' > benches/loadgen.rs \
 && cargo build --release --locked \
 && rm -rf src benches
COPY build.rs ./
COPY src ./src
COPY benches ./benches
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin keyproxy
# The state directory, owned by the runtime user (the runtime image has no shell to make it).
RUN install -d -m 0700 -o 65532 -g 65532 /state

# distroless/cc: glibc, CA certificates, no shell, runs as uid 65532 ("nonroot").
FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=build /src/target/release/keyproxy /usr/local/bin/keyproxy
COPY config/keyproxy.docker.toml /etc/keyproxy/keyproxy.toml
COPY --from=build --chown=65532:65532 /state /var/lib/keyproxy
ENV KEYPROXY_CONFIG=/etc/keyproxy/keyproxy.toml
# keyproxy.db: rotations, retired keys (salted hashes), sightings; keep it across containers.
ENV KEYPROXY_STATE_DIR=/var/lib/keyproxy
VOLUME ["/var/lib/keyproxy"]
USER 65532:65532
EXPOSE 8787 8788
HEALTHCHECK --interval=10s --timeout=3s --start-period=5s --retries=3 \
  CMD ["/usr/local/bin/keyproxy", "health"]
ENTRYPOINT ["/usr/local/bin/keyproxy"]
CMD ["run"]
