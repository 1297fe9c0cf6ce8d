"""The tool registry: flat Realtime schemas, argument structs in step with them, bad arguments as messages."""

from __future__ import annotations

import msgspec
import pytest

from shared.config import load_config
from shared.config.schema import ALL_TOOLS
from shared.tool_schemas import ARGS, parse_arguments, realtime_tools
from tests.conftest import CONFIG


@pytest.fixture
def config(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    return load_config(CONFIG).config


def test_every_tool_has_a_flat_schema_matching_its_argument_struct(config):
    tools = {t["name"]: t for t in realtime_tools(config, list(ALL_TOOLS))}
    assert set(tools) == set(ARGS) == set(ALL_TOOLS)
    for name, tool in tools.items():
        assert tool["type"] == "function" and "function" not in tool  # flat, not the Chat Completions shape
        assert len(tool["description"]) > 20
        params = tool["parameters"]
        fields = {f.name: f for f in msgspec.structs.fields(ARGS[name])}
        assert set(params["properties"]) == set(fields), name
        required = {n for n, f in fields.items() if f.required}
        assert set(params.get("required", [])) == required, name
    # The model can only pick configured destinations.
    assert tools["transfer"]["parameters"]["properties"]["destination"]["enum"] == ["sales", "support"]


@pytest.mark.parametrize(
    "name,arguments,message",
    [
        ("transfer", "{}", "missing required field `destination`"),
        ("transfer", '{"destination": 5}', "Expected `str`"),
        ("hangup_call", '{"farewell": "bye", "extra": 1}', "unknown field `extra`"),
        ("request_transcript", "not json", "invalid arguments for request_transcript"),
        ("format_disk", "{}", "there is no tool named 'format_disk'"),
    ],
)
def test_bad_arguments_become_a_message_for_the_model(name, arguments, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("`", "`")):
        parse_arguments(name, arguments)


def test_good_arguments_parse():
    assert parse_arguments("transfer", '{"destination": "sales"}').destination == "sales"
    assert parse_arguments("hangup_call", "").farewell == ""
    assert parse_arguments("request_transcript", '{"email": "a at b dot com", "confirmed": true}').confirmed
