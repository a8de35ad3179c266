# Cairn in a container: `docker build -t cairn .`, then
#   docker run -p 2379:2379 -v cairn-data:/var/lib/cairn cairn
# The image runs one member listening on every interface (plain HTTP: put TLS flags in
# CAIRN_ARGS or mount etcd's YAML and pass --config-file for anything beyond a trial).
# A three-member cluster: deploy/docker-compose.yml. docs/INSTALL.md.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The commit `cairn --version` reports (pass --build-arg CAIRN_GIT_COMMIT=$(git rev-parse --short=12 HEAD)).
ARG CAIRN_GIT_COMMIT=unknown
ENV CAIRN_GIT_COMMIT=${CAIRN_GIT_COMMIT}
RUN cargo build --release --locked --bin cairn --bin cairnctl --bin cairn-bench

FROM debian:bookworm-slim
RUN useradd --system --home-dir /var/lib/cairn --create-home cairn \
    && mkdir -p /var/lib/cairn && chown cairn:cairn /var/lib/cairn && chmod 0700 /var/lib/cairn
COPY --from=build /src/target/release/cairn /src/target/release/cairnctl /src/target/release/cairn-bench /usr/local/bin/
COPY LICENSE README.md /usr/share/doc/cairn/
USER cairn
WORKDIR /var/lib/cairn
EXPOSE 2379 2380
# Flags as etcd's image takes them; every ETCD_* variable works too.
ENV ETCD_DATA_DIR=/var/lib/cairn/default.cairn \
    ETCD_LISTEN_CLIENT_URLS=http://0.0.0.0:2379 \
    ETCD_ADVERTISE_CLIENT_URLS=http://127.0.0.1:2379 \
    ETCD_LISTEN_PEER_URLS=http://0.0.0.0:2380
ENTRYPOINT ["/usr/local/bin/cairn"]
