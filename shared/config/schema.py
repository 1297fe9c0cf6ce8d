"""The typed shape of `config/ai-agent.yaml`.

Keys under `providers.openai_realtime`, `contexts` and `vad` follow the user guide word for word, beta-era
names included; `shared.config.ga_session` maps them to the GA Realtime session. The other sections hold what
the cluster needs. Every struct forbids unknown keys: a typo is an error with a did-you-mean, never a silently
ignored setting (the project we replace lost `temperature` and `create_response` that way).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec
from msgspec import Meta

Port = Annotated[int, Meta(ge=1, le=65535)]
PortOrZero = Annotated[int, Meta(ge=0, le=65535)]  # 0 = let the OS pick (tests)
Millis = Annotated[int, Meta(ge=0, le=3_600_000)]
NonEmpty = Annotated[str, Meta(min_length=1)]

# Wire names the guide uses (beta) and the GA names; both are accepted.
AudioFormat = Literal["pcm16", "g711_ulaw", "g711_alaw", "audio/pcm", "audio/pcmu", "audio/pcma"]
Modality = Literal["text", "audio"]
TurnDetectionType = Literal["server_vad", "semantic_vad", "none"]
EventLoopKind = Literal["asyncio", "uvloop"]  # the media worker's (shared/event_loop.py)
ToolName = Literal[
    "transfer",
    "cancel_transfer",
    "hangup_call",
    "leave_voicemail",
    "send_email_summary",
    "request_transcript",
]
ALL_TOOLS: tuple[str, ...] = ToolName.__args__  # type: ignore[attr-defined]


class Base(msgspec.Struct, forbid_unknown_fields=True, kw_only=True, omit_defaults=False):
    pass


Price = Annotated[float, Meta(ge=0.0, le=10_000.0)]


class Pricing(Base):
    """USD per million tokens, for the cost estimate in the metrics (OpenAI's list prices for gpt-realtime;
    check yours: they change, and differ per model and contract)."""

    text_input: Price = 4.0
    text_cached_input: Price = 0.4
    text_output: Price = 16.0
    audio_input: Price = 32.0
    audio_cached_input: Price = 0.4
    audio_output: Price = 64.0


class TurnDetection(Base):
    type: TurnDetectionType | None = None  # None: `turn_detection_type`, else server_vad
    threshold: Annotated[float, Meta(ge=0.0, le=1.0)] = 0.5
    silence_duration_ms: Annotated[int, Meta(ge=0, le=10_000)] = 1000
    prefix_padding_ms: Annotated[int, Meta(ge=0, le=10_000)] = 300
    create_response: bool = True
    # None: the media worker decides barge-in itself (local echo-aware gate); true/false is sent as is.
    interrupt_response: bool | None = None
    # GA only, server_vad only: the server prompts the caller after this much silence.
    idle_timeout_ms: Annotated[int, Meta(ge=5_000, le=30_000)] | None = None
    # semantic_vad only.
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"


class OpenAIRealtime(Base):
    api_key: str = ""
    enabled: bool = True
    greeting: str = ""
    model: NonEmpty = "gpt-realtime-2.1"
    base_url: NonEmpty = "wss://api.openai.com/v1/realtime"
    organization: str = ""
    project: str = ""
    # Beta-only: GA sessions have no temperature; accepted so the guide's config loads, then dropped.
    temperature: Annotated[float, Meta(ge=0.0, le=2.0)] | None = None
    max_response_output_tokens: Annotated[int, Meta(ge=1, le=4096)] | Literal["inf"] | None = None
    voice: NonEmpty = "alloy"
    input_audio_format: AudioFormat = "pcm16"
    output_audio_format: AudioFormat = "pcm16"
    input_audio_sample_rate: Annotated[int, Meta(ge=8000, le=48000)] = 24000
    output_audio_sample_rate: Annotated[int, Meta(ge=8000, le=48000)] = 24000
    modalities: Annotated[list[Modality], Meta(min_length=1)] = msgspec.field(default_factory=lambda: ["text", "audio"])
    instructions: str = ""
    turn_detection_enabled: bool = True
    turn_detection_type: TurnDetectionType | None = None
    turn_detection: TurnDetection = msgspec.field(default_factory=TurnDetection)
    # Caller-side transcription; the transcript log and emails need it. Empty disables it.
    input_transcription_model: str = "gpt-4o-mini-transcribe"
    tools: list[ToolName] = msgspec.field(default_factory=list)
    # The guide: "Default: 100 concurrent sessions". Calls beyond it wait in the admission queue.
    max_concurrent_sessions: Annotated[int, Meta(ge=1, le=100_000)] = 100
    pricing: Pricing = msgspec.field(default_factory=Pricing)


class Providers(Base):
    openai_realtime: OpenAIRealtime = msgspec.field(default_factory=OpenAIRealtime)


class Context(Base):
    prompt: str = ""
    greeting: str | None = None  # None: the provider's greeting
    profile: str | None = None  # None: `default_profile`
    provider: Literal["openai_realtime"] = "openai_realtime"
    tools: list[ToolName] | None = None  # None: the provider's tools
    voice: str | None = None


RTP_FORMATS = ("ulaw", "slin")  # static payload types 0 and 10, both 8 kHz


class Profile(Base):
    """How audio travels between Asterisk and a media worker, and what the model receives."""

    transport: Literal["audiosocket", "rtp", "websocket"] = "audiosocket"
    # Asterisk side: AudioSocket slin (8k), slin16, slin24; RTP ulaw or slin (8k, big-endian);
    # WebSocket (chan_websocket, Asterisk >= 22.6) ulaw, slin, slin16, slin24 (little-endian).
    format: Literal["slin", "slin16", "slin24", "ulaw"] = "slin24"
    # Model side: pcm16 at 24 kHz, or G.711 u-law at 8 kHz (no transcoding with a ulaw transport).
    provider_format: Literal["pcm16", "g711_ulaw"] = "pcm16"

    def __post_init__(self) -> None:
        if self.transport == "rtp" and self.format not in RTP_FORMATS:
            raise ValueError(
                f"format {self.format!r} cannot be carried over rtp: use ulaw or slin (Asterisk drops inbound "
                "dynamic payload types, so slin16 and slin24 over RTP would be one-way)"
            )


BUILTIN_PROFILES: dict[str, Profile] = {
    # The guide's name: 24 kHz PCM to the model; AudioSocket slin24 needs no resampling at all.
    "telephony_pcm16_24k": Profile(transport="audiosocket", format="slin24", provider_format="pcm16"),
    "openai_realtime_24k": Profile(transport="audiosocket", format="slin24", provider_format="pcm16"),
    "telephony_pcm16_16k": Profile(transport="audiosocket", format="slin16", provider_format="pcm16"),
    "telephony_slin_8k": Profile(transport="audiosocket", format="slin", provider_format="pcm16"),
    # u-law end to end: no transcoding and no resampling.
    "telephony_ulaw_8k": Profile(transport="rtp", format="ulaw", provider_format="g711_ulaw"),
    # WebSocket media (Asterisk >= 22.6): the worker connects to Asterisk; u-law passes through untouched.
    "websocket_ulaw_8k": Profile(transport="websocket", format="ulaw", provider_format="g711_ulaw"),
    "websocket_pcm16_24k": Profile(transport="websocket", format="slin24", provider_format="pcm16"),
}


class Vad(Base):
    # The guide: "MUST be 1, not 0" (0 lets the agent's own echo interrupt it).
    webrtc_aggressiveness: Annotated[int, Meta(ge=0, le=3)] = 1


class Asterisk(Base):
    ari_url: NonEmpty = "http://127.0.0.1:8088"
    username: NonEmpty = "asterisk"
    password: str = ""
    app_name: NonEmpty = "asterisk-ai-voice-agent"
    # WebSocket media: the base URL media workers use to reach Asterisk's HTTP server (its /media/<id>);
    # empty: derived from ari_url (http -> ws, https -> wss, same host and port).
    media_websocket_url: str = ""


class RedisSettings(Base):
    url: NonEmpty = "redis://127.0.0.1:6379/0"
    # Every key the cluster writes starts with this; tests and side-by-side clusters use their own.
    key_prefix: Annotated[str, Meta(min_length=1, max_length=32)] = "va:"


class Fallback(Base):
    """Where a call goes when the agent cannot take it (unknown context or provider, no capacity in time,
    setup failure): never silence."""

    # continue: back to the dialplan at context/extension/priority; hangup: play `prompt`, then hang up.
    action: Literal["continue", "hangup"] = "hangup"
    context: str = "ai-agent-fallback"
    extension: NonEmpty = "s"
    priority: Annotated[int, Meta(ge=1)] = 1
    prompt: str = "sound:ss-noservice"  # ARI media URI played before a hangup; empty: none
    prompt_timeout_ms: Millis = 8000  # the hangup follows even if PlaybackFinished never comes

    def __post_init__(self) -> None:
        if self.action == "continue" and not self.context:
            raise ValueError("context is required when action is 'continue'")


class ControllerSettings(Base):
    health_host: NonEmpty = "127.0.0.1"
    health_port: PortOrZero = 15000
    # Calls beyond the free slots (or the provider's max_concurrent_sessions) wait this long, hearing
    # `queue_music`, before the fallback.
    queue_timeout_ms: Millis = 30_000
    queue_music: Literal["ringback", "moh"] = "ringback"
    moh_class: str = "default"
    fallback: Fallback = msgspec.field(default_factory=Fallback)
    # One ARI step (answer, bridge, externalMedia...) that takes longer than this fails the setup.
    ari_timeout_ms: Annotated[int, Meta(ge=100, le=60_000)] = 5000
    # The leadership lease (controller/leadership.py): one controller leads, the others stand by and take over
    # within about this long (plus one poll and a reconcile) after the leader dies; renewed every quarter of it.
    leader_lease_ms: Annotated[int, Meta(ge=200, le=60_000)] = 1000
    # A media worker declared dead (no heartbeat for media_worker.stale_after_ms) while no other worker has a
    # free slot: its calls wait this long, in silence, for it to beat again (a loop stalled by a busy machine:
    # the calls stay with it, untouched) or for another worker (they move), before the fallback. 0: at once.
    move_wait_ms: Annotated[int, Meta(ge=0, le=60_000)] = 3000


class WorkerAdmission(Base):
    """The worker advertises fewer calls than `capacity` when it measures it cannot take more
    (media_worker/load_governor.py): no new calls while its playout tick lag p99 is over its limit; at most
    what fits at the CPU each call costs when the CPU would cross its limit first. Calls in progress are kept."""

    enabled: bool = True
    # Over the window: the audio is at risk now; no new calls. Below a frame (20 ms): a frame late is a gap.
    max_tick_lag_p99_ms: Annotated[float, Meta(gt=0.0, lt=1000.0)] = 10.0
    # The process's CPU over the window, as a share of one core (the event loop runs on one).
    max_cpu_percent: Annotated[float, Meta(gt=0.0, le=100.0)] = 85.0
    # Measured over the last `window_s` seconds, judged every second; raised again only after `recover_s`
    # judgements in a row allow it (lowered at once).
    window_s: Annotated[int, Meta(ge=1, le=60)] = 5
    recover_s: Annotated[int, Meta(ge=1, le=600)] = 5


class MediaWorkerSettings(Base):
    # The interface AudioSocket and the RTP ports listen on; empty: the advertised address (advertise_host,
    # `auto` resolved), so nothing listens where Asterisk is not meant to reach. 0.0.0.0: every interface.
    listen_host: str = ""
    # The address Asterisk dials for this worker's media; must be reachable from Asterisk. `auto`: the address
    # of the interface that routes towards Redis (a scaled container's own address).
    advertise_host: NonEmpty = "127.0.0.1"
    audiosocket_port: PortOrZero = 8090
    rtp_port_min: Port = 18080
    rtp_port_max: Port = 18199
    capacity: Annotated[int, Meta(ge=1, le=10_000)] = 200
    admission: WorkerAdmission = msgspec.field(default_factory=WorkerAdmission)
    # Every process beats this often, from its event loop (a wedged loop stops beating). The controller's
    # worker watch declares a worker dead once its last beat is older than `stale_after_ms`: 250/750 ms find
    # a dead or wedged worker within 1 s of its last beat (three beats may be lost to a busy loop first). With
    # no other worker free, its calls wait up to controller.move_wait_ms for it to beat again.
    heartbeat_ms: Annotated[int, Meta(ge=100, le=10_000)] = 250
    stale_after_ms: Annotated[int, Meta(ge=500, le=60_000)] = 750
    prewarm_sessions: Annotated[int, Meta(ge=0, le=100)] = 2
    health_host: NonEmpty = "127.0.0.1"
    health_port: PortOrZero = 15001
    # Sources allowed to send media (IP, CIDR or host name); empty: the host of asterisk.ari_url. List every
    # address Asterisk sends media from when that is not its ARI host; 0.0.0.0/0 and ::/0 allow any host.
    allowed_media_hosts: list[NonEmpty] = msgspec.field(default_factory=list)
    # The greeting cannot be interrupted during its first `greeting_guard_ms` (its own echo must not cut
    # it off); if its end is never seen, normal turn-taking returns after `greeting_timeout_ms` (the guide's 5 s).
    greeting_guard_ms: Annotated[int, Meta(ge=0, le=10_000)] = 800
    greeting_timeout_ms: Annotated[int, Meta(ge=500, le=60_000)] = 5000
    # Barge-in: the caller's first voiced frame over the agent ducks it by `bargein_duck_db`;
    # the gate's decision (3 frames later) fades it out over `bargein_fade_ms`; with no decision within
    # `bargein_confirm_ms` (a cough, echo) it ramps back up. 0 dB turns ducking off (fade-out only).
    bargein_duck_db: Annotated[float, Meta(ge=-60, le=0)] = -30.0
    bargein_confirm_ms: Annotated[int, Meta(ge=60, le=2000)] = 400
    bargein_fade_ms: Annotated[int, Meta(ge=1, le=20)] = 8
    # An assignment whose media never connects is dropped after this long.
    media_timeout_ms: Annotated[int, Meta(ge=1000, le=120_000)] = 15_000
    # Keypad digits reach the model as short user messages ("The caller pressed 1").
    dtmf_to_model: bool = True
    # On SIGTERM: stop taking calls (draining) and let live calls finish for up to this long.
    drain_timeout_ms: Millis = 0
    # The worker's event loop: asyncio's own, or uvloop (the optional extra `[uvloop]`; bench/RESULTS.md has both).
    event_loop: EventLoopKind = "asyncio"

    def __post_init__(self) -> None:
        if self.rtp_port_min > self.rtp_port_max:
            raise ValueError(f"rtp_port_min ({self.rtp_port_min}) must not be above rtp_port_max ({self.rtp_port_max})")
        if self.stale_after_ms <= self.heartbeat_ms:
            raise ValueError(
                f"stale_after_ms ({self.stale_after_ms}) must be longer than heartbeat_ms ({self.heartbeat_ms}): "
                "every worker would look dead between two beats"
            )


class ToolWorkerSettings(Base):
    queues: Annotated[list[NonEmpty], Meta(min_length=1)] = msgspec.field(default_factory=lambda: ["tools", "email"])
    health_host: NonEmpty = "127.0.0.1"
    health_port: PortOrZero = 15002
    # On SIGTERM, a job in progress (a slow SMTP server) gets this long to finish; then it is stopped and put
    # back at the front of its queue for another worker. Keep it below the orchestrator's stop grace period.
    stop_grace_ms: Annotated[int, Meta(ge=0, le=60_000)] = 5000


class TransferDestination(Base):
    target: NonEmpty
    type: Literal["extension", "queue", "ringgroup"] = "extension"
    description: str = ""
    dialplan_context: str | None = None  # None: the context of its type in `tools.transfer`
    priority: Annotated[int, Meta(ge=1)] = 1


class TransferTool(Base):
    technology: NonEmpty = "PJSIP"
    extension_context: NonEmpty = "from-internal"
    queue_context: NonEmpty = "ext-queues"
    ringgroup_context: NonEmpty = "ext-group"
    ring_timeout_ms: Annotated[int, Meta(ge=1000, le=300_000)] = 30_000
    # controlled: the caller hears MOH while the controller rings the destination, and the AI stays on the
    # call if nobody answers (cancellable); continue: hand the caller to the dialplan target and leave.
    mode: Literal["controlled", "continue"] = "controlled"
    destinations: dict[str, TransferDestination] = msgspec.field(default_factory=dict)


class HangupTool(Base):
    farewell_message: str = "Thank you for calling. Goodbye!"
    # The guide's promise: the call ends even when the farewell audio never arrives.
    farewell_timeout_ms: Annotated[int, Meta(ge=500, le=60_000)] = 5000


class VoicemailTool(Base):
    dialplan_context: NonEmpty = "default"
    extension: NonEmpty = "vm100"
    priority: Annotated[int, Meta(ge=1)] = 1


class EmailSummaryTool(Base):
    send_after_every_call: bool = True
    recipients: list[NonEmpty] = msgspec.field(default_factory=list)
    include_transcript: bool = True


class TranscriptTool(Base):
    # Where the caller's copy comes from; the caller gives the address during the call.
    bcc: list[NonEmpty] = msgspec.field(default_factory=list)
    # Distinct addresses one call may send its transcript to: a caller (or a confused model) cannot turn the
    # agent into a mailer. Further addresses are refused and the model is told so.
    max_addresses: Annotated[int, Meta(ge=1, le=20)] = 3
    # request_transcript calls the model may make in any 60 s of one call; more are refused until it calms down.
    max_calls_per_minute: Annotated[int, Meta(ge=1, le=120)] = 10


class Tools(Base):
    transfer: TransferTool = msgspec.field(default_factory=TransferTool)
    hangup_call: HangupTool = msgspec.field(default_factory=HangupTool)
    leave_voicemail: VoicemailTool = msgspec.field(default_factory=VoicemailTool)
    send_email_summary: EmailSummaryTool = msgspec.field(default_factory=EmailSummaryTool)
    request_transcript: TranscriptTool = msgspec.field(default_factory=TranscriptTool)


class Email(Base):
    smtp_host: NonEmpty = "127.0.0.1"
    smtp_port: Port = 25
    username: str = ""
    password: str = ""
    security: Literal["none", "starttls", "tls"] = "none"
    from_address: NonEmpty = "AI Voice Agent <agent@localhost>"
    timeout_ms: Annotated[int, Meta(ge=100, le=120_000)] = 10_000


class Logging(Base):
    level: Literal["debug", "info", "warning", "error"] = "info"
    format: Literal["console", "json"] = "console"


class Limits(Base):
    """Usage caps, enforced cluster-wide in Redis (shared/usage_limits.py). Each is off when null. A cap reached
    sends new calls to the dialplan fallback; calls in progress finish (at `max_call_duration_s` with a farewell)."""

    sessions_per_day: Annotated[int, Meta(ge=1, le=10_000_000)] | None = None  # the guide's default tier: 500
    spend_per_day_usd: Annotated[float, Meta(gt=0.0, le=10_000_000.0)] | None = None
    spend_per_month_usd: Annotated[float, Meta(gt=0.0, le=100_000_000.0)] | None = None
    max_call_duration_s: Annotated[int, Meta(ge=5, le=86_400)] | None = None
    # What the agent says at `max_call_duration_s` before it hangs up (the hangup tool's farewell path).
    duration_farewell: NonEmpty = (
        "I'm sorry, we have reached the time limit for this call. Thank you for calling, goodbye!"
    )
    timezone: NonEmpty = "UTC"  # an IANA name (Europe/Berlin): when "day" and "month" begin


class Config(Base):
    company_name: str = "our company"
    default_context: str | None = None
    default_profile: NonEmpty = "telephony_pcm16_24k"
    call_retention_days: Annotated[int, Meta(ge=1, le=3650)] = 7
    providers: Providers = msgspec.field(default_factory=Providers)
    contexts: dict[NonEmpty, Context] = msgspec.field(default_factory=dict)
    profiles: dict[NonEmpty, Profile] = msgspec.field(default_factory=dict)
    vad: Vad = msgspec.field(default_factory=Vad)
    asterisk: Asterisk = msgspec.field(default_factory=Asterisk)
    redis: RedisSettings = msgspec.field(default_factory=RedisSettings)
    controller: ControllerSettings = msgspec.field(default_factory=ControllerSettings)
    media_worker: MediaWorkerSettings = msgspec.field(default_factory=MediaWorkerSettings)
    tool_worker: ToolWorkerSettings = msgspec.field(default_factory=ToolWorkerSettings)
    tools: Tools = msgspec.field(default_factory=Tools)
    email: Email = msgspec.field(default_factory=Email)
    logging: Logging = msgspec.field(default_factory=Logging)
    limits: Limits = msgspec.field(default_factory=Limits)

    def profile(self, name: str) -> Profile | None:
        return self.profiles.get(name) or BUILTIN_PROFILES.get(name)
