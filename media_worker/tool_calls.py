"""The model's tool calls on one call: arguments checked, call-control sent to the controller, emails scheduled.

Every call gets a `function_call_output`, also when it fails: a clear error the model can tell the caller
about, never an exception and never silence. Call control (transfer, cancel_transfer, hangup, voicemail) is
the controller's (it alone talks ARI): a request goes to `va:controller:inbox` with an idempotent id and the
reply comes back in this worker's inbox. The emails are sent by the tool workers after the call, with the
whole transcript: the tools here only record what was asked for in the call record.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from shared.messages import ControlReply, ControlRequest, inbox_fields
from shared.metrics import TOOL_CALLS, TOOL_SECONDS
from shared.tool_schemas import HangupArgs, TranscriptArgs, TransferArgs, parse_arguments

if TYPE_CHECKING:
    from media_worker.session import CallSession
    from media_worker.realtime.protocol import FunctionCall

log = logging.getLogger("tools")

Result = tuple[dict[str, Any], bool, Callable[[], Awaitable[None]] | None]  # (output, respond, then)

REPLY_TIMEOUT_S = 10.0
FAREWELL_MAX_S = 30.0  # a farewell with audio plays out, up to this long


def _out(**fields: Any) -> dict[str, Any]:
    return fields


class ToolRunner:
    def __init__(self, session: "CallSession"):
        self.s = session
        self._replies: dict[str, asyncio.Queue[ControlReply]] = {}

    # --- the controller's replies (from the worker inbox) ----------------------------------------------
    def on_reply(self, reply: ControlReply) -> None:
        queue = self._replies.get(reply.request_id)
        if queue is not None:
            queue.put_nowait(reply)

    async def _request(self, action: str, tool_call_id: str, **fields: str) -> str:
        """Send a request to the controller; returns its id, whose replies `_reply` waits for."""
        s = self.s
        request = ControlRequest(
            request_id=f"{s.call_id}:{tool_call_id}:{action}",
            call_id=s.call_id,
            worker_id=s.ctx.worker_id,
            action=action,
            **fields,
        )
        self._replies[request.request_id] = asyncio.Queue()
        await s.ctx.redis.xadd(
            s.ctx.keys.controller_inbox, inbox_fields("control", request), maxlen=100_000, approximate=True
        )
        return request.request_id

    async def _reply(
        self, request_id: str, timeout: float = REPLY_TIMEOUT_S, *, last: bool = True
    ) -> ControlReply | None:
        """The next reply to a request (None on timeout); with `last`, the request is forgotten afterwards."""
        try:
            return await asyncio.wait_for(self._replies[request_id].get(), timeout)
        except asyncio.TimeoutError:
            return None
        finally:
            if last:
                self._replies.pop(request_id, None)

    # --- entry point -----------------------------------------------------------------------------------
    async def run(self, call: "FunctionCall") -> None:
        s = self.s
        started = time.monotonic()
        status = "ok"
        respond, after = True, None
        try:
            if call.name not in s.plan.tools:
                raise ValueError(f"the {call.name} tool is not available on this call")
            args = parse_arguments(call.name, call.arguments)
            handler = getattr(self, f"_{call.name}")
            result, respond, after = await handler(call, args)
            if not result.get("ok", True):
                status = "failed"
        except ValueError as exc:
            status = "invalid"
            result = _out(ok=False, error=str(exc))
            log.warning("tool %s refused: %s", call.name, exc)
        except Exception as exc:  # a bug or Redis down: the model still gets an answer
            status = "error"
            result = _out(ok=False, error=f"the {call.name} tool failed: {type(exc).__name__}")
            log.exception("tool %s failed", call.name)
        output = json.dumps(result)
        TOOL_CALLS.labels(call.name, status).inc()
        TOOL_SECONDS.labels(call.name, status).observe(time.monotonic() - started)
        s.log.tool(call.name, call.arguments, output, call.call_id)
        if s.client is not None:
            await s.client.function_output(call.call_id, output, respond=respond)
        if after is not None:
            asyncio.create_task(after(), name=f"tool-{call.name}")

    # --- call control ----------------------------------------------------------------------------------
    async def _transfer(self, call, args: TransferArgs) -> Result:
        destinations = self.s.ctx.config.tools.transfer.destinations
        if args.destination not in destinations:
            # Only configured destinations: a caller cannot talk the agent into dialling an arbitrary number.
            allowed = ", ".join(sorted(destinations)) or "none are configured"
            return (
                _out(ok=False, error=f"{args.destination!r} is not a transfer destination; use one of: {allowed}"),
                True,
                None,
            )
        request_id = await self._request("transfer", call.call_id, destination=args.destination)
        first = await self._reply(request_id, last=False)
        if first is None or first.final:
            self._replies.pop(request_id, None)
        if first is None:
            return _out(ok=False, error="the transfer did not start in time; stay with the caller"), True, None
        if first.final:
            return self._transfer_outcome(args.destination, first), first.status != "answered", None
        # Ringing: the caller hears hold music; the outcome comes later as a system message.
        return (
            _out(
                ok=True,
                status="ringing",
                message=f"Transferring to {args.destination}; the caller hears hold "
                "music. If they ask to stop waiting, call cancel_transfer.",
            ),
            False,
            lambda: self._await_transfer(args.destination, request_id),
        )

    async def _await_transfer(self, destination: str, request_id: str) -> None:
        ring_s = self.s.ctx.config.tools.transfer.ring_timeout_ms / 1000
        reply = await self._reply(request_id, ring_s + REPLY_TIMEOUT_S)
        if reply is None or reply.status == "answered":
            if reply is not None:
                self.s.end_reason = self.s.end_reason or "transferred"
            return
        note = {"busy": "the line was busy", "no_answer": "nobody answered", "cancelled": "it was cancelled"}.get(
            reply.status, reply.message or reply.status
        )
        await self.s.tell_model(
            f"The transfer to {destination} did not go through: {note}. Tell the caller and offer to help another way."
        )

    def _transfer_outcome(self, destination: str, reply: ControlReply) -> dict[str, Any]:
        if reply.status == "answered":
            self.s.end_reason = self.s.end_reason or "transferred"
            return _out(ok=True, status="answered", message=f"The caller is now connected to {destination}.")
        return _out(ok=False, status=reply.status, error=reply.message or f"the transfer was {reply.status}")

    async def _cancel_transfer(self, call, args) -> Result:
        reply = await self._reply(await self._request("cancel_transfer", call.call_id))
        if reply is None:
            return _out(ok=False, error="could not reach the call controller"), True, None
        if reply.ok:
            return (
                _out(ok=True, status="cancelled", message="The transfer was cancelled; you are back with the caller."),
                True,
                None,
            )
        return _out(ok=False, status=reply.status, error=reply.message or "there is no transfer to cancel"), True, None

    async def _hangup_call(self, call, args: HangupArgs) -> Result:
        farewell = args.farewell.strip() or self.s.ctx.config.tools.hangup_call.farewell_message
        return _out(ok=True, status="ending_call"), False, lambda: self._farewell_then_hangup(call.call_id, farewell)

    async def _farewell_then_hangup(self, tool_call_id: str, farewell: str) -> None:
        """Say the farewell (tool_choice none: no more tools), let its audio play out, then hang up. The
        guide's guard: if no farewell audio starts within `farewell_timeout_ms`, hang up anyway."""
        s = self.s
        guard = s.ctx.config.tools.hangup_call.farewell_timeout_ms / 1000
        played = await s.say_and_wait(
            f"Say exactly this farewell to the caller, and nothing else: {farewell}",
            start_timeout=guard,
            play_timeout=FAREWELL_MAX_S,
        )
        if not played:
            log.warning("the farewell had no audio within %.1f s: hanging up anyway", guard)
        await self._control("hangup", tool_call_id, reason="agent_hangup")

    async def _leave_voicemail(self, call, args) -> Result:
        return (
            _out(
                ok=True,
                status="connecting_to_voicemail",
                message="Tell the caller in one short sentence that you are connecting them to voicemail.",
            ),
            True,
            lambda: self._drain_then_voicemail(call.call_id),
        )

    async def _drain_then_voicemail(self, tool_call_id: str) -> None:
        s = self.s
        await s.wait_quiet(start_timeout=3.0, play_timeout=15.0)  # the announcement, then the hand-off
        await self._control("voicemail", tool_call_id)

    async def _control(self, action: str, tool_call_id: str, **fields: str) -> None:
        reply = await self._reply(await self._request(action, tool_call_id, **fields))
        if reply is None or not reply.ok:
            why = "no answer from the controller" if reply is None else (reply.message or reply.status)
            log.error("%s failed: %s", action, why)
            await self.s.tell_model(
                f"Ending the call did not work ({why}). Apologise and stay with the caller."
                if action == "hangup"
                else f"Voicemail is not available ({why}). Offer to take a message yourself."
            )

    # --- emails (sent after the call by the tool workers) ----------------------------------------------
    async def _send_email_summary(self, call, args) -> Result:
        s = self.s
        await s.ctx.redis.hset(s.ctx.keys.call(s.call_id), "summary_requested", "1")
        return (
            _out(
                ok=True,
                status="scheduled",
                message="A summary of this call will be emailed to the team right after the call.",
            ),
            True,
            None,
        )

    async def _request_transcript(self, call, args: TranscriptArgs) -> Result:
        from shared.email_address import parse_spoken_email, spell_back

        address = parse_spoken_email(args.email)
        if address is None:
            return (
                _out(
                    ok=False,
                    error=f"{args.email!r} is not an email address I can use; ask the caller to spell it slowly",
                ),
                True,
                None,
            )
        if not args.confirmed:
            return (
                _out(
                    ok=True,
                    status="confirm",
                    address=address,
                    spelled=spell_back(address),
                    message="Read the spelling back to the caller. If they confirm, call request_transcript "
                    "again with confirmed true.",
                ),
                True,
                None,
            )
        s = self.s
        key = s.ctx.keys.call(s.call_id)
        current = await s.ctx.redis.hget(key, "transcript_to") or ""
        addresses = [a for a in current.split(",") if a]
        if address not in addresses:
            addresses.append(address)
            await s.ctx.redis.hset(key, "transcript_to", ",".join(addresses))
        return (
            _out(
                ok=True,
                status="scheduled",
                address=address,
                message="The transcript will be emailed to that address right after the call.",
            ),
            True,
            None,
        )
