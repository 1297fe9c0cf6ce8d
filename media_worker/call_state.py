"""A call's turn-taking rules as a state machine without I/O: events in, actions out.

Like `realtime.protocol` (and h11), it does no I/O, owns no task and reads no clock: the call session
(`session.py`) feeds it the edges of the call (a response created or done, the first audio of an item, an
item played out, the caller starting to speak, a tool's result, the hang-up) and executes the actions it
returns, in order. Audio frames never come here: the session's audio path reads `stage` to know whether the
caller is heard, so the per-frame path creates nothing.

The rules:
- Responses are told apart by `response.metadata` (each of our `response.create`s carries a request key,
  echoed on `response.created`), never by "the next response.created is ours": the server may start one
  of its own (a VAD turn, its own answer to a tool output) in between.
- One response at a time: a request waits while a response is active or another request is on its way; a
  request the server refused (`conversation_already_has_active_response`) is sent again once it is free.
- Tool outputs go out once the calling response is done and every call of it has its output; then one
  reply is asked for if any of them wanted one. Until they are out, no request of ours is sent.
- The farewell is the last thing said: once it is asked for, no other reply is asked for, new tool calls are
  refused, and a response the server starts on its own is cancelled.
- A moved call opens by listening (`Resume`): the agent speaks first only if the caller is not speaking when
  the new worker takes over; otherwise the caller's turn comes first, and our reply only if none follows it.
- After the end nothing happens: late audio, responses and tool results produce no action.
"""

from __future__ import annotations

import enum
import json
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# A call moved here from a worker that died: a system message, then the first reply (the conversation so far
# was replayed from the call log just before). No `instructions` on that response: they would replace the
# session's own instructions (the agent's prompt) for it.
RESUME_NOTE = (
    "The phone line dropped for a moment and the call has just been reconnected; the conversation so far is "
    "above. Do not greet the caller again. Say in a few words that the line dropped for a moment, then carry on "
    "where you left off; if the caller was in the middle of saying something, ask them to go on."
)
AUDIOLESS_RETRIES = 1  # a reply that came without audio is asked again aloud this many times in a row
METADATA_KEY = "va_request"  # the response.metadata key that carries our request key


class Stage(enum.Enum):
    STARTING = "starting"  # the Realtime session is not ready yet
    GREETING = "greeting"  # the greeting is asked for or playing, within its guard: the caller is not heard
    CONVERSATION = "conversation"  # turn-taking: the caller can interrupt the agent
    FAREWELL = "farewell"  # the farewell is asked for or playing: nothing else will be said
    ENDED = "ended"  # the call is over: nothing more is sent


class Opening(enum.Enum):
    """How the agent opens once the Realtime session is ready."""

    GREET = "greet"  # a new call with a greeting: say it, within its guard
    LISTEN = "listen"  # a new call without a greeting: the caller speaks first
    RESUME = "resume"  # a call moved from another worker: no greeting; a short "the line dropped" reply


class Resume(enum.Enum):
    """A moved call's first reply. The new worker may take over while the caller is in the middle of a sentence:
    the agent then lets them finish (their turn is answered, the note already in the conversation) instead of
    talking over them, which would make the rest of their sentence sound like our own echo."""

    NONE = "none"  # not a moved call, or its first reply is settled
    LISTENING = "listening"  # the caller is being heard for a moment before the agent says anything
    CALLER_FIRST = "caller_first"  # the caller was speaking: their turn comes first; our reply if none follows


class Purpose(enum.Enum):
    """Why a response exists."""

    GREETING = "greeting"
    REPLY = "reply"  # asked for by us: an answer to tool outputs, a note, a keypad digit, a retry aloud
    FAREWELL = "farewell"
    SERVER = "server"  # started by the server (a VAD turn), or one we cannot place


class Farewell(enum.Enum):
    NONE = "none"
    ASKED = "asked"  # requested; no audio yet
    SPEAKING = "speaking"  # its audio has started
    PLAYED = "played"  # its response is done and all of its audio was played (or cut off by the caller)


# --- events (what the session saw) ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionReady:
    """The Realtime session is configured: the greeting can be asked for."""


@dataclass(frozen=True, slots=True)
class ResponseCreated:
    response_id: str
    key: str | None  # our request key from response.metadata; None for a response the server started


