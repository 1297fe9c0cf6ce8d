"""The model's tool calls on one call: arguments checked, call-control sent to the controller, emails scheduled.

Every call gets a `function_call_output`, also when it fails: a clear error the model can tell the caller
about, never an exception and never silence. Call control (transfer, cancel_transfer, hangup, voicemail) is
the controller's (it alone talks ARI): a request goes to `va:controller:inbox` with an idempotent id and the
reply comes back in this worker's inbox. The emails are sent by the tool workers after the call, with the
whole transcript: the tools here only record what was asked for in the call record.

The runner returns each result to the call session (`ToolOutcome`), which sends it when the conversation
allows; what a tool does afterwards (the farewell, waiting on a ringing transfer) goes through `ToolHost`,
the few things the runner needs from the call.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, Protocol

from redis.typing import EncodableT, FieldT

from media_worker.call_log import CallLog
from media_worker.call_state import ToolCalled
from media_worker.context import WorkerContext
from media_worker.transcript_requests import FULL, NO_CALL, TranscriptRequests, Verdict, store_address
from shared.email_address import parse_spoken_email, spell_back
from shared.messages import TIME_LIMIT, CallPlan, ControlReply, ControlRequest, inbox_fields
from shared.metrics import TOOL_CALLS, TOOL_SECONDS
from shared.tool_schemas import HangupArgs, TranscriptArgs, TransferArgs, parse_arguments

log = logging.getLogger("tools")

REPLY_TIMEOUT_S = 10.0
FAREWELL_MAX_S = 30.0  # a farewell with audio plays out, up to this long
ANNOUNCEMENT_MAX_S = 15.0  # the voicemail announcement plays out, up to this long, before the hand-off

FollowUp = Callable[[], Coroutine[Any, Any, None]]


@dataclass
class ToolOutcome:
    output: str  # JSON for the function_call_output
    respond: bool  # the model should speak about it
    then: FollowUp | None = None  # what the tool does once its output is in (the farewell, a ringing transfer)


@dataclass
class FarewellSignals:
    started: asyncio.Event = field(default_factory=asyncio.Event)  # its audio began
    played: asyncio.Event = field(default_factory=asyncio.Event)  # its audio is over (or the caller cut it)


class ToolHost(Protocol):
    """What the tools need from the call they run in (the call session)."""

    def set_end_reason(self, reason: str) -> None: ...

    def begin_farewell(self, instructions: str) -> FarewellSignals: ...

    def cancel_farewell(self) -> None: ...

    def tell_model(self, text: str) -> None:
        """News from outside the conversation: the model is told and speaks about it when it can."""
        ...

    async def agent_finished(self) -> None:
        """Return once nothing the agent says is being generated, waiting, or playing."""
        ...

    def caller_turns(self) -> int:
        """How many turns the caller has taken so far (input committed): a read-back is answered only after."""
        ...


Result = tuple[dict[str, Any], bool, FollowUp | None]  # (output, respond, then)


def _out(**fields: Any) -> dict[str, Any]:
    return fields


class ToolRunner:
    def __init__(self, ctx: WorkerContext, plan: CallPlan, call_log: CallLog, host: ToolHost):
        self.ctx = ctx
        self.plan = plan
        self.call_id = plan.call_id
        self.call_log = call_log
        self.host = host
        self._replies: dict[str, asyncio.Queue[ControlReply]] = {}
        self._hangup_by: str | None = None  # the tool call whose farewell and hang-up are under way
        limits = ctx.config.tools.request_transcript
        self.transcripts = TranscriptRequests(limits.max_addresses, limits.max_calls_per_minute)

    # --- the controller's replies (from the worker inbox) ----------------------------------------------
    def on_reply(self, reply: ControlReply) -> None:
        queue = self._replies.get(reply.request_id)
        if queue is not None:
            queue.put_nowait(reply)

    async def _request(self, action: str, tool_call_id: str, **fields: str) -> str:
        """Send a request to the controller; returns its id, whose replies `_reply` waits for."""
        request = ControlRequest(
            request_id=f"{self.call_id}:{tool_call_id}:{action}",
            call_id=self.call_id,
            worker_id=self.ctx.worker_id,
            action=action,
            **fields,
        )
        self._replies[request.request_id] = asyncio.Queue()
        entry: dict[FieldT, EncodableT] = {key: value for key, value in inbox_fields("control", request).items()}
        await self.ctx.redis.xadd(self.ctx.keys.controller_inbox, entry, maxlen=100_000, approximate=True)
        return request.request_id

    async def _reply(
        self, request_id: str, timeout: float = REPLY_TIMEOUT_S, *, last: bool = True
    ) -> ControlReply | None:
        """The next reply to a request (None on timeout); with `last`, the request is forgotten afterwards."""
        try:
            async with asyncio.timeout(timeout):
                return await self._replies[request_id].get()
        except TimeoutError:
            return None
        finally:
            if last:
                self._replies.pop(request_id, None)

    # --- entry point -----------------------------------------------------------------------------------
    async def run(self, call: ToolCalled) -> ToolOutcome:
        """Run one tool call to its result; never raises (a failure is a result the model can talk about)."""
        started = time.monotonic()
        status = "ok"
        respond, then = True, None
        try:
            if call.name not in self.plan.tools:
                raise ValueError(f"the {call.name} tool is not available on this call")
            args = parse_arguments(call.name, call.arguments)
            handler = getattr(self, f"_{call.name}")
            result, respond, then = await handler(call, args)
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
        self.call_log.tool(call.name, call.arguments, output, call.call_id)
        return ToolOutcome(output, respond, then)

    # --- call control ----------------------------------------------------------------------------------
    async def _transfer(self, call: ToolCalled, args: TransferArgs) -> Result:
        destinations = self.ctx.config.tools.transfer.destinations
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
        ring_s = self.ctx.config.tools.transfer.ring_timeout_ms / 1000
        reply = await self._reply(request_id, ring_s + REPLY_TIMEOUT_S)
        if reply is None or reply.status == "answered":
            if reply is not None:
                self.host.set_end_reason("transferred")
            return
        note = {"busy": "the line was busy", "no_answer": "nobody answered", "cancelled": "it was cancelled"}.get(
            reply.status, reply.message or reply.status
        )
        self.host.tell_model(
            f"The transfer to {destination} did not go through: {note}. Tell the caller and offer to help another way."
        )

    def _transfer_outcome(self, destination: str, reply: ControlReply) -> dict[str, Any]:
        if reply.status == "answered":
            self.host.set_end_reason("transferred")
            return _out(ok=True, status="answered", message=f"The caller is now connected to {destination}.")
        return _out(ok=False, status=reply.status, error=reply.message or f"the transfer was {reply.status}")

    async def _cancel_transfer(self, call: ToolCalled, args: object) -> Result:
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

    async def _hangup_call(self, call: ToolCalled, args: HangupArgs) -> Result:
        if self._hangup_by is not None:  # asked twice (two calls in one response): one farewell, one hang-up
            return _out(ok=True, status="ending_call"), False, None
        self._hangup_by = call.call_id
        farewell = args.farewell.strip() or self.ctx.config.tools.hangup_call.farewell_message
        return _out(ok=True, status="ending_call"), False, lambda: self._farewell_then_hangup(call.call_id, farewell)

    def end_at_time_limit(self, farewell: str) -> Coroutine[Any, Any, None] | None:
        """`limits.max_call_duration_s` reached: the hangup tool's farewell and hang-up, with the end reason
        `time_limit` (the summary mail says so). None if a hang-up is already under way."""
        if self._hangup_by is not None:
            return None
        self._hangup_by = TIME_LIMIT
        return self._farewell_then_hangup(TIME_LIMIT, farewell, reason=TIME_LIMIT)

    async def _farewell_then_hangup(self, tool_call_id: str, farewell: str, reason: str = "agent_hangup") -> None:
        """Say the farewell (tool_choice none: no more tools), let its audio play out, then hang up. The
        guide's guard: if no farewell audio starts within `farewell_timeout_ms`, hang up anyway. It starts
        once the tool's output is in, so the farewell is the model's answer to it."""
        guard = self.ctx.config.tools.hangup_call.farewell_timeout_ms / 1000
        signals = self.host.begin_farewell(f"Say exactly this farewell to the caller, and nothing else: {farewell}")
        try:
            async with asyncio.timeout(guard):
                await signals.started.wait()
        except TimeoutError:
            log.warning("the farewell had no audio within %.1f s: hanging up anyway", guard)
        else:
            try:
                async with asyncio.timeout(FAREWELL_MAX_S):
                    await signals.played.wait()
            except TimeoutError:
                log.warning("the farewell was still playing after %.0f s", FAREWELL_MAX_S)
        await self._control("hangup", tool_call_id, reason=reason)

    async def _leave_voicemail(self, call: ToolCalled, args: object) -> Result:
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
        try:
            async with asyncio.timeout(ANNOUNCEMENT_MAX_S):
                await self.host.agent_finished()  # the announcement, then the hand-off
        except TimeoutError:
            log.warning("the voicemail announcement was still under way after %.0f s", ANNOUNCEMENT_MAX_S)
        await self._control("voicemail", tool_call_id)

    async def _control(self, action: str, tool_call_id: str, **fields: str) -> None:
        reply = await self._reply(await self._request(action, tool_call_id, **fields))
        if reply is None or not reply.ok:
            why = "no answer from the controller" if reply is None else (reply.message or reply.status)
            log.error("%s failed: %s", action, why)
            if action == "hangup":
                self._hangup_by = None
                self.host.cancel_farewell()  # the call goes on: the model may speak again
            self.host.tell_model(
                f"Ending the call did not work ({why}). Apologise and stay with the caller."
                if action == "hangup"
                else f"Voicemail is not available ({why}). Offer to take a message yourself."
            )

    # --- emails (sent after the call by the tool workers) ----------------------------------------------
    async def _send_email_summary(self, call: ToolCalled, args: object) -> Result:
        await self.ctx.redis.hset(self.ctx.keys.call(self.call_id), "summary_requested", "1")
        return (
            _out(
                ok=True,
                status="scheduled",
                message="A summary of this call will be emailed to the team right after the call.",
            ),
            True,
            None,
        )

    async def _request_transcript(self, call: ToolCalled, args: TranscriptArgs) -> Result:
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
        requests = self.transcripts
        verdict = requests.decide(address, args.confirmed, self.host.caller_turns(), time.monotonic())
        if verdict is Verdict.TOO_OFTEN:
            return (
                _out(
                    ok=False,
                    error=f"request_transcript was called more than {requests.max_calls_per_minute} times in a "
                    "minute; stop calling it and talk with the caller",
                ),
                True,
                None,
            )
        if verdict is Verdict.FULL:
            return self._transcripts_full(requests.stored), True, None
        if verdict is Verdict.AWAITING_CALLER:
            return (
                _out(
                    ok=False,
                    status="awaiting_caller",
                    address=address,
                    error="Not scheduled: the caller has not answered the read-back yet. Ask them whether the "
                    "spelling is right and wait for their answer before calling again with confirmed true.",
                ),
                True,
                None,
            )
        if verdict is not Verdict.STORE:  # READ_BACK, or UNCONFIRMED: confirmed before any read-back
            first = "" if verdict is Verdict.READ_BACK else "Not scheduled yet: this address was not read back. "
            return (
                _out(
                    ok=True,
                    status="confirm",
                    address=address,
                    spelled=spell_back(address),
                    message=f"{first}Read the spelling back to the caller and ask whether it is right. Only "
                    "after the caller says yes, call request_transcript again with this address and "
                    "confirmed true.",
                ),
                True,
                None,
            )
        outcome, requests.stored = await store_address(
            self.ctx.redis, self.ctx.keys.call(self.call_id), address, requests.max_addresses
        )
        if outcome == FULL:
            return self._transcripts_full(requests.stored), True, None
        if outcome == NO_CALL:
            return _out(ok=False, error="the call record is gone; the transcript cannot be sent"), True, None
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

    def _transcripts_full(self, stored: list[str]) -> dict[str, Any]:
        return _out(
            ok=False,
            status="limit_reached",
            scheduled=stored,
            error=f"No more addresses: a call's transcript goes to at most {self.transcripts.max_addresses} "
            f"address(es), and it is scheduled for {', '.join(stored)}. Tell the caller you cannot add another.",
        )
