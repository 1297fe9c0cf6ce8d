"""Request parameters the way ARI reads them: query parameters, overridden by same-named fields of a JSON
body (Asterisk's *_parse_body), `allowMultiple` lists as repeats or comma-separated, and body `variables`."""

from __future__ import annotations

from typing import Any

from sim.asterisk.errors import bad_request


class Params:
    def __init__(self, query: dict[str, list[str]], body: Any):
        self.query = query
        self.body = body if isinstance(body, dict) else {}

    def get(self, name: str) -> str | None:
        if name in self.body and self.body[name] is not None and not isinstance(self.body[name], (dict, list)):
            value = self.body[name]
            if isinstance(value, bool):
                return "true" if value else "false"
            return str(value)
        values = self.query.get(name)
        return values[0] if values else None

    def list(self, name: str) -> list[str]:
        raw: list[str] = []
        if isinstance(self.body.get(name), list):
            raw = [str(v) for v in self.body[name]]
        elif name in self.body and self.body[name] is not None:
            raw = [str(self.body[name])]
        else:
            raw = self.query.get(name, [])
        out: list[str] = []
        for item in raw:
            out.extend(part.strip() for part in item.split(",") if part.strip())
        return out

    def int(self, name: str, default: int = 0) -> int:
        value = self.get(name)
        if value is None or value == "":
            return default
        try:
            return int(value)
        except ValueError:
            return default

    def bool(self, name: str, default: bool = False) -> bool:
        value = self.get(name)
        if value is None:
            return default
        return value.lower() in ("true", "yes", "1", "on")

    def variables(self) -> dict[str, str]:
        """Body `variables`: string values, or {"value": ..., "report_events": ...} objects."""
        raw = self.body.get("variables")
        if raw is None:
            return {}
        if not isinstance(raw, dict):
            raise bad_request("Only string values in the 'variables' object allowed")
        out: dict[str, str] = {}
        for key, value in raw.items():
            if isinstance(value, dict) and "value" in value:
                value = value["value"]
            if not isinstance(value, str):
                raise bad_request("Only string values in the 'variables' object allowed")
            out[str(key)] = value
        return out
