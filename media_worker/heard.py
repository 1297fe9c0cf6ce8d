"""What the caller heard of the agent: each assistant transcript is logged once its audio is over, cut to the
part that was played (to the last whole word, with an ellipsis) when the caller interrupted it."""

from __future__ import annotations

from media_worker.audio.playout import PlayoutQueue
from media_worker.call_log import CallLog


class HeardTranscripts:
    def __init__(self, call_log: CallLog):
        self.call_log = call_log
        self._waiting: dict[str, str] = {}  # assistant item -> transcript, until its audio is over
        self._done: set[str] = set()  # items logged (or never to be logged)

    def add(self, item_id: str, text: str, playout: PlayoutQueue) -> None:
        if item_id not in self._done:
            self._waiting[item_id] = text
            self.log_heard(playout)

    def skip(self, item_id: str) -> None:
        """Never log this item (a reply without audio: the caller heard none of it)."""
        self._done.add(item_id)
        self._waiting.pop(item_id, None)

    def log_heard(self, playout: PlayoutQueue, item_cut: str | None = None, final: bool = False) -> None:
        """Log the items whose audio is over: played out, `item_cut` by the caller, or all at the call's end."""
        for item, text in list(self._waiting.items()):
            played = playout.played_ms(item)
            received = playout.received_ms(item)
            if item != item_cut and not final and (item == playout.playing_item or played < received):
                continue
            if received and played < received:
                text = cut(text, played / received)
            self._done.add(item)
            del self._waiting[item]
            if played > 0 or not received:
                self.call_log.utterance("assistant", text, item)


def cut(text: str, fraction: float) -> str:
    """The part of a transcript the caller heard, to the last whole word, with an ellipsis."""
    if fraction >= 1:
        return text
    end = int(len(text) * max(fraction, 0.0))
    head = text[:end]
    if end < len(text) and " " in head:
        head = head[: head.rfind(" ")]
    return (head.rstrip(" ,.;:") + "…") if head else ""
