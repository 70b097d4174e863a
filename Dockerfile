# One image for the whole shop: the six service binaries and the `shop` operator tool
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
# Rebuilt only when Cargo.toml/Cargo.lock change.
RUN cargo chef cook --release --locked --recipe-path recipe.json
COPY . .
# `shop` with the operator's commands only: the lab (chaos, bench) stays out of the image.
RUN cargo build --release --locked \
        --bin orders --bin payment --bin inventory --bin shipping --bin notifications \
        --bin console --bin order-saga \
 && cargo build --release --locked -p shop-cli --no-default-features --bin shop

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
