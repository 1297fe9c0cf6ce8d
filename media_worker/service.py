"""The media worker process: registers its media address and capacity, heartbeats, and serves calls."""

from __future__ import annotations

import os
import socket

from prometheus_client import Gauge

from media_worker.realtime.client import ClientSettings
from media_worker.realtime.pool import SessionPool
from shared.messages import WorkerInfo
from shared.service import AsyncRole
from shared.version import VERSION

CAPACITY = Gauge("va_worker_capacity", "Calls this media worker accepts at once")


class MediaWorker(AsyncRole):
    role = "media-worker"

    def __init__(self, *args, audiosocket_port: int | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        settings = self.config.media_worker
        self.audiosocket_port = settings.audiosocket_port if audiosocket_port is None else audiosocket_port
        CAPACITY.set(settings.capacity)
        provider = self.config.providers.openai_realtime
        self.realtime = ClientSettings.from_config(provider)
        self.pool = SessionPool(self.realtime, settings.prewarm_sessions if provider.enabled else 0)

    async def serve(self) -> None:
        self.pool.start()
        try:
            await self.stopping.wait()
        finally:
            await self.pool.stop()

    def process_info(self) -> WorkerInfo:
        settings = self.config.media_worker
        return WorkerInfo(
            id=self.id, role=self.role, hostname=socket.gethostname(), pid=os.getpid(), version=VERSION,
            started_ms=self.started_ms, health_url=self.health_url, media_host=settings.advertise_host,
            audiosocket_port=self.audiosocket_port, rtp_port_min=settings.rtp_port_min,
            rtp_port_max=settings.rtp_port_max, capacity=settings.capacity,
        )
