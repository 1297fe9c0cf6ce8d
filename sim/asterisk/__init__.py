"""A simulated Asterisk 22.10.1 (ARI REST + events WebSocket, dialplan, callers, AudioSocket/RTP media legs)
that an ARI client cannot tell from the real one for the operations the product uses, quirks included.

It shares no code with the product's ARI client or media worker: the two sides meet only on the wire.

    from sim.asterisk import AsteriskSim, CallerAudio
    sim = AsteriskSim(users={"asterisk": "secret"})
    await sim.start("127.0.0.1", 0)          # ARI at sim.url + "/ari", control API at sim.url + "/sim"
    call = await sim.place_call(context="from-ai-agent-openai", exten="s", audio=CallerAudio.tone(440, 1000))

Run as a process: `voice-agent sim asterisk --port 0` (first stdout line `listening on URL`); its control API
(POST /sim/calls ...) is described in sim/asterisk/control.py.

The server side (aiohttp, numpy) is imported on first use, so `voice-agent --help` stays quick.
"""

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sim.asterisk.audio import CallerAudio, Recorder
    from sim.asterisk.dialplan import DEFAULT_DIALPLAN, Dialplan
    from sim.asterisk.core import SimCall
    from sim.asterisk.server import AsteriskSim

__all__ = ["DEFAULT_DIALPLAN", "AsteriskSim", "CallerAudio", "Dialplan", "Recorder", "SimCall"]

_LAZY = {
    "AsteriskSim": "sim.asterisk.server",
    "SimCall": "sim.asterisk.core",
    "CallerAudio": "sim.asterisk.audio",
    "Recorder": "sim.asterisk.audio",
    "Dialplan": "sim.asterisk.dialplan",
    "DEFAULT_DIALPLAN": "sim.asterisk.dialplan",
}


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'sim.asterisk' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
