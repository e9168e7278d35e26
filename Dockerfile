# kling-receiver: one image for the Procfile's processes. The default command is `web`; run the
# worker with the same image: `docker run IMAGE receiver worker`. Settings come from the environment
# (README "Settings"); mount a receiver.toml and set RECEIVER_CONFIG for handlers.

# Build stage: the project and its extras into a virtual environment, within the tested pins.
FROM python:3.11-slim AS build
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /src
RUN python -m venv /opt/venv
COPY pyproject.toml constraints.txt README.md ./
COPY receiver ./receiver
COPY handlers ./handlers
RUN /opt/venv/bin/pip install ".[postgres,s3]" -c constraints.txt

# Run stage: the environment only, no compilers or sources, as an unprivileged user.
FROM python:3.11-slim
ENV PATH=/opt/venv/bin:$PATH PYTHONUNBUFFERED=1 PORT=8000
RUN useradd --create-home --uid 10001 receiver
COPY --from=build /opt/venv /opt/venv
USER 10001
WORKDIR /home/receiver
EXPOSE 8000
HEALTHCHECK --interval=30s --timeout=5s CMD ["python", "-c", "import os, urllib.request; urllib.request.urlopen(f\"http://127.0.0.1:{os.environ['PORT']}/healthz\", timeout=4)"]
CMD ["sh", "-c", "exec receiver serve --host 0.0.0.0 --port \"$PORT\""]
