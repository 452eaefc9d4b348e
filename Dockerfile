# syntax=docker/dockerfile:1
# VirtualFit images.
#   GPU (default):  docker build -t ghcr.io/virtualfit/virtualfit:0.1.0 .
#                   docker build --build-arg CUDA_COMPUTE_CAP=80 ...   # A100-class cards
#   CPU variant:    docker build --target runtime-cpu -t ghcr.io/virtualfit/virtualfit:0.1.0-cpu .

ARG CUDA_VERSION=13.0.0
ARG UBUNTU=ubuntu24.04

# ---- CUDA build: nvcc compiles candle's kernels and ours (kernels/*.cu) ----
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build-cuda
ARG CUDA_COMPUTE_CAP=90
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    CUDARC_CUDA_VERSION=13000 \
    PATH=/root/.cargo/bin:/usr/local/cuda/bin:${PATH}
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config \
    && rm -rf /var/lib/apt/lists/* \
    && curl -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY kernels kernels
COPY benches benches
COPY examples examples
RUN cargo build --release --locked --features cuda --bin virtualfit \
    && strip target/release/virtualfit

# ---- CPU build ----
FROM rust:1.95-bookworm AS build-cpu
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY src src
COPY kernels kernels
COPY benches benches
COPY examples examples
RUN cargo build --release --locked --bin virtualfit && strip target/release/virtualfit

# ---- CPU runtime ----
FROM debian:bookworm-slim AS runtime-cpu
RUN useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin virtualfit
COPY --from=build-cpu /src/target/release/virtualfit /usr/local/bin/virtualfit
USER 65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/virtualfit"]
CMD ["serve"]

# ---- GPU runtime (default target): cuBLAS, cuRAND and the CUDA runtime from NVIDIA's image ----
FROM nvidia/cuda:${CUDA_VERSION}-runtime-${UBUNTU} AS runtime
RUN useradd --uid 65532 --no-create-home --shell /usr/sbin/nologin virtualfit
COPY --from=build-cuda /src/target/release/virtualfit /usr/local/bin/virtualfit
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/virtualfit"]
CMD ["serve"]
