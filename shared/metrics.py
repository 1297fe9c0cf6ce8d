"""Prometheus metrics shared by every role; role-specific ones live beside the role's code."""

from __future__ import annotations

from prometheus_client import Gauge, Info

BUILD = Info("va_build", "Version and role of this process")
REDIS_UP = Gauge("va_redis_connected", "1 while this process reaches Redis")
REGISTERED = Gauge("va_registered", "1 while this process is registered in Redis")
