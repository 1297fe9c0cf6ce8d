"""One ARI-controlled, cancellable transfer: MOH on the caller, a new leg created into our
Stasis app and rung toward the destination, then either the leg joins the caller's bridge (the AI leaves) or
it is hung up and the caller is back with the AI. The leg's outcome is a `TransferLeg`
(`controller/transfer_leg.py`), which the call's events settle.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections.abc import Awaitable, Callable
from functools import partial

from controller.ari.errors import AriError, quietly
from controller.call import Call
from controller.stasis_legs import NotInStasis
from controller.transfer_leg import TransferLeg

log = logging.getLogger("transfer")

# Our own timer runs this much past Asterisk's dial timeout: its NOANSWER should normally come first.
GRACE_S = 2.0


def local_endpoint(target: str, context: str) -> str:
    """Always a Local channel to a configured target in a configured context: what the model says is never
    dialled (a model's "PJSIP/200" would reach any extension)."""
    return f"Local/{target}@{context}"


async def run_transfer(call: Call, leg: TransferLeg, on_ringing: Callable[[], Awaitable[None]]) -> tuple[str, str]:
    """(status, message): answered | busy | no_answer | cancelled | failed. Returns once the leg is either in the
    caller's bridge or gone, and MOH is off."""
    try:
        status, message = await _ring(call, leg, on_ringing)
        if status == "answered":
            try:
                await _connect(call, leg)
                return status, f"connected to {leg.endpoint}"
            except AriError as exc:
                log.warning("answered transfer leg %s could not be bridged: %s", leg.leg, exc)
                status, message = "failed", f"the answered leg could not be bridged: {exc}"
        await _clean_up(call, leg)
        return status, message
    finally:
        leg.finished.set()


async def _ring(call: Call, leg: TransferLeg, on_ringing: Callable[[], Awaitable[None]]) -> tuple[str, str]:
    """Hold music for the caller, the leg created and dialled; then its outcome, or no_answer once our own timer
    runs out."""
    d = call.deps
    rest = d.rest
    try:
        await rest.start_moh(call.caller.id, d.config.controller.moh_class or None)
        if leg.pending:
            # `originator` (not `formats`: they are exclusive) ties the leg's codecs to the caller's.
            await rest.create_channel(
                endpoint=leg.endpoint,
                app=d.app,
                channel_id=leg.leg,
                app_args=f"transfer,{call.call_id}",
                originator=call.caller.id,
            )
            call.extra_legs.add(leg.leg)
        if leg.pending:
            # The created leg enters Stasis after the REST answer: dial waits for its StasisStart.
            dial = partial(rest.dial, leg.leg, timeout=max(1, math.ceil(leg.timeout_s)))
            await call.legs.run(leg.leg, dial, d.config.controller.ari_timeout_ms / 1000)
            await on_ringing()
        try:
            async with asyncio.timeout(leg.timeout_s + GRACE_S):
                return await asyncio.shield(leg.outcome)
        except TimeoutError:
            status, message = "no_answer", f"no answer within {leg.timeout_s:g} s"
    except (AriError, NotInStasis) as exc:
        log.warning("transfer to %s failed: %s", leg.endpoint, exc)
        status, message = "failed", str(exc)
    leg.settle(status, message)
    return status, message


async def _connect(call: Call, leg: TransferLeg) -> None:
    """The agent joins the caller's bridge first (if that fails the AI is still there), then the AI's media leg
    leaves and the hold music stops."""
    rest = call.deps.rest
    # From here the media leg's StasisEnd is expected (not "media lost"), and the agent leg's means the agent
    # hung up (it may do so while addChannel is in flight).
    call.state, call.end_hint, call.agent_leg = "transferred", "transferred", leg.leg
    try:
        await rest.add_channel(call.bridge, leg.leg)
    except AriError:
        if call.state == "transferred":
            call.state, call.end_hint, call.agent_leg = "active", "", ""
        raise
    if call.media:
        await _quietly(rest.remove_channel(call.bridge, call.media))
    await asyncio.gather(_quietly(rest.stop_moh(call.caller.id)), call.drop_media())
    await call.deps.fence.hset(call.deps.keys.call(call.call_id), {"state": "transferred", "transfer_channel": leg.leg})
    # The AI is off the call: its worker slot and provider session are free for the next caller now.
    await call.deps.admission.release_worker(call.call_id, call.provider, "transferred")
    log.info("call %s transferred to %s", call.caller.id, leg.endpoint)


async def _clean_up(call: Call, leg: TransferLeg) -> None:
    rest = call.deps.rest
    if leg.leg in call.extra_legs:
        await _quietly(rest.hangup(leg.leg))
        call.extra_legs.discard(leg.leg)
    if not call.caller_gone.is_set():
        await _quietly(rest.stop_moh(call.caller.id))


# A transfer leg may be gone, out of Stasis, or already out of (400/422) the bridge.
_quietly = partial(quietly, what="transfer cleanup step", expected=(400, 404, 409, 422))
