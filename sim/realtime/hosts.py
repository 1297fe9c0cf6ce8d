"""What a response needs of its session, and a session of its emulator, as Protocols: the three modules then
depend on these views instead of on each other (server → session → response, never back)."""

from __future__ import annotations

import random
from collections.abc import Callable
from typing import Any, Protocol

from sim.realtime.conversation import Conversation
from sim.realtime.ids import Ids
from sim.realtime.script import Script
from sim.realtime.wirelog import WireLog


class EmulatorHost(Protocol):
    """The emulator's settings and shared services, as its sessions and their responses use them."""

    script: Script
    seed: int
    speed: float
    first_audio_delay_ms: int
    session_created_delay_ms: int
    max_session_s: float
    truncate_shortfall_ms: float
    error_delay_ms: int
    auto_respond_after_tool_output: bool
    clock: Callable[[], float]
    jitter_ms: float
    rate_limits: dict[str, Any]
    record: bool
    wire: WireLog

    async def speech(self, text: str, ms: int, fmt: str, voice_name: str) -> bytes: ...

    async def convert(self, pcm: bytes, fmt: str) -> bytes: ...


class ResponseHost(Protocol):
    """The session a response streams into. `response` arguments are the calling Response (typed Any here so
    that this view does not import the response module that uses it)."""

    emu: EmulatorHost
    id: str
    ids: Ids
    rng: random.Random
    config: dict[str, Any]
    conversation: Conversation
    conversation_id: str
    cached_tokens: int
    reply_uses: dict[int, int]
    audio_present: bool

    async def send(self, kind: str, **fields: Any) -> None: ...

    async def send_rate_limits(self, response: Any, tokens_used: int) -> None: ...

    async def wait_stall(self) -> None: ...

    async def flush_transcripts(self) -> None: ...

    def server_error_message(self) -> str: ...

    def response_finished(self, response: Any) -> None: ...

    def response_done(self, response: Any) -> None: ...
