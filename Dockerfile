# rechka server image: one Dockerfile, two variants (docs/deploy.md).
#   GPU (default): docker build -t rechka:cuda .
#                  docker run --gpus all -p 8000:8000 rechka:cuda
#   CPU:           docker build --build-arg RUNTIME_BASE=debian:bookworm-slim -t rechka:cpu .
#                  docker run -p 8000:8000 -e RECHKA_DEVICE=cpu rechka:cpu
# Both variants install the same uv.lock that CI tests. Its torch 2.9.1 is PyPI's Linux wheel, a CUDA 12.8 build
# whose CUDA libraries come as locked, hash-checked nvidia-* wheels; so the GPU variant needs only a CUDA base
# (cudart and the NVIDIA container runtime's hooks, driver >= 570), and the CPU variant carries those libraries
# unused (about 4.3 GB) rather than a second, untested set of packages from the PyTorch CPU index.
# Every install step is a script CI runs too: scripts/apt_install.sh (via scripts/bootstrap.sh),
# scripts/image_env.sh (tests/deploy, --dry-run), rechka-fetch-models (tests/server), scripts/serve.sh (entrypoint).
ARG RUNTIME_BASE=nvidia/cuda:12.8.1-base-ubuntu24.04
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

FROM ${UV_IMAGE} AS uv

# ------------------------------------------------------------------------------------------------ builder
FROM debian:bookworm-slim AS builder
COPY --from=uv /uv /usr/local/bin/uv
WORKDIR /app
COPY scripts/apt_install.sh scripts/
RUN scripts/apt_install.sh ca-certificates && rm -rf /var/lib/apt/lists/*
# A uv-managed CPython 3.11 in /opt/python (the same in both variants; Ubuntu 24.04 has no 3.11), the venv in /opt/venv.
ENV UV_PYTHON=3.11 UV_PYTHON_PREFERENCE=only-managed UV_PYTHON_INSTALL_DIR=/opt/python \
    UV_PROJECT_ENVIRONMENT=/opt/venv UV_COMPILE_BYTECODE=1 UV_LINK_MODE=copy UV_NO_CACHE=1
COPY pyproject.toml uv.lock README.md ./
COPY scripts/image_env.sh scripts/
RUN scripts/image_env.sh --no-install-project
COPY streaming/ streaming/
COPY server/ server/
COPY clients/ clients/
RUN scripts/image_env.sh
# Every default model into the image, each verified by loading it; the build fails if one cannot be fetched.
# RECHKA_CACHE holds the segmentation weights; gigaam keeps GigaAM in $HOME/.cache/gigaam.
ENV RECHKA_CACHE=/opt/rechka-cache
RUN HOME=/opt/home /opt/venv/bin/rechka-fetch-models

# ------------------------------------------------------------------------------------------------ runtime
FROM ${RUNTIME_BASE} AS runtime
WORKDIR /app
COPY scripts/apt_install.sh scripts/
# libjemalloc2: scripts/serve.sh preloads it (flat RSS over long sessions, docs/benchmarks.md); curl: HEALTHCHECK.
RUN scripts/apt_install.sh libjemalloc2 curl && rm -rf /var/lib/apt/lists/* \
    && groupadd --gid 10001 rechka \
    && useradd --uid 10001 --gid 10001 --create-home --home-dir /home/rechka --shell /usr/sbin/nologin rechka
COPY --from=builder /opt/python /opt/python
COPY --from=builder /opt/venv /opt/venv
COPY --from=builder /opt/rechka-cache /opt/rechka-cache
COPY --from=builder --chown=10001:10001 /opt/home/.cache /home/rechka/.cache
COPY scripts/serve.sh scripts/
# RECHKA_* are server flags (python -m server --help); RECHKA_SKIP_BOOTSTRAP tells serve.sh the env is installed.
# NUMBA_CACHE_DIR: numba (librosa, imported by the models) caches compiled functions at import; in /tmp, the one
# writable place under Kubernetes' readOnlyRootFilesystem (tests/deploy runs the entrypoint on a read-only root).
ENV PATH=/opt/venv/bin:$PATH RECHKA_SKIP_BOOTSTRAP=1 RECHKA_CACHE=/opt/rechka-cache RECHKA_HOST=0.0.0.0 \
    RECHKA_PORT=8000 OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1 NUMBA_CACHE_DIR=/tmp/numba-cache
USER 10001:10001
EXPOSE 8000
# /health answers once the models are loaded and audited (startup takes up to a few minutes on a CPU).
HEALTHCHECK --interval=30s --timeout=5s --start-period=300s --retries=3 \
    CMD ["/bin/sh", "-c", "curl -fsS -o /dev/null http://127.0.0.1:${RECHKA_PORT}/health || exit 1"]
# The README's start command, exec form: serve.sh execs python, so the server is PID 1 and gets SIGTERM (drain).
STOPSIGNAL SIGTERM
ENTRYPOINT ["/app/scripts/serve.sh"]
