# rechka server image. Build: docker build -t rechka .   Run: docker run --gpus all -p 8000:8000 rechka
# GigaAM weights are fetched at build time when the network allows (rechka-fetch-models); otherwise mount a
# checkpoint and pass --asr-model /models/your.ckpt.
FROM python:3.11-slim-bookworm

RUN apt-get update && apt-get install -y --no-install-recommends espeak-ng sox ffmpeg curl libjemalloc2 \
    && rm -rf /var/lib/apt/lists/* \
    && ln -s "$(ls /usr/lib/*/libjemalloc.so.2 | head -n 1)" /usr/local/lib/libjemalloc.so.2 \
    && pip install --no-cache-dir uv

ENV UV_PROJECT_ENVIRONMENT=/opt/venv PATH=/opt/venv/bin:$PATH RECHKA_CACHE=/opt/rechka-cache \
    OMP_WAIT_POLICY=PASSIVE PYTHONUNBUFFERED=1 MALLOC_ARENA_MAX=2
WORKDIR /app
COPY pyproject.toml uv.lock README.md ./
RUN uv sync --frozen --no-dev --no-install-project
COPY streaming/ streaming/
COPY server/ server/
COPY clients/ clients/
RUN uv sync --frozen --no-dev
# Pre-fetch every default model into the image; GigaAM may be unreachable at build time (then supply it at run time).
RUN rechka-fetch-models || rechka-fetch-models --skip-asr

# jemalloc for the server only (set here, after the build steps): flat RSS over long sessions, see docs/benchmarks.md
ENV LD_PRELOAD=/usr/local/lib/libjemalloc.so.2
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD curl -fs http://127.0.0.1:8000/health || exit 1
CMD ["python", "-m", "server", "--host", "0.0.0.0", "--port", "8000"]
