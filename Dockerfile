# One image for every role and simulator: `docker run IMAGE controller | media-worker | tool-worker | sim ...`.
# Build stage: the project and its dependencies into a venv (binary wheels only need no compiler).
FROM python:3.11-slim AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY controller controller
COPY media_worker media_worker
COPY tool_worker tool_worker
COPY shared shared
COPY sim sim
# The sim extra: aiosmtpd for `voice-agent sim mail` (the compose demo profile's mail catcher).
RUN /opt/venv/bin/pip install --no-cache-dir ".[sim]"

# Final stage: the venv, the default config, and no pip cache or build leftovers.
FROM python:3.11-slim
# espeak-ng: the simulators speak the demo's lines with it (sim/realtime/voice.py); the roles never call it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends espeak-ng \
    && rm -rf /var/lib/apt/lists/*
# A fixed uid/gid, so that volumes and host directories can be given to it.
RUN groupadd --system --gid 10001 agent \
    && useradd --system --uid 10001 --gid agent --home-dir /app --no-create-home --shell /usr/sbin/nologin agent \
    && mkdir -p /var/lib/voice-agent/mail \
    && chown -R agent:agent /var/lib/voice-agent
COPY --from=build /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /app
# The default config (config/ai-agent.yaml relative to /app); compose mounts ./config over it.
COPY config config
USER 10001:10001
# Health endpoints (/healthz, /readyz, /metrics) of controller, media worker, tool worker; the media
# worker's AudioSocket port and RTP range.
EXPOSE 15000 15001 15002 8090 18080-18199/udp
ENTRYPOINT ["voice-agent"]
CMD ["--help"]
