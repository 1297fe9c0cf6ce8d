"""`GET /asterisk/modules/{name}`, which the controller asks at every (re)connect for AudioSocket and WebSocket
media: the simulator answers as the real Asterisk 22.10.1 does (recorded below; tests/realpbx/test_modules.py
asks a real one the same and compares)."""

from __future__ import annotations

from base64 import b64encode

import aiohttp

from sim.asterisk import AsteriskSim

NOT_FOUND = {"message": "Module could not be found in running modules"}
NO_INFO = {"message": "Module information could not be retrieved"}
# Asterisk 22.10.1 (Debian's package, scripts/real-asterisk), 2026-12-05. use_count varies and is not compared.
ANSWERS: dict[str, tuple[int, dict]] = {
    "chan_audiosocket.so": (
        200,
        {
            "name": "chan_audiosocket.so",
            "description": "AudioSocket Channel",
            "status": "Running",
            "support_level": "extended",
        },
    ),
    "chan_websocket.so": (
        200,
        {
            "name": "chan_websocket.so",
            "description": "Websocket Media Channel",
            "status": "Running",
            "support_level": "core",
        },
    ),
    # Found by the loader's own lookup (".so" optional, any case), but described only under its exact name.
    "chan_audiosocket": (409, NO_INFO),
    "CHAN_WEBSOCKET.SO": (409, NO_INFO),
    "chan_nosuch.so": (404, NOT_FOUND),
    "chan_nosuch": (404, NOT_FOUND),
}


def comparable(body):
    return {k: v for k, v in body.items() if k != "use_count"} if isinstance(body, dict) else body


async def test_the_simulator_answers_module_requests_as_asterisk_does():
    sim = AsteriskSim(users={"asterisk": "secret"})
    await sim.start("127.0.0.1", 0)
    try:
        async with aiohttp.ClientSession(
            headers={"Authorization": f"Basic {b64encode(b'asterisk:secret').decode()}"}
        ) as http:
            for name, (status, body) in ANSWERS.items():
                async with http.get(f"{sim.url}/ari/asterisk/modules/{name}") as response:
                    got = (response.status, comparable(await response.json()))
                assert got == (status, body), name
    finally:
        await sim.stop()
