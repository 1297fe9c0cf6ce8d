"""YAML config: shared/config/load.parse_config (parse, expand ${VAR}, check, build) on any document.

Inputs: the shipped config mutated (values replaced, keys dropped or added, placeholders put in), any YAML
document, any text, the shipped text garbled, and the documents that attack a YAML loader: aliases of aliases
(billion laughs), recursive aliases, deep nesting, scalars PyYAML cannot build. Allowed outcomes: a loaded
config, or a ConfigError whose message says why; never another exception, never a hang (the
harness's CPU bound per document)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from shared.config.load import ConfigError, LoadedConfig, parse_config
from tests.fuzz.harness import examples, garbled, json_values, mutated, odd_numbered, time_bound

pytestmark = [pytest.mark.fuzz, pytest.mark.slow]

SHIPPED = (Path(__file__).resolve().parents[2] / "config" / "ai-agent.yaml").read_text()
TREE = yaml.safe_load(SHIPPED)
ENV = {
    "OPENAI_API_KEY": "sk-fuzz",
    "ASTERISK_ARI_PASSWORD": "pw",
    "ODD_DATE": "2024-13-01",
    "DEEP": "[" * 3000,
    "BIG": "1" + "0" * 5000,
    "EMPTY": "",
}
PLACEHOLDERS = st.sampled_from(
    [
        "${ODD_DATE}",
        "${DEEP}",
        "${BIG}",
        "${EMPTY}",
        "${MISSING}",
        "${MISSING:-3}",
        "${BAD NAME}",
        "$${X}",
        "${",
        "x${BIG}",
    ]
)
KEYS = sorted({key for section in TREE.values() if isinstance(section, dict) for key in section} | set(TREE))


def _dump(value) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True)


@st.composite
def alias_bombs(draw: st.DrawFn) -> str:
    """`levels` anchors, each a list of `width` aliases of the one before: width**levels values as a tree."""
    levels, width = draw(st.integers(2, 9)), draw(st.integers(2, 10))
    lines = [f"l0: &l0 [{', '.join(['lol'] * width)}]"]
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * width)}]")
    section = draw(st.sampled_from(["tools", "media_worker", "contexts", ""]))
    if section:  # inside a real section too, where the checker walks it
        lines.append(f"{section}: {{x: *l{levels - 1}}}")
    return "\n".join(lines) + "\n"


ATTACKS = st.one_of(
    alias_bombs(),
    st.sampled_from(["a: &a [*a]\n", "a: &a {b: *a}\n", "x: &x {<<: *x}\n", "asterisk: &a {ari_url: *a}\n"]),
    st.integers(100, 3000).map(lambda n: "x: " + "[" * n + "]" * n + "\n"),
    st.integers(100, 3000).map(lambda n: "x: " + "{a: " * n + "1" + "}" * n + "\n"),
    st.sampled_from(
        [
            "a: 2024-13-01\n",
            "a: !!timestamp x\n",
            "a: !!float x\n",
            "a: !!int 0x\n",
            "media_worker: {capacity: 1" + "0" * 5000 + "}\n",
            "a: !!binary '@@@'\n",
            "a: !!python/object:os.system x\n",
            "? [a, b]\n: 1\n",
            "a: !!set [1]\n",
        ]
    ),  # fmt: skip
)

documents = st.one_of(
    mutated(TREE, KEYS).map(_dump),
    mutated(TREE, KEYS).flatmap(lambda t: mutated(t, KEYS)).map(_dump),
    odd_numbered(TREE).map(_dump),
    st.builds(lambda tree, p: _dump(tree).replace("127.0.0.1", p, 1), mutated(TREE, KEYS), PLACEHOLDERS),
    st.dictionaries(st.sampled_from(KEYS) | st.text(max_size=6), json_values, max_size=5).map(_dump),
    json_values.map(_dump),
    st.text(alphabet=st.sampled_from(list("ab:- {}[]&*!|>'\"#\n\t%@`?,$0")), max_size=60),
    garbled(SHIPPED.encode()).map(lambda b: b.decode("utf-8", "replace")),
    ATTACKS,
)


@pytest.mark.surface("config (YAML)")
@settings(max_examples=examples())
@given(text=documents)
def test_any_document_loads_or_is_a_config_error(surface, text):
    surface.example()
    with time_bound():  # deep documents are refused from their tokens, before PyYAML builds anything
        try:
            loaded = parse_config(text, "fuzz.yaml", ENV)
        except ConfigError as exc:
            assert exc.problems and all(p.message for p in exc.problems)
            assert "sk-fuzz" not in str(exc)  # the key never reaches an error message
            return
    assert isinstance(loaded, LoadedConfig)
