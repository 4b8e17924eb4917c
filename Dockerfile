# Image of the prefetch CLI itself.
#
#   docker build -t prefetch .            (or: podman build -t prefetch .)
#   docker run --rm -v hf-cache:/data/huggingface -v "$PWD:/work" prefetch sync models.yaml
#
# The HF cache lives in the volume /data/huggingface (HF_HOME; HF_HUB_CACHE=/data/huggingface/hub).
# Its folders are writable by any user, sticky like /tmp, so a fresh named volume (which takes the
# image's modes) also works with `docker run --user "$(id -u):$(id -g)"`.
# No token is ever baked in: pass HF_TOKEN at run time, mount a file and use --token-file, or in a
# BuildKit build mount the secret `hf_token` (read from /run/secrets/hf_token). See docs/docker.md.

# --- build stage: install prefetch and its dependencies into a self-contained virtualenv ---------
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1 PYTHONDONTWRITEBYTECODE=1
RUN python -m venv /opt/prefetch
WORKDIR /src
COPY . .
# pip and setuptools are only needed to install: the runtime venv goes without them (-25 MB).
RUN /opt/prefetch/bin/pip install --no-cache-dir . \
 && /opt/prefetch/bin/pip uninstall --yes pip setuptools \
 && /opt/prefetch/bin/prefetch --version

# --- runtime stage: the venv, a non-root user, nothing else --------------------------------------
FROM python:3.11-slim
LABEL org.opencontainers.image.title="prefetch" \
      org.opencontainers.image.description="Prefetch Hugging Face Hub repos from a YAML manifest into the HF cache and write a lockfile" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 prefetch \
 && useradd --system --uid 10001 --gid 10001 --home-dir /home/prefetch --create-home \
      --shell /usr/sbin/nologin prefetch \
 && mkdir -p /data/huggingface/hub /work \
 && chown -R 10001:10001 /data/huggingface /work \
 && chmod 1777 /data/huggingface /data/huggingface/hub
COPY --from=build /opt/prefetch /opt/prefetch
ENV PATH=/opt/prefetch/bin:$PATH \
    HF_HOME=/data/huggingface \
    HF_HUB_CACHE=/data/huggingface/hub \
    HF_HUB_DISABLE_TELEMETRY=1 \
    HF_HUB_DISABLE_PROGRESS_BARS=1 \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/data/huggingface"]
WORKDIR /work
USER 10001:10001
ENTRYPOINT ["prefetch"]
CMD ["--help"]
