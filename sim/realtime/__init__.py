"""A local emulator of the OpenAI Realtime API (GA protocol), for tests, the demo and load tests.

It shares no code with the product's Realtime client: the two sides meet only on the wire.

    from sim.realtime import Emulator, Script, Reply, ToolCall

The server side (numpy, websockets) is imported on first use, so `voice-agent --help` stays quick.
"""

from typing import TYPE_CHECKING

from sim.realtime.script import Reply, Script, ToolCall

if TYPE_CHECKING:
    from sim.realtime.server import Emulator
    from sim.realtime.session import EmulatedSession

__all__ = ["EmulatedSession", "Emulator", "Reply", "Script", "ToolCall"]


def __getattr__(name: str):
    if name == "Emulator":
        from sim.realtime.server import Emulator

        return Emulator
    if name == "EmulatedSession":
        from sim.realtime.session import EmulatedSession

        return EmulatedSession
    raise AttributeError(f"module 'sim.realtime' has no attribute {name!r}")
