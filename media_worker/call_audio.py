"""One call's audio in its wire format: the converter both ways, the playout queue, the caller's speech gate,
and the count of caller frames that never came (padded with silence toward the model).

The wire format is the transport's ("slin_be" for RTP slin); an AudioSocket link may learn from Asterisk's
first frame that it differs from what the call asked for, and `reformat` then rebuilds all of it, re-queueing
the agent audio not yet played in the new format.
"""

from __future__ import annotations

from media_worker.audio.convert import Converter, silence
from media_worker.audio.duck import Ducker, DuckSettings
from media_worker.audio.g711 import ulaw_decode
from media_worker.audio.gate import SpeechGate
from media_worker.audio.playout import PlayoutQueue

INPUT_SLACK_FRAMES = 3  # caller audio this late (60 ms) is a gap, padded with silence; jitter below is not


def wire_format(transport: str, fmt: str) -> str:
    """The converter's name for what travels between Asterisk and us (RTP slin is big-endian)."""
    return "slin_be" if transport == "rtp" and fmt == "slin" else fmt


class CallAudio:
    def __init__(self, wire: str, provider: str, vad_aggressiveness: int, duck: DuckSettings | None = None):
        self.provider = provider
        self.vad_aggressiveness = vad_aggressiveness
        self.duck_settings = duck or DuckSettings()
        self.provider_silence = silence(provider)
        self.frames_in = 0  # caller frames received, padding included
        self.bytes_in = 0  # caller audio received (wire bytes, padding excluded): the flood guard's measure
        self.ticks = 0  # frames the clock sent
        self.padded_frames = 0
        self._retired_underruns = 0  # counted by the queue and gate a format change replaced
        self._retired_closures = 0
        self._retired_ducks = (0, 0)  # (ducks, restores) of a ducker a format change replaced
        self._build(wire)

    def _build(self, wire: str) -> None:
        self.wire = wire
        self.conv = Converter(wire, self.provider)
        self.playout = PlayoutQueue(self.conv.wire_frame_bytes, silence(wire))
        self.gate = SpeechGate(self.conv.wire_rate, self.vad_aggressiveness)
        self.ducker = Ducker(wire, self.conv.wire_rate, self.duck_settings)

    @property
    def underruns(self) -> int:
        return self._retired_underruns + self.playout.underruns

    @property
    def ducks(self) -> tuple[int, int]:
        """(agent ducked at a caller's onset, ducks restored because nothing confirmed a barge-in)."""
        return self._retired_ducks[0] + self.ducker.ducks, self._retired_ducks[1] + self.ducker.restores

    @property
    def gate_closures(self) -> int:
        return self._retired_closures + self.gate.closures

    @property
    def agent_audible(self) -> bool:
        """Our audio is playing or queued."""
        return self.playout.playing_item is not None or not self.playout.idle

    def gate_view(self, wire: bytes | bytearray) -> bytes | bytearray:
        """A wire frame as the gate takes it: PCM16 little-endian at the wire rate."""
        if self.wire == "ulaw":
            return ulaw_decode(wire)
        if self.wire == "slin_be":
            return swap16(wire)
        return wire

    def caller_frame_missing(self) -> bool:
        """Once per tick: True when the caller's frame for this slot has not come (it is then counted as
        padded; the caller side sends silence to the model in its place)."""
        self.ticks += 1
        if self.frames_in < self.ticks - INPUT_SLACK_FRAMES:
            self.frames_in += 1
            self.padded_frames += 1
            return True
        return False

    def reformat(self, wire: str) -> None:
        """Asterisk sends another format than expected: follow it. Queued agent audio is converted."""
        if wire == self.wire:
            return
        old_wire, old = self.wire, self.playout
        self._retired_underruns += old.underruns
        self._retired_closures += self.gate.closures
        self._retired_ducks = self.ducks
        self._build(wire)
        back = Converter(old_wire, self.provider)  # old wire -> provider: the inverse of what queued it
        for item_id, audio, ended in old.pending():
            self.playout.push(item_id, self.conv.to_wire(back.to_provider(audio)))
            if ended:
                tail = self.conv.drain_wire()
                if tail:
                    self.playout.push(item_id, tail)
                self.playout.end_item(item_id)


def swap16(data: bytes | bytearray) -> bytes:
    b = bytearray(data)
    b[0::2], b[1::2] = data[1::2], data[0::2]
    return bytes(b)
