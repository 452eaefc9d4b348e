# syntax=docker/dockerfile:1
# VirtualFit images.
#   GPU (default):  docker build -t ghcr.io/virtualfit/virtualfit:0.1.0 .
#   CPU variant:    docker build --target runtime-cpu -t ghcr.io/virtualfit/virtualfit:0.1.0-cpu .
#
# GPUs. The default GPU image runs on every GPU of compute capability 8.0 or newer up to 9.0:
# A100 (8.0), A10/A40 (8.6), L4/L40S (8.9), H100/H200 (9.0). CUDA_COMPUTE_CAP=80 makes candle's
# kernels and ours (build.rs) PTX for compute_80, and the driver compiles PTX for the GPU it runs
# on (PTX is forward compatible). Matrix products run in cuBLAS, which ships machine code for all
# of these. The driver's compilation takes a few seconds at the first warm-up of a container and
# is cached in CUDA_CACHE_PATH (under /tmp, an emptyDir in k8s/). A tag for H100/H200 only, whose
# kernels need no compilation at start-up:
#   docker build --build-arg CUDA_COMPUTE_CAP=90 -t ghcr.io/virtualfit/virtualfit:0.1.0-sm90 .
# (build.rs strips an `a`/`f` suffix, so our kernels are always plain compute_XX PTX.)
# Driver: CUDA 13.0 needs an NVIDIA driver of the 580 branch or newer. The base image's
# NVIDIA_REQUIRE_CUDA makes the NVIDIA container runtime refuse to start it on an older one.

ARG CUDA_VERSION=13.0.0
ARG UBUNTU=ubuntu24.04

# ---- CUDA build: nvcc compiles candle's kernels and ours (kernels/*.cu) ----
FROM nvidia/cuda:${CUDA_VERSION}-devel-${UBUNTU} AS build-cuda
ARG CUDA_COMPUTE_CAP=80
ENV CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP} \
    CUDARC_CUDA_VERSION=13000 \
    PATH=/root/.cargo/bin:/usr/local/cuda/bin:${PATH}
# A failing download must fail the build, not feed an empty script to sh.
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates build-essential pkg-config \
    && rm -rf /var/lib/apt/lists/* \
    && curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs | sh -s -- -y --profile minimal --default-toolchain 1.95.0
WORKDIR /src
# The dependencies first, from the manifests alone: this layer is rebuilt only when they change.
COPY Cargo.toml Cargo.lock build.rs ./
COPY scripts/docker-dependency-stubs.sh scripts/docker-dependency-stubs.sh
RUN scripts/docker-dependency-stubs.sh \
    && cargo build --release --locked --features cuda --bin virtualfit \
    && scripts/docker-dependency-stubs.sh --clean
# Every file the build reads (scripts/check-docker-context.py builds from exactly these lines).
COPY src src
# `virtualfit plan` starts from the shipped ScaledObject.
COPY k8s/autoscaling/keda-gpu-scaler.yaml k8s/autoscaling/keda-gpu-scaler.yaml
COPY kernels kernels
# The full-size CatVTON configurations are compiled in (bench model --random-weights).
COPY models/catvton/config models/catvton/config
# So is DensePose's published configuration (the seeded network of --masker-source random:SEED).
COPY models/densepose/config models/densepose/config
# The plots' font (src/plotting.rs embeds it).
COPY assets/fonts assets/fonts
COPY benches benches
COPY examples examples
RUN cargo build --release --locked --features cuda --bin virtualfit \
    && strip target/release/virtualfit

# ---- CPU build ----
FROM rust:1.95-bookworm AS build-cpu
WORKDIR /src
COPY Cargo.toml Cargo.lock build.rs ./
COPY scripts/docker-dependency-stubs.sh scripts/docker-dependency-stubs.sh
RUN scripts/docker-dependency-stubs.sh \
    && cargo build --release --locked --bin virtualfit \
    && scripts/docker-dependency-stubs.sh --clean
COPY src src
# `virtualfit plan` starts from the shipped ScaledObject.
COPY k8s/autoscaling/keda-gpu-scaler.yaml k8s/autoscaling/keda-gpu-scaler.yaml
COPY kernels kernels
# The full-size CatVTON configurations are compiled in (bench model --random-weights).
COPY models/catvton/config models/catvton/config
# So is DensePose's published configuration (the seeded network of --masker-source random:SEED).
COPY models/densepose/config models/densepose/config
# The plots' font (src/plotting.rs embeds it).
COPY assets/fonts assets/fonts
COPY benches benches
COPY examples examples
RUN cargo build --release --locked --bin virtualfit && strip target/release/virtualfit

# ---- CPU runtime ----
FROM debian:bookworm-slim AS runtime-cpu
# The job store's folder (--data-dir), writable by the server; k8s/ mounts a volume there.
RUN useradd --no-log-init --uid 65532 --no-create-home --shell /usr/sbin/nologin virtualfit \
    && mkdir /data && chown 65532:65532 /data
COPY --from=build-cpu /src/target/release/virtualfit /usr/local/bin/virtualfit
ENV VIRTUALFIT_DATA_DIR=/data
USER 65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/virtualfit"]
CMD ["serve"]

# ---- GPU runtime (default target) ----
# NVIDIA's `base` image (the CUDA runtime, libcudart, and NVIDIA's apt repository) plus the two
# libraries the binary links besides it: cuBLAS/cuBLASLt and cuRAND (docs/cuda.md). libcuda and
# NVML come from the driver, mounted by the NVIDIA container runtime. The `runtime` image would
# add NPP, cuFFT, cuSPARSE, cuSOLVER and NVRTC, about 2 GB that nothing here loads.
FROM nvidia/cuda:${CUDA_VERSION}-base-${UBUNTU} AS runtime
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends libcublas-13-0 libcurand-13-0 \
    && rm -rf /var/lib/apt/lists/*
# The job store's folder (--data-dir), writable by the server; k8s/ mounts a volume there.
RUN useradd --no-log-init --uid 65532 --no-create-home --shell /usr/sbin/nologin virtualfit \
    && mkdir /data && chown 65532:65532 /data
COPY --from=build-cuda /src/target/release/virtualfit /usr/local/bin/virtualfit
# The driver's PTX compilation cache (the root filesystem is read-only in k8s/, /tmp is not).
# Lazy module loading (CUDA's default since 12.2, stated here): a kernel is loaded at its first
# launch, so candle's quantized kernels, built as sm_80 machine code and never launched by our
# models, do not matter on other architectures.
ENV NVIDIA_VISIBLE_DEVICES=all NVIDIA_DRIVER_CAPABILITIES=compute,utility \
    CUDA_CACHE_PATH=/tmp/cuda-cache CUDA_MODULE_LOADING=LAZY VIRTUALFIT_DATA_DIR=/data
USER 65532
EXPOSE 8000
ENTRYPOINT ["/usr/local/bin/virtualfit"]
CMD ["serve"]