@dataclass(frozen=True, slots=True)
class ResponseRefused:
    key: str  # the server refused that request: another response was active


@dataclass(frozen=True, slots=True)
class RequestLost:
    key: str  # neither response.created nor a refusal came for that request in time


@dataclass(frozen=True, slots=True)
class AudioStarted:
    """The first audio of an output item (one event per item, not per delta)."""

    response_id: str
    item_id: str


@dataclass(frozen=True, slots=True)
class ItemPlayed:
    item_id: str  # the item's audio has been played out


@dataclass(frozen=True, slots=True)
class ResponseDone:
    response_id: str
    status: str  # completed | cancelled | failed | incomplete
    message_items: tuple[str, ...] = ()  # its output messages (something was said, with or without audio)
    text: str = ""  # their transcript or text


@dataclass(frozen=True, slots=True)
class SpeechStarted:
    agent_audible: bool  # our audio was queued or playing at that moment


@dataclass(frozen=True, slots=True)
class SpeechEnded:
    pass


@dataclass(frozen=True, slots=True)
class GreetingGuardPassed:
    """The greeting has played long enough that the caller may interrupt it."""


@dataclass(frozen=True, slots=True)
class GreetingTimedOut:
    """The greeting's end was never seen: normal turn-taking returns."""


@dataclass(frozen=True, slots=True)
class ResumeListened:
    """A moved call has been heard long enough to know whether the caller is speaking."""


@dataclass(frozen=True, slots=True)
class TurnOverdue:
    """The caller stopped speaking and, within the server's end-of-turn wait, no response began."""


@dataclass(frozen=True, slots=True)
class ToolCalled:
    response_id: str
    call_id: str
    name: str
    arguments: str


@dataclass(frozen=True, slots=True)
class ToolFinished:
    call_id: str
    output: str
    respond: bool  # the model should speak about it


@dataclass(frozen=True, slots=True)
class Note:
    text: str  # news from outside the conversation (a failed transfer): a system message, then a reply


@dataclass(frozen=True, slots=True)
class KeypadDigit:
    text: str  # the digit as a user message for the model


@dataclass(frozen=True, slots=True)
class FarewellRequested:
    instructions: str


@dataclass(frozen=True, slots=True)
class FarewellCancelled:
    """The hang-up after the farewell failed: the conversation goes on."""


@dataclass(frozen=True, slots=True)
class SessionReplaced:
    """The Realtime session was replaced (a reconnect or a rotation): what the old one had under way will
    never finish there."""


@dataclass(frozen=True, slots=True)
class Hangup:
    reason: str


Event = (
    SessionReady
    | ResponseCreated
    | ResponseRefused
    | RequestLost
    | AudioStarted
    | ItemPlayed
    | ResponseDone
    | SpeechStarted
    | SpeechEnded
    | GreetingGuardPassed
    | GreetingTimedOut
    | ResumeListened
    | TurnOverdue
    | ToolCalled
    | ToolFinished
    | Note
    | KeypadDigit
    | FarewellRequested
    | FarewellCancelled
    | SessionReplaced
    | Hangup
)


# --- actions (what the session must do) -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CreateResponse:
    key: str
    purpose: Purpose
    params: dict[str, Any]  # the `response` object, metadata included


@dataclass(frozen=True, slots=True)
class AddSystemText:
    text: str


@dataclass(frozen=True, slots=True)
class AddUserText:
    text: str


@dataclass(frozen=True, slots=True)
class SendToolOutput:
    call_id: str
    output: str


@dataclass(frozen=True, slots=True)
class RunTool:
    call: ToolCalled


@dataclass(frozen=True, slots=True)
class CancelResponse:
    response_id: str


@dataclass(frozen=True, slots=True)
class BargeIn:
    """Stop our audio now and truncate what was playing to what the caller heard; cancel the active response."""


@dataclass(frozen=True, slots=True)
class DropItem:
    item_id: str  # do not play this item's audio (its response was cut off, or is not wanted)


@dataclass(frozen=True, slots=True)
class ReportAudioless:
    """A reply was said without audio: the caller heard none of it (its transcript is not theirs)."""

    response_id: str
    text: str
    message_items: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class ListenFirst:
    """Feed ResumeListened once the caller has been heard for a moment."""


