# One image for the whole shop: the seven service binaries and the `shop` operator tool
# (without the lab: `shop chaos` and `shop bench` run from a checkout).
#
#   docker compose up --build       (see docker-compose.yml)
#   docker build -t choreographed-shop .

# ---- Build: dependencies first, in a layer of their own (cargo-chef), then the shop --------
FROM rust:1.95-slim-bookworm AS chef
RUN cargo install cargo-chef --locked --version 0.1.78
WORKDIR /src

FROM chef AS planner
COPY . .
RUN cargo chef prepare --recipe-path recipe.json

FROM chef AS builder
COPY --from=planner /src/recipe.json recipe.json
# What the image holds, built in one cargo run: one feature set for all eight binaries, so the
# dependencies are compiled once. `shop` with the operator's commands only (no default
# features): the lab (chaos, bench) stays out of the image.
ARG BINARIES="--bin orders --bin payment --bin inventory --bin shipping --bin notifications \
    --bin console --bin order-saga --bin shop"
# The dependencies alone, rebuilt only when Cargo.toml/Cargo.lock change. The recipe carries
# Cargo.lock and cook builds what it pins (`--locked` fails here: cargo-chef rewrites the
# workspace's own crates in the recipe); the shop's build below is `--locked` on the real one.
RUN cargo chef cook --release --no-default-features $BINARIES --recipe-path recipe.json
COPY . .
RUN cargo build --release --locked --no-default-features $BINARIES

# ---- Run: a small image, no compiler, no shell tools needed, not root ----------------------
FROM debian:bookworm-slim AS runtime
# The development issuer's key and the console's token live in volumes mounted at the two
# directories made here; a new volume takes their owner.
RUN useradd --system --uid 10001 --no-create-home --shell /usr/sbin/nologin shop \
 && mkdir -p /var/lib/shop-issuer /var/run/shop \
 && chown 10001:10001 /var/lib/shop-issuer /var/run/shop
COPY --from=builder \
    /src/target/release/orders \
    /src/target/release/payment \
    /src/target/release/inventory \
    /src/target/release/shipping \
    /src/target/release/notifications \
    /src/target/release/console \
    /src/target/release/order-saga \
    /src/target/release/shop \
    /usr/local/bin/
USER 10001:10001
ENV RUST_LOG=info
# Each compose service picks its binary with `command:`; the operator tool is the default.
CMD ["shop", "--help"]
