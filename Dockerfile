# Multi-stage build: compile in the Rust image, run from a small Debian image as a non-root user.
FROM rust:1.95-slim-bookworm AS build
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY crates crates
COPY src src
COPY migrations migrations
COPY sql sql
COPY benches benches
COPY hubsync.example.toml ./
RUN cargo build --release --locked --bin hubsync

FROM debian:bookworm-slim
# CA roots for HTTPS to api.hubapi.com.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin hubsync
COPY --from=build /src/target/release/hubsync /usr/local/bin/hubsync
COPY hubsync.example.toml /etc/hubsync/hubsync.toml
COPY sql /usr/share/hubsync/sql
ENV HUBSYNC_CONFIG=/etc/hubsync/hubsync.toml
USER hubsync
ENTRYPOINT ["hubsync"]
CMD ["run"]
