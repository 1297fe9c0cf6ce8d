"""The controller process: registers itself and (from the ARI layer on) owns the Stasis app."""

from __future__ import annotations

import os
import socket

from shared.messages import ProcessInfo
from shared.service import AsyncRole
from shared.version import VERSION


class Controller(AsyncRole):
    role = "controller"

    def process_info(self) -> ProcessInfo:
        return ProcessInfo(id=self.id, role=self.role, hostname=socket.gethostname(), pid=os.getpid(),
                           version=VERSION, started_ms=self.started_ms, health_url=self.health_url)
