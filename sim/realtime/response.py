"""One model response: a task that streams a scripted reply in the GA event order.

Per item, the order is fixed:
  audio:         output_item.added → conversation.item.added → content_part.added → (transcript delta,
                 audio delta)* → output_audio.done → output_audio_transcript.done → content_part.done →
                 output_item.done → conversation.item.done
  text:          … content_part.added{text} → output_text.delta* → output_text.done → content_part.done …
  function call: output_item.added → conversation.item.added → function_call_arguments.delta* →
                 function_call_arguments.done{name} → output_item.done → conversation.item.done
and the response is framed by `response.created` … `response.done` (always sent, whatever the outcome),
with `rate_limits.updated` next to one of them. Audio goes out faster than real time (the emulator's
`speed`) in uneven chunks that never line up with 20 ms frames, and the transcript runs ahead of it.
Out-of-band responses (`conversation: "none"`) send no `conversation.item.*` events and add nothing.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import json
import logging
import re
from dataclasses import dataclass
from typing import Any

from sim.realtime.hosts import ResponseHost
from sim.realtime.script import Reply, ToolCall
from sim.realtime.voice import BYTES_PER_MS, default_ms


log = logging.getLogger("sim.realtime")

_TOKENS = re.compile(r"\s*(?:[\w']+|[^\w\s])|\s+$")
TRANSCRIPT_LEAD = 0.25  # share of the transcript sent ahead of the audio it describes
AUDIO_TOKENS_PER_S = 20  # rough audio token rate, for usage and max_output_tokens


def tokens(text: str) -> list[str]:
    """Word-like pieces (with their leading space) that concatenate back to `text`, like model deltas."""
    return _TOKENS.findall(text)


def text_tokens(text: str) -> int:
    return (len(text) + 3) // 4


class Cancelled(Exception):
    """The response was cancelled (turn_detected or client_cancelled) while streaming."""


@dataclass
class Part:
    kind: str  # "audio" | "text" | "call"
    text: str = ""
    ms: int = 0  # audio length
    pcm: bytes | None = None
    call: ToolCall | None = None
    keep: float = 1.0  # share kept when max_output_tokens cuts this part (the item is then incomplete)


class Response:
    def __init__(self, session: ResponseHost, params: dict[str, Any], reply: Reply, in_conversation: bool):
        self.s = session
        self.id = session.ids.new("resp")
        self.params = params
        self.reply = reply
        self.in_conversation = in_conversation
        cfg = session.config
        out = (params.get("audio") or {}).get("output") or {}
        # A response keeps the settings it started with: speed and voice changes apply from the next one.
        self.format = copy.deepcopy(out.get("format", cfg["audio"]["output"]["format"]))
        self.voice = copy.deepcopy(out.get("voice", cfg["audio"]["output"]["voice"]))
        self.speed = cfg["audio"]["output"].get("speed", 1.0) or 1.0
        self.modalities = params.get("output_modalities", cfg["output_modalities"])
        self.max_output_tokens = params.get("max_output_tokens", cfg["max_output_tokens"])
        self.instructions = params.get("instructions", cfg["instructions"])  # replaces the session's
        self.tools = params.get("tools", cfg["tools"])
        self.tool_choice = params.get("tool_choice", cfg["tool_choice"])
        self.metadata = params.get("metadata")
        self.output: list[dict[str, Any]] = []
        self.status = "in_progress"
        self.cancel_reason: str | None = None
        self.audio_ms = 0.0  # audio sent, all items
        self.task: asyncio.Task | None = None
        self.cut = False  # max_output_tokens (or a scripted "incomplete") cut the output
        self.record: dict[str, Any] = {
            "id": self.id,
            "status": self.status,
            "conversation": "auto" if in_conversation else "none",
            "instructions": self.instructions,
            "tools": [t.get("name") for t in self.tools],
            "tool_choice": self.tool_choice,
            "output_modalities": self.modalities,
            "max_output_tokens": self.max_output_tokens,
            "metadata": self.metadata,
            "voice": self.voice,
            "format": self.format,
            "input": params.get("input"),
        }
        self._waiter: asyncio.Future | None = None
        self._delay_pending = session.emu.first_audio_delay_ms > 0
        self._paced_ms = 0.0  # audio sent so far, all items: the pace's clock
        self._t0: float | None = None  # loop time of the first audio delta

    @property
    def bpm(self) -> int:
        return BYTES_PER_MS[self.format["type"]]

    @property
    def finished(self) -> bool:
        return self.status != "in_progress"

    def cancel(self, reason: str) -> None:
        if self.cancel_reason is None and not self.finished:
            self.cancel_reason = reason
            _wake(self._waiter)

    # --- the stream ------------------------------------------------------------------------------------
    async def begin(self) -> None:
        """`response.created`, sent before the server reads on, as the real one does; the rest streams from
        `run` in a task of its own."""
        s = self.s
        if self.reply.server_error:
            await s.send(
                "error",
                error={
                    "type": "server_error",
                    "code": None,
                    "param": None,
                    "event_id": None,
                    "message": s.server_error_message(),
                    **self.reply.server_error,
                },
            )
        await s.send("response.created", response=self._object())
        if s.emu.rate_limits["placement"] == "created":
            await s.send_rate_limits(self, 0)
        await s.flush_transcripts()

    async def run(self) -> None:
        try:
            if self.reply.status == "failed":
                await self._finish("failed")
                return
            parts = self._plan()
            await self._render(parts)
            for part in parts:
                self._check()
                if part.call is not None:  # kind "call"
                    await self._function_call(part.call)
                elif part.kind == "text":
                    await self._text_item(part)
                else:
                    await self._audio_item(part)
            self._check()
            await self._finish("incomplete" if self.cut else "completed")
        except Cancelled:
            await self._finish("cancelled")

    def _check(self) -> None:
        if self.cancel_reason is not None:
            raise Cancelled

    async def _pause(self, seconds: float) -> None:
        """Wait (pacing), wake at once on cancellation; a stalled session holds the stream too."""
        self._check()
        if seconds > 0:
            loop = asyncio.get_running_loop()
            self._waiter = loop.create_future()
            handle = loop.call_later(seconds, _wake, self._waiter)
            try:
                await self._waiter
            finally:
                handle.cancel()
                self._waiter = None
        else:
            await asyncio.sleep(0)  # let the reader see a cancel or a barge-in between chunks
        await self.s.wait_stall()
        self._check()

    async def _first_delta(self) -> None:
        if self._delay_pending:
            self._delay_pending = False
            await self._pause(self.s.emu.first_audio_delay_ms / 1000)

    # --- what to say -----------------------------------------------------------------------------------
    def _allowed_calls(self) -> list[ToolCall]:
        names = {t.get("name") for t in self.tools if t.get("type") == "function"}
        choice = self.tool_choice
        calls = []
        for call in self.reply.tool_calls:
            forced = isinstance(choice, dict) and choice.get("name") != call.name
            if call.name in names and choice != "none" and not forced:
                calls.append(call)
            else:
                log.warning(
                    "session %s: scripted call to %r not made: the response may not call it (tools %s, tool_choice %s)",
                    self.s.id,
                    call.name,
                    sorted(names),
                    choice,
                )
        return calls

    def _plan(self) -> list[Part]:
        reply = self.reply
        text = reply.text.replace("{output}", self.s.conversation.latest_output())
        calls = self._allowed_calls()
        if not calls and not text and reply.pcm is None:
            # A model that cannot call the tool it was scripted to call says something instead.
            text = reply.preamble or (self.s.emu.script.default.text if reply.tool_calls else "")
        uses = self.s.reply_uses.get(id(reply), 0)
        self.s.reply_uses[id(reply)] = uses + 1
        audio = "audio" in self.modalities and not (reply.text_only or uses < reply.text_only_times)
        kind = "audio" if audio else "text"
        parts: list[Part] = []
        if calls and reply.preamble:
            parts.append(Part(kind, reply.preamble, default_ms(reply.preamble, self.speed)))
        if text or reply.pcm is not None or not calls:
            parts += self._split(kind, text, reply)
        parts += [Part("call", call=call) for call in calls]
        self.cut = self._apply_token_cap(parts, audio)
        return [p for p in parts if p.keep > 0]

    def _split(self, kind: str, text: str, reply: Reply) -> list[Part]:
        """The reply's text (and length) shared across `items` assistant items."""
        if reply.pcm is not None:
            return [Part(kind, text, len(reply.pcm) // 48, reply.pcm)]
        words = text.split(" ")
        count = max(1, min(reply.items, len(words)))
        per = -(-len(words) // count)
        chunks = [" ".join(words[i : i + per]) for i in range(0, len(words), per)] or [""]
        parts = []
        for chunk in chunks:
            ms = reply.audio_ms // len(chunks) if reply.audio_ms is not None else default_ms(chunk, self.speed)
            parts.append(Part(kind, chunk, ms))
        return parts

    def _apply_token_cap(self, parts: list[Part], audio: bool) -> bool:
        """`max_output_tokens` (or a scripted "incomplete") cuts the output: the part where the budget runs
        out keeps its share (a call is all or nothing), later parts are dropped. True if anything was cut."""

        def cost(p: Part) -> int:
            if p.call is not None:  # kind "call"
                return text_tokens(_arguments(p.call))
            return text_tokens(p.text) + (int(p.ms * AUDIO_TOKENS_PER_S / 1000) if audio else 0)

        total = sum(cost(p) for p in parts)
        if self.reply.status == "incomplete":
            budget = total / 2
        elif self.max_output_tokens != "inf" and total > self.max_output_tokens:
            budget = self.max_output_tokens
        else:
            return False
        for p in parts:
            c = cost(p)
            if budget <= 0:
                p.keep = 0.0
            elif c > budget:
                p.keep = 0.0 if p.kind == "call" else max(0.05, budget / c)
            budget -= c
        return True

    async def _render(self, parts: list[Part]) -> None:
        for p in parts:
            if p.kind == "audio":
                if p.pcm is not None:
                    p.pcm = await self.s.emu.convert(p.pcm, self.format["type"])
                else:
                    voice = self.voice if isinstance(self.voice, str) else "marin"
                    p.pcm = await self.s.emu.speech(p.text, p.ms, self.format["type"], voice)
                if p.keep < 1:
                    size = int(len(p.pcm) * p.keep)
                    p.pcm = p.pcm[: size - size % (2 if self.format["type"] == "audio/pcm" else 1)]
            if p.keep < 1:
                p.text = p.text[: int(len(p.text) * p.keep)]

    # --- items -----------------------------------------------------------------------------------------
    def _open(self, item: dict[str, Any]) -> tuple[int, str | None]:
        index = len(self.output)
        self.output.append(item)
        previous = self.s.conversation.add(item) if self.in_conversation else None
        return index, previous

    async def _added(self, index: int, item: dict[str, Any], previous: str | None) -> None:
        await self.s.send(
            "response.output_item.added", response_id=self.id, output_index=index, item=copy.deepcopy(item)
        )
        if self.in_conversation:
            await self.s.send("conversation.item.added", previous_item_id=previous, item=copy.deepcopy(item))

    async def _done(self, index: int, item: dict[str, Any], previous: str | None) -> None:
        await self.s.send(
            "response.output_item.done", response_id=self.id, output_index=index, item=copy.deepcopy(item)
        )
        if self.in_conversation:
            await self.s.send("conversation.item.done", previous_item_id=previous, item=copy.deepcopy(item))

    def _message(self) -> dict[str, Any]:
        return {
            "id": self.s.ids.new("item"),
            "object": "realtime.item",
            "type": "message",
            "status": "in_progress",
            "role": "assistant",
            "content": [],
        }

    async def _audio_item(self, part: Part) -> None:
        s = self.s
        item = self._message()
        item_id = item["id"]
        index, previous = self._open(item)
        await self._added(index, item, previous)
        where = {"response_id": self.id, "item_id": item_id, "output_index": index, "content_index": 0}
        await s.send("response.content_part.added", **where, part={"type": "audio", "transcript": ""})
        content = {"type": "output_audio", "transcript": ""}
        item["content"] = [content]  # from now on the item is an audio message: it can be truncated
        audio, text = part.pcm or b"", part.text
        pieces, said, sent_text = tokens(text), 0, ""
        stored = bytearray()
        if self.in_conversation:
            s.conversation.audio[item_id] = stored
            s.conversation.audio_format[item_id] = self.format["type"]
        emitted = 0
        cancelled = False
        try:
            await self._first_delta()
            while emitted < len(audio):
                size = self._chunk_size()
                # The transcript runs ahead of the audio it describes.
                want = min(len(text), int(len(text) * ((emitted + size) / len(audio) + TRANSCRIPT_LEAD)))
                ahead = ""
                while said < len(pieces) and len(sent_text) + len(ahead) < want:
                    ahead += pieces[said]
                    said += 1
                if ahead:
                    sent_text += ahead
                    await s.send("response.output_audio_transcript.delta", **where, delta=ahead)
                chunk = audio[emitted : emitted + size]
                await s.send("response.output_audio.delta", **where, delta=base64.b64encode(chunk).decode())
                s.audio_present = True  # the voice is locked from the first audio on
                emitted += len(chunk)
                ms = len(chunk) / self.bpm
                self.audio_ms += ms
                s.conversation.emitted_ms[item_id] = emitted / self.bpm
                if self.in_conversation and item_id not in s.conversation.truncated:
                    stored += chunk  # a truncated item stays as cut, even if its stream goes on
                    s.conversation.audio_ms[item_id] = emitted / self.bpm
                await self._pace(ms)
        except Cancelled:
            cancelled = True
        if not cancelled and len(sent_text) < len(text):
            await s.send("response.output_audio_transcript.delta", **where, delta=text[len(sent_text) :])
            sent_text = text
        await s.send("response.output_audio.done", **where)
        await s.send("response.output_audio_transcript.done", **where, transcript=sent_text)
        await s.send("response.content_part.done", **where, part={"type": "audio", "transcript": sent_text})
        item["status"] = "incomplete" if cancelled or part.keep < 1 else "completed"
        # A truncation while streaming dropped the transcript for good.
        content["transcript"] = "" if item_id in s.conversation.truncated else sent_text
        await self._done(index, item, previous)
        if cancelled:
            raise Cancelled

    def _chunk_size(self) -> int:
        """Uneven chunks, 27–133 ms, never a whole number of 20 ms frames; pcm16 byte counts stay even."""
        ms = self.s.rng.uniform(27.0, 133.0)
        if self.format["type"] == "audio/pcm":
            size = int(ms * 48) // 2 * 2
            return size + 2 if size % 960 == 0 else size
        size = int(ms * 8)
        return size + 1 if size % 160 == 0 else size

    async def _pace(self, ms: float) -> None:
        """Hold the stream to `speed` × real time (0: burst), measured from the first audio delta, with
        optional jitter; deadlines do not drift, so jitter does not slow the average pace."""
        loop = asyncio.get_running_loop()
        if self._t0 is None:
            self._t0 = loop.time()
        self._paced_ms += ms
        speed = self.s.emu.speed
        if speed <= 0:
            await self._pause(0)
            return
        deadline = self._t0 + self._paced_ms / 1000 / speed
        if self.s.emu.jitter_ms:
            deadline += self.s.rng.uniform(0, self.s.emu.jitter_ms) / 1000
        await self._pause(deadline - loop.time())

    async def _text_item(self, part: Part) -> None:
        s = self.s
        item = self._message()
        index, previous = self._open(item)
        await self._added(index, item, previous)
        where = {"response_id": self.id, "item_id": item["id"], "output_index": index, "content_index": 0}
        await s.send("response.content_part.added", **where, part={"type": "text", "text": ""})
        sent = ""
        cancelled = False
        try:
            await self._first_delta()
            for piece in tokens(part.text):
                await s.send("response.output_text.delta", **where, delta=piece)
                sent += piece
                await self._pause(0)
        except Cancelled:
            cancelled = True
        await s.send("response.output_text.done", **where, text=sent)
        await s.send("response.content_part.done", **where, part={"type": "text", "text": sent})
        item["status"] = "incomplete" if cancelled or part.keep < 1 else "completed"
        item["content"] = [{"type": "output_text", "text": sent}]
        await self._done(index, item, previous)
        if cancelled:
            raise Cancelled

    async def _function_call(self, call: ToolCall) -> None:
        """Once started, a call is finished: a client never sees half a call (nor does the real server send one)."""
        s = self.s
        args = _arguments(call)
        item = {
            "id": s.ids.new("item"),
            "object": "realtime.item",
            "type": "function_call",
            "status": "in_progress",
            "call_id": s.ids.new("call"),
            "name": call.name,
            "arguments": "",
        }
        index, previous = self._open(item)
        await self._added(index, item, previous)
        where = {"response_id": self.id, "item_id": item["id"], "output_index": index, "call_id": item["call_id"]}
        await self._first_delta()
        cut = 0
        while cut < len(args):
            step = s.rng.randint(2, 17)  # arbitrary splits, as the model's tokens fall
            await s.send("response.function_call_arguments.delta", **where, delta=args[cut : cut + step])
            cut += step
            await asyncio.sleep(0)
        await s.send("response.function_call_arguments.done", **where, name=call.name, arguments=args)
        item["status"] = "completed"
        item["arguments"] = args
        await self._done(index, item, previous)

    # --- the end ---------------------------------------------------------------------------------------
    async def _finish(self, status: str) -> None:
        self.status = status
        self.record["status"] = status
        # No longer active before response.done leaves, so a response.create sent on it is accepted.
        self.s.response_finished(self)
        usage = self._usage()
        await self.s.send("response.done", response=self._object(usage))
        if self.s.emu.rate_limits["placement"] == "done":
            await self.s.send_rate_limits(self, usage["total_tokens"])
        self.s.response_done(self)

    def _object(self, usage: dict | None = None) -> dict[str, Any]:
        details: dict[str, Any] | None = None
        if self.status == "cancelled":
            details = {"type": "cancelled", "reason": self.cancel_reason}
        elif self.status == "incomplete":
            details = {"type": "incomplete", "reason": "max_output_tokens"}
        elif self.status == "failed":
            details = {
                "type": "failed",
                "error": self.reply.error
                or {"type": "server_error", "code": "server_error", "message": self.s.server_error_message()},
            }
        return {
            "object": "realtime.response",
            "id": self.id,
            "status": self.status,
            "status_details": details,
            "output": copy.deepcopy(self.output),
            "conversation_id": self.s.conversation_id if self.in_conversation else None,
            "output_modalities": list(self.modalities),
            "max_output_tokens": self.max_output_tokens,
            "audio": {"output": {"format": copy.deepcopy(self.format), "voice": copy.deepcopy(self.voice)}},
            "usage": usage,
            "metadata": copy.deepcopy(self.metadata),
        }

    def _usage(self) -> dict[str, Any]:
        conv = self.s.conversation
        text_in = text_tokens(self.instructions) + sum(text_tokens(json.dumps(t)) for t in self.tools)
        audio_in = 0
        mine = {o["id"] for o in self.output}
        for item in conv.items:
            if item["id"] in mine:
                continue
            if item["id"] in conv.audio and item.get("role") == "user":
                audio_in += int(conv.audio_ms.get(item["id"], 0) * 10 / 1000)
            for part in item.get("content", []):
                text_in += text_tokens(part.get("text") or part.get("transcript") or "")
            text_in += text_tokens(str(item.get("arguments", "")) + str(item.get("output", "")))
        cached = min(self.s.cached_tokens, text_in) // 64 * 64
        self.s.cached_tokens = text_in + audio_in  # the next response can reuse this prefix
        text_out = sum(
            text_tokens(p.get("transcript") or p.get("text") or "") for o in self.output for p in o.get("content", [])
        )
        text_out += sum(text_tokens(o.get("arguments", "")) for o in self.output)
        audio_out = int(self.audio_ms * AUDIO_TOKENS_PER_S / 1000)
        return {
            "total_tokens": text_in + audio_in + text_out + audio_out,
            "input_tokens": text_in + audio_in,
            "output_tokens": text_out + audio_out,
            "input_token_details": {
                "text_tokens": text_in,
                "audio_tokens": audio_in,
                "image_tokens": 0,
                "cached_tokens": cached,
                "cached_tokens_details": {"text_tokens": cached, "audio_tokens": 0, "image_tokens": 0},
            },
            "output_token_details": {"text_tokens": text_out, "audio_tokens": audio_out},
        }


def _arguments(call: ToolCall) -> str:
    return call.arguments if isinstance(call.arguments, str) else json.dumps(call.arguments)


def _wake(waiter: asyncio.Future | None) -> None:
    if waiter is not None and not waiter.done():
        waiter.set_result(None)
