# syntax=docker/dockerfile:1
#
# The TTS server image: the locked virtual environment plus the app code, run by a non-root user.
#
#   docker build -t tts-server .                          # CPU: onnxruntime
#   docker build -t tts-server:gpu --build-arg RUNTIME=gpu .
#   docker run --rm -p 8888:8888 tts-server
#   docker run --rm --gpus all -p 8888:8888 tts-server:gpu
#
# RUNTIME picks the pyproject.toml extra: `cpu` (onnxruntime) or `gpu` (onnxruntime-gpu[cuda,cudnn]).
# Both images start from the same python slim base: the gpu extra brings the CUDA runtime, cuBLAS,
# cuFFT, cuRAND, NVRTC and cuDNN as nvidia-* pip wheels inside the venv, and server/synthesis/voice.py
# loads them with onnxruntime.preload_dlls(), so an nvidia/cuda base image would only add a second
# copy of those libraries. The one piece that cannot be in the image is the driver (libcuda.so): the
# NVIDIA container toolkit mounts the host's into the container (`--gpus`, or the Kubernetes device
# plugin when a pod requests nvidia.com/gpu). The wheels are CUDA 12 (12.9 in uv.lock), which runs
# on any CUDA 12 driver (>= 525) through minor-version compatibility; a recent one is safer. Set
# `synthesis.require_cuda: true` for a GPU deployment so a node where CUDA does not start stays
# unready instead of serving slowly from the CPU.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm
ARG UV_IMAGE=ghcr.io/astral-sh/uv:0.13.9

# COPY --from cannot expand build arguments, so uv gets a named stage of its own.
FROM ${UV_IMAGE} AS uv

# --- build: resolve nothing, install exactly what uv.lock pins --------------------------------
FROM ${PYTHON_IMAGE} AS build
ARG RUNTIME=cpu
COPY --from=uv /uv /usr/local/bin/uv
# The venv is made at the path it will have in the final stage (scripts' shebangs are absolute)
# with the base image's interpreter, which the final stage has at the same path.
ENV UV_PROJECT_ENVIRONMENT=/app/.venv \
    UV_PYTHON=/usr/local/bin/python3.11 \
    UV_PYTHON_DOWNLOADS=never \
    UV_COMPILE_BYTECODE=1 \
    UV_LINK_MODE=copy
WORKDIR /app
COPY pyproject.toml uv.lock ./
# Only the dependencies: the app is not installed as a package but run from /app (gunicorn and
# config/gunicorn.conf.py put the working directory on sys.path), so code changes leave this
# layer cached.
RUN --mount=type=cache,target=/root/.cache/uv \
    case "${RUNTIME}" in \
        cpu | gpu) ;; \
        *) echo "RUNTIME must be cpu or gpu, got '${RUNTIME}'" >&2; exit 2 ;; \
    esac \
    && uv sync --frozen --no-dev --no-install-project --extra "${RUNTIME}"

# --- runtime: the venv, the code and the default config; no uv, no build tools ------------------
FROM ${PYTHON_IMAGE} AS runtime
# A fixed numeric id, so Kubernetes' runAsNonRoot can check it without reading /etc/passwd.
RUN groupadd --system --gid 10001 tts \
    && useradd --system --uid 10001 --gid tts --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin tts
WORKDIR /app
COPY --from=build /app/.venv /app/.venv
COPY server/ server/
COPY config/gunicorn.conf.py config/
COPY config.yaml ./
# The code stays root-owned (the process cannot rewrite it); only var/ (audio files) is writable.
RUN python -m compileall -q server \
    && mkdir -p var/audio \
    && chown -R tts:tts var
# PROMETHEUS_MULTIPROC_DIR is where the workers' metric files meet; /tmp stays writable even with
# a read-only root filesystem once an emptyDir is mounted there (config/kubernetes/deployment.yaml).
# NVIDIA_DRIVER_CAPABILITIES tells the container toolkit which driver libraries to mount (compute
# is libcuda); where there is no GPU it means nothing, so the CPU image may carry it too.
ENV PATH=/app/.venv/bin:${PATH} \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    TTS__SERVER__HOST=0.0.0.0 \
    TTS__WYOMING__ENABLED=true \
    TTS__WYOMING__HOST=0.0.0.0 \
    PROMETHEUS_MULTIPROC_DIR=/tmp/tts-metrics \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
USER 10001:10001
# HTTP, and Wyoming for Home Assistant (whose peers wyoming.allowed_networks must name: loopback
# only until compose, Kubernetes or TTS__WYOMING__ALLOWED_NETWORKS opens a range).
EXPOSE 8888 10200
# For docker and compose; Kubernetes ignores it and uses the probes in config/kubernetes/.
# The slim image has no curl. urlopen raises (exit status 1) on a refused connection or non-2xx.
# The port is the configured one (config.yaml, TTS_CONFIG or TTS__SERVER__PORT), read by the
# server's own settings loader, so a changed port never fails the check.
HEALTHCHECK --interval=15s --timeout=5s --start-period=120s --retries=3 \
    CMD ["python", "-c", "import urllib.request; from server.settings import load_settings; urllib.request.urlopen('http://127.0.0.1:%d/healthz' % load_settings().server.port, timeout=4)"]
# The gunicorn master is PID 1: it reaps its own workers, and on SIGTERM it closes the listener
# and lets each worker drain for server.graceful_timeout_s (config/gunicorn.conf.py).
STOPSIGNAL SIGTERM
# The same command as `./start.sh serve`.
CMD ["/app/.venv/bin/gunicorn", "--config", "config/gunicorn.conf.py", "server.worker:create_app()"]