@dataclass(frozen=True, slots=True)
class AwaitTurn:
    """Feed TurnOverdue unless a response begins within the server's end-of-turn wait (the timer restarts)."""


@dataclass(frozen=True, slots=True)
class FarewellStarted:
    pass


@dataclass(frozen=True, slots=True)
class FarewellPlayed:
    pass


Action = (
    CreateResponse
    | AddSystemText
    | AddUserText
    | SendToolOutput
    | RunTool
    | CancelResponse
    | BargeIn
    | DropItem
    | ReportAudioless
    | ListenFirst
    | AwaitTurn
    | FarewellStarted
    | FarewellPlayed
)

NOTHING: tuple[Action, ...] = ()
ENDING_REFUSAL = json.dumps({"ok": False, "error": "the call is ending; no more tools"})


# --- bookkeeping ------------------------------------------------------------------------------------------


@dataclass(slots=True)
class _Request:
    key: str
    purpose: Purpose
    params: dict[str, Any]
    notes: list[str] = field(default_factory=list)  # system messages added just before it is sent


@dataclass(slots=True)
class _Response:
    id: str
    purpose: Purpose
    items: list[str] = field(default_factory=list)  # output items with audio, in order
    calls: list[str] = field(default_factory=list)  # its function calls' ids, in order
    done: bool = False
    cut: bool = False  # cut off (barge-in) or cancelled by us: later audio of it is not played
    outputs_sent: bool = False


@dataclass(slots=True)
class _Call:
    response_id: str
    output: str | None = None
    respond: bool = False


