"""The conversation of one session: its items in order, their audio, and the user-turn count.

Items are the dicts the wire shows (`conversation.item.*`, `response.output_item.*`). Audio is kept
apart, per item, in the format it travelled in, so that events never carry it except `retrieved`.

User turns: the turn index that picks a scripted reply is the number of user messages added to the
conversation so far, whether committed from audio (VAD or `input_audio_buffer.commit`) or created as
items (a client replaying history after a reconnect creates them). Deleting an item does not lower it;
the silent item an idle timeout commits does not count.
"""

from __future__ import annotations

import base64
import copy
from typing import Any


class Conversation:
    def __init__(self) -> None:
        self.items: list[dict[str, Any]] = []
        self.audio: dict[str, bytearray] = {}  # item id → audio bytes (input or output format)
        self.audio_format: dict[str, str] = {}  # item id → "audio/pcm" | "audio/pcmu" | "audio/pcma"
        self.audio_ms: dict[str, float] = {}  # item id → current length of that audio (after truncation)
        self.emitted_ms: dict[str, float] = {}  # assistant item id → ms of audio sent in deltas
        self.truncated: set[str] = set()  # assistant items cut by conversation.item.truncate
        self.user_turns = 0
        self.call_ids: set[str] = set()  # function calls made or replayed, for function_call_output checks

    def find(self, item_id: Any) -> dict[str, Any] | None:
        return next((item for item in self.items if item["id"] == item_id), None)

    def last_id(self) -> str | None:
        return self.items[-1]["id"] if self.items else None

    def add(self, item: dict[str, Any], after: str | None = None, count_turn: bool = True) -> str | None:
        """Append `item` (or insert it after the item `after`; "root" = at the start). Returns the id of
        the item now before it, the `previous_item_id` the server reports."""
        if after is None:
            index = len(self.items)
        elif after == "root":
            index = 0
        else:
            index = next(i for i, it in enumerate(self.items) if it["id"] == after) + 1
        self.items.insert(index, item)
        if count_turn and item.get("type") == "message" and item.get("role") == "user":
            self.user_turns += 1
        if item.get("type") == "function_call" and item.get("call_id"):
            self.call_ids.add(item["call_id"])
        return self.items[index - 1]["id"] if index else None

    def previous_of(self, item_id: str) -> str | None:
        for i, item in enumerate(self.items):
            if item["id"] == item_id:
                return self.items[i - 1]["id"] if i else None
        return None

    def delete(self, item_id: str) -> None:
        self.items = [item for item in self.items if item["id"] != item_id]
        self.audio.pop(item_id, None)
        self.audio_format.pop(item_id, None)
        self.audio_ms.pop(item_id, None)

    def retrieved(self, item_id: str) -> dict[str, Any] | None:
        """The item as `conversation.item.retrieved` shows it: with its audio, base64."""
        item = self.find(item_id)
        if item is None:
            return None
        item = copy.deepcopy(item)
        audio = self.audio.get(item_id)
        if audio is not None:
            for part in item.get("content", []):
                if part.get("type") in ("input_audio", "output_audio"):
                    part["audio"] = base64.b64encode(bytes(audio)).decode()
        return item

    def pending_calls(self) -> list[str]:
        """Call ids of function calls in the conversation that have no output yet."""
        answered = {i.get("call_id") for i in self.items if i["type"] == "function_call_output"}
        return [i["call_id"] for i in self.items if i["type"] == "function_call" and i["call_id"] not in answered]

    def latest_output(self) -> str:
        return next((str(i.get("output", "")) for i in reversed(self.items) if i["type"] == "function_call_output"), "")
