# syntax=docker/dockerfile:1
# pixelgate's server image. Two stages: `builder` (compilers, build tools) builds the
# two wheels into a virtual environment; the runtime stage gets only that environment.
#
#   CPU (default):  docker build -t pixelgate .
#   CUDA:           docker build -t pixelgate:cuda \
#                     --build-arg BASE_IMAGE=nvidia/cuda:12.8.1-cudnn-runtime-ubuntu24.04 \
#                     --build-arg TORCH_INDEX_URL=https://download.pytorch.org/whl/cu128 .
#   Baked weights:  add --build-arg MODEL_SOURCE=<hub id> (gated repositories: pass the
#                     token as a file, --secret id=hf_token,src=token.txt, never as an arg);
#                     they land in /models/baked. Otherwise mount weights at /models.
#
# Configuration comes from PIXELGATE_* variables (no file needed); see deploy/kubernetes/.

# Both stages start from the same base, so the environment built in one runs in the other.
ARG BASE_IMAGE=python:3.12-slim-bookworm

FROM ${BASE_IMAGE} AS builder
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 DEBIAN_FRONTEND=noninteractive
# Compilers for any dependency without a wheel for this platform; python3 for CUDA
# bases, which have none (the python image has its own in /usr/local).
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential \
    && if ! command -v python3 >/dev/null; then \
         apt-get install -y --no-install-recommends python3 python3-venv python3-dev; \
       fi \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/pixelgate/venv
ENV PATH=/opt/pixelgate/venv/bin:$PATH
# torch first, from the index the build argument names (CPU or a CUDA build); the
# server's `torch>=2.1` is then already satisfied and never pulls another build.
RUN pip install --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY protos/ protos/
COPY client/ client/
COPY server/ server/
# The client's wheel generates the pixelgate.v1 stubs from protos/ as it builds (`make wheels`).
RUN pip wheel --no-deps --wheel-dir /wheels ./client . \
    && pip install /wheels/*.whl

FROM ${BASE_IMAGE} AS runtime
ARG MODEL_SOURCE=""
ENV DEBIAN_FRONTEND=noninteractive
# hadolint ignore=DL3008
RUN if ! command -v python3 >/dev/null; then \
      apt-get update \
      && apt-get install -y --no-install-recommends python3 \
      && rm -rf /var/lib/apt/lists/*; \
    fi \
    && groupadd --gid 10001 pixelgate \
    && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
         --shell /usr/sbin/nologin pixelgate
COPY --from=builder /opt/pixelgate/venv /opt/pixelgate/venv
# Defaults for a container: listen on every interface, TLS files where the Kubernetes
# Secret volume puts them (cert-manager's key names), the model cache inside the image.
# Writable scratch (library caches) only under /tmp, so the root filesystem can be read-only.
ENV PATH=/opt/pixelgate/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    HOME=/tmp \
    HF_HOME=/tmp/huggingface \
    PIXELGATE_HOST=0.0.0.0 \
    PIXELGATE_PORT=50051 \
    PIXELGATE_TLS__CERT_FILE=/etc/pixelgate/tls/tls.crt \
    PIXELGATE_TLS__KEY_FILE=/etc/pixelgate/tls/tls.key \
    PIXELGATE_TLS__CLIENT_CA_FILE=/etc/pixelgate/tls/ca.crt \
    PIXELGATE_CACHE_DIR=/opt/pixelgate/cache
WORKDIR /opt/pixelgate
# The tiny test model is built now, so a replica starts without writing anything.
RUN pixelgate-server --prepare-model \
    && chmod -R a+rX /opt/pixelgate/cache
# Weights baked in on request; the hub token, if any, is a BuildKit secret file.
RUN --mount=type=secret,id=hf_token,required=false \
    if [ -n "${MODEL_SOURCE}" ]; then \
      HF_TOKEN_PATH=/run/secrets/hf_token python3 -c \
        "import sys; from huggingface_hub import snapshot_download; snapshot_download(sys.argv[1], local_dir='/models/baked')" \
        "${MODEL_SOURCE}" \
      && chmod -R a+rX /models; \
    fi
USER 10001:10001
EXPOSE 50051 8081
ENTRYPOINT ["pixelgate-server"]
