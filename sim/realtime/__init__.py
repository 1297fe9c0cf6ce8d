"""A local emulator of the OpenAI Realtime API (GA protocol), for tests, the demo and load tests.

It shares no code with the product's Realtime client: both sides meet only on the wire.
"""

from sim.realtime.script import Reply, Script, ToolCall
from sim.realtime.server import Emulator
from sim.realtime.session import EmulatedSession

__all__ = ["EmulatedSession", "Emulator", "Reply", "Script", "ToolCall"]