class CallState:
    """One call's stage, its responses, its tool calls and its farewell. `handle(event)` returns the actions."""

    def __init__(self, greeting: str = "", *, resumed: bool = False):
        self.greeting = "" if resumed else greeting
        self.opening = Opening.RESUME if resumed else Opening.GREET if greeting else Opening.LISTEN
        self.stage = Stage.STARTING
        self.farewell = Farewell.NONE
        self.resume = Resume.NONE
        self.greeting_item: str | None = None  # the greeting's first audio item (its guard is measured on it)
        self.caller_speaking = False
        self._active: _Response | None = None  # the response the server is generating
        self._sent: _Request | None = None  # our request on its way: no response.created or refusal yet
        self._queue: deque[_Request] = deque()  # requests waiting for the conversation to be free
        self._responses: dict[str, _Response] = {}  # responses still playing or with calls to answer
        self._playing: set[str] = set()  # items whose audio is queued or playing
        self._calls: dict[str, _Call] = {}
        self._farewell_response: str | None = None
        self._audioless_retries = 0
        self._seq = 0

    # --- what the session reads --------------------------------------------------------------------------
    @property
    def agent_idle(self) -> bool:
        """Nothing of ours is being generated, asked for, waiting, or playing."""
        return self._active is None and self._sent is None and not self._queue and not self._playing

    @property
    def quiet(self) -> bool:
        """Nobody speaks and nothing is under way: a safe moment to replace the Realtime session."""
        return self.agent_idle and not self.caller_speaking and self.stage is not Stage.STARTING

    @property
    def hears_caller(self) -> bool:
        """Whether the caller's audio goes to the model now (the echo guard may still send silence instead):
        not within the greeting's guard, which starts before the Realtime session is even ready."""
        if self.stage is Stage.GREETING:
            return False
        return self.stage is not Stage.STARTING or not self.greeting

    # --- the one entry point -----------------------------------------------------------------------------
    def handle(self, event: Event) -> tuple[Action, ...]:
        if self.stage is Stage.ENDED:
            if isinstance(event, AudioStarted):
                return (DropItem(event.item_id),)
            return NOTHING
        handler = _HANDLERS[type(event)]
        return tuple(handler(self, event))

    # --- lifecycle ---------------------------------------------------------------------------------------
    def _on_ready(self, event: SessionReady) -> list[Action]:
        if self.stage is not Stage.STARTING:
            return []
        if self.opening is Opening.RESUME:
            self.stage = Stage.CONVERSATION
            self.resume = Resume.LISTENING
            return [AddSystemText(RESUME_NOTE), ListenFirst()]
        if self.opening is Opening.LISTEN:
            self.stage = Stage.CONVERSATION
            return []
        self.stage = Stage.GREETING
        say = f"Greet the caller now by saying exactly this, and nothing else: {self.greeting}"
        return self._request(Purpose.GREETING, {"instructions": say})

    def _on_hangup(self, event: Hangup) -> list[Action]:
        self.stage = Stage.ENDED
        self._active, self._sent = None, None
        self._queue.clear()
        self._playing.clear()
        self._calls.clear()
        self._responses.clear()
        return []

    def _on_replaced(self, event: SessionReplaced) -> list[Action]:
        # The old session's active response ends there unseen. No output can go to the new session: it was
        # rebuilt from the call log, which has each finished tool call with its output, and it never had the
        # calls still running. A request on its way is asked again.
        if self._active is not None:
            self._active.done = True
            self._active = None
        for response in self._responses.values():
            response.outputs_sent = True
        self._calls.clear()
        if self._sent is not None:
            self._queue.appendleft(self._sent)
            self._sent = None
        actions = self._farewell_progress()
        self._forget_finished()
        return actions + self._next()

    # --- the greeting ------------------------------------------------------------------------------------
    def _greeting_over(self, event: GreetingGuardPassed | GreetingTimedOut) -> list[Action]:
        if self.stage is Stage.GREETING:
            self.stage = Stage.CONVERSATION
        return []

    # --- a moved call's first reply -----------------------------------------------------------------------
    def _on_resume_listened(self, event: ResumeListened) -> list[Action]:
        if self.resume is not Resume.LISTENING:
            return []
        if self.caller_speaking:
            self.resume = Resume.CALLER_FIRST
            return []
        self.resume = Resume.NONE
        return self._request(Purpose.REPLY, {})

    def _on_turn_overdue(self, event: TurnOverdue) -> list[Action]:
        # The server did not take what the caller said for a turn (too short, or too soft for its VAD): the agent
        # speaks anyway, so the caller is not left in silence.
        if self.resume is not Resume.CALLER_FIRST or self.caller_speaking:
            return []
        self.resume = Resume.NONE
        return self._request(Purpose.REPLY, {})

    # --- requests and responses --------------------------------------------------------------------------
    def _request(self, purpose: Purpose, params: dict[str, Any], note: str | None = None) -> list[Action]:
        if purpose is Purpose.REPLY:
            waiting = next((r for r in self._queue if r.purpose is Purpose.REPLY), None)
            if waiting is not None:  # one reply answers all the news
                if note:
                    waiting.notes.append(note)
                return self._next()
        self._seq += 1
        key = f"req_{self._seq}_{purpose.value}"
        request = _Request(key, purpose, {**params, "metadata": {METADATA_KEY: key}})
        if note:
            request.notes.append(note)
        self._queue.append(request)
        return self._next()

    def _asked(self, purpose: Purpose) -> bool:
        """A request of that purpose is waiting or on its way."""
        return (self._sent is not None and self._sent.purpose is purpose) or any(
            r.purpose is purpose for r in self._queue
        )

    def _next(self) -> list[Action]:
        """Send the first waiting request if the conversation is free: no response under way or on its way,
        and no finished response still waiting for its tools' outputs (the reply must see them)."""
        if self._active is not None or self._sent is not None or not self._queue:
            return []
        if any(r.done and r.calls and not r.outputs_sent for r in self._responses.values()):
            return []
        request = self._sent = self._queue.popleft()
        actions: list[Action] = [AddSystemText(note) for note in request.notes]
        request.notes.clear()  # added once, even if the request is refused and sent again
        actions.append(CreateResponse(request.key, request.purpose, request.params))
        return actions

    def _on_refused(self, event: ResponseRefused) -> list[Action]:
        if self._sent is None or self._sent.key != event.key:
            return []
        self._queue.appendleft(self._sent)
        self._sent = None
        return self._next()  # sent again now if the response in the way is already done

    def _on_lost(self, event: RequestLost) -> list[Action]:
        if self._sent is None or self._sent.key != event.key:
            return []
        self._sent = None
        return self._next()

    def _on_created(self, event: ResponseCreated) -> list[Action]:
        sent = self._sent
        if sent is not None and event.key == sent.key:
            purpose = sent.purpose
            self._sent = None
        else:
            purpose = Purpose.SERVER
        response = self._response(event.response_id, purpose)
        self._active = response
        self.resume = Resume.NONE  # whatever speaks first after a move (the caller's turn, a tool) settles it
        if purpose is Purpose.FAREWELL:
            self._farewell_response = response.id
        elif self.stage is Stage.FAREWELL:
            response.cut = True  # nothing may follow the farewell: not the server's own turn either
            return [CancelResponse(response.id)]
        return []

    def _response(self, response_id: str, purpose: Purpose = Purpose.SERVER) -> _Response:
        response = self._responses.get(response_id)
        if response is None:
            response = self._responses[response_id] = _Response(response_id, purpose)
        return response

    def _on_audio(self, event: AudioStarted) -> list[Action]:
        response = self._response(event.response_id)
        if response.cut:
            return [DropItem(event.item_id)]
        response.items.append(event.item_id)
        self._playing.add(event.item_id)
        self._audioless_retries = 0
        if response.purpose is Purpose.GREETING and self.greeting_item is None:
            self.greeting_item = event.item_id
        if response.purpose is Purpose.FAREWELL and self.farewell is Farewell.ASKED:
            self.farewell = Farewell.SPEAKING
            return [FarewellStarted()]
        return []

    def _on_played(self, event: ItemPlayed) -> list[Action]:
        if event.item_id not in self._playing:
            return []
        self._playing.discard(event.item_id)
        if self.stage is Stage.GREETING and event.item_id == self.greeting_item:
            self.stage = Stage.CONVERSATION
        actions = self._farewell_progress()
        self._forget_finished()
        return actions

    def _on_done(self, event: ResponseDone) -> list[Action]:
        response = self._response(event.response_id)
        response.done = True
        if self._active is response:
            self._active = None
        actions = self._send_outputs(response)
        if event.status == "completed" and event.message_items and not response.items and not response.cut:
            actions += self._audioless(response, event)
        if response.purpose is Purpose.GREETING and not response.items and self.stage is Stage.GREETING:
            if not self._asked(Purpose.GREETING):
                self.stage = Stage.CONVERSATION  # no greeting will play: the caller is heard from now on
        actions += self._farewell_progress()
        actions += self._next()
        self._forget_finished()
        return actions

    def _audioless(self, response: _Response, done: ResponseDone) -> list[Action]:
        """The guide's "modalities bug": a reply with a transcript but no audio leaves the caller in silence;
        it is asked again, aloud, with the same purpose (a farewell stays a farewell: no tools)."""
        text = done.text
        actions: list[Action] = [ReportAudioless(response.id, text, done.message_items)]
        if self._audioless_retries >= AUDIOLESS_RETRIES:
            return actions
        purpose = Purpose.REPLY if response.purpose is Purpose.SERVER else response.purpose
        if purpose is Purpose.REPLY and self.stage is Stage.FAREWELL:
            return actions
        self._audioless_retries += 1
        say = f"Say this to the caller out loud: {text}" if text else "Please answer the caller out loud."
        params: dict[str, Any] = {"output_modalities": ["audio"], "instructions": say}
        if purpose is Purpose.FAREWELL:
            params["tool_choice"] = "none"
        return actions + self._request(purpose, params)

    def _forget_finished(self) -> None:
        for response_id in [
            r.id
            for r in self._responses.values()
            if r.done
            and r is not self._active
            and (r.outputs_sent or not r.calls)
            and not any(item in self._playing for item in r.items)
        ]:
            del self._responses[response_id]

    # --- the caller --------------------------------------------------------------------------------------
    def _on_speech_started(self, event: SpeechStarted) -> list[Action]:
        self.caller_speaking = True
        if self.stage is Stage.GREETING or not event.agent_audible:
            return []  # within the greeting's guard the caller is not heard; with nothing playing, no barge-in
        for response in self._responses.values():
            if response is self._active or any(item in self._playing for item in response.items):
                response.cut = True
        self._playing.clear()
        return [BargeIn(), *self._farewell_progress()]

    def _on_speech_ended(self, event: SpeechEnded) -> list[Action]:
        self.caller_speaking = False
        return [AwaitTurn()] if self.resume is Resume.CALLER_FIRST else []

    def _on_digit(self, event: KeypadDigit) -> list[Action]:
        if self.stage is Stage.FAREWELL:
            return []
        return [AddUserText(event.text), *self._request(Purpose.REPLY, {})]

    def _on_note(self, event: Note) -> list[Action]:
        if self.stage is Stage.FAREWELL:
            return []  # the call is ending: nothing more is said
        return self._request(Purpose.REPLY, {}, note=event.text)

    # --- tools -------------------------------------------------------------------------------------------
    def _on_tool_called(self, event: ToolCalled) -> list[Action]:
        if event.call_id in self._calls:
            return []
        call = self._calls[event.call_id] = _Call(event.response_id)
        self._response(event.response_id).calls.append(event.call_id)
        if self.stage is Stage.FAREWELL:
            call.output, call.respond = ENDING_REFUSAL, False
            return self._send_outputs(self._response(event.response_id))
        return [RunTool(event)]

    def _on_tool_finished(self, event: ToolFinished) -> list[Action]:
        call = self._calls.get(event.call_id)
        if call is None or call.output is not None:
            return []  # unknown (a replaced session's call) or answered already
        call.output, call.respond = event.output, event.respond
        response = self._responses.get(call.response_id)
        return self._send_outputs(response) if response is not None else []

    def _send_outputs(self, response: _Response) -> list[Action]:
        """Every output of a done response's calls, once all are in; then one reply if any asked for one."""
        if not response.done or response.outputs_sent or not response.calls:
            return []
        calls = [self._calls.get(call_id) for call_id in response.calls]
        if any(call is None or call.output is None for call in calls):
            return []
        response.outputs_sent = True
        actions: list[Action] = []
        respond = False
        for call_id in response.calls:
            call = self._calls.pop(call_id)
            assert call.output is not None
            actions.append(SendToolOutput(call_id, call.output))
            respond |= call.respond
        if respond and self.stage in (Stage.GREETING, Stage.CONVERSATION):
            actions += self._request(Purpose.REPLY, {})
        else:
            actions += self._next()  # a request held back for these outputs
        self._forget_finished()
        return actions

    # --- the farewell ------------------------------------------------------------------------------------
    def _on_farewell(self, event: FarewellRequested) -> list[Action]:
        if self.stage is Stage.FAREWELL:
            return []  # one farewell per call
        self.stage = Stage.FAREWELL
        self.farewell = Farewell.ASKED
        self.resume = Resume.NONE  # nothing but the farewell will be said: a moved call's reply is not owed
        self._queue = deque(r for r in self._queue if r.purpose is not Purpose.REPLY)
        return self._request(Purpose.FAREWELL, {"tool_choice": "none", "instructions": event.instructions})

    def _on_farewell_cancelled(self, event: FarewellCancelled) -> list[Action]:
        if self.stage is Stage.FAREWELL:
            self.stage = Stage.CONVERSATION
            self.farewell = Farewell.NONE
            self._farewell_response = None
            self._queue = deque(r for r in self._queue if r.purpose is not Purpose.FAREWELL)
        return []

    def _farewell_progress(self) -> list[Action]:
        if self.farewell is not Farewell.SPEAKING or self._farewell_response is None:
            return []
        response = self._responses.get(self._farewell_response)
        if response is not None and (not response.done or any(i in self._playing for i in response.items)):
            return []
        self.farewell = Farewell.PLAYED
        return [FarewellPlayed()]


_HANDLERS: dict[type, Callable[[CallState, Any], list[Action]]] = {
    SessionReady: CallState._on_ready,
    ResponseCreated: CallState._on_created,
    ResponseRefused: CallState._on_refused,
    RequestLost: CallState._on_lost,
    AudioStarted: CallState._on_audio,
    ItemPlayed: CallState._on_played,
    ResponseDone: CallState._on_done,
    SpeechStarted: CallState._on_speech_started,
    SpeechEnded: CallState._on_speech_ended,
    GreetingGuardPassed: CallState._greeting_over,
    GreetingTimedOut: CallState._greeting_over,
    ResumeListened: CallState._on_resume_listened,
    TurnOverdue: CallState._on_turn_overdue,
    ToolCalled: CallState._on_tool_called,
    ToolFinished: CallState._on_tool_finished,
    Note: CallState._on_note,
    KeypadDigit: CallState._on_digit,
    FarewellRequested: CallState._on_farewell,
    FarewellCancelled: CallState._on_farewell_cancelled,
    SessionReplaced: CallState._on_replaced,
    Hangup: CallState._on_hangup,
}
