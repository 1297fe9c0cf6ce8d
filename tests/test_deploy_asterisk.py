"""The Asterisk samples in deploy/asterisk agree with the config, the user guide and each other."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import pytest

from controller.ari.rest import MAX_CONNECTIONS as ARI_MAX_CONNECTIONS
from shared.config import load_config
from shared.config.schema import Config

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy" / "asterisk"
# The user guide's entry context, step by step (its dialplan block; the shipped file adds the fallback line).
GUIDE_STEPS = [
    "NoOp(AI Voice Agent - OpenAI Realtime)",
    "Set(AI_CONTEXT=demo_openai)",
    "Set(AI_PROVIDER=openai_realtime)",
    "Stasis(asterisk-ai-voice-agent)",
    "Hangup()",
]
DIALPLAN_FILES = ("extensions_custom.conf", "extensions_plain_asterisk.conf")


# --- a tiny reader for Asterisk's config syntax -------------------------------------------------------------


@dataclass
class Step:
    exten: str
    priority: str  # "1", "2", ... ("n" and "same" are numbered as Asterisk does)
    app: str  # "Set(AI_CONTEXT=sales)"


@dataclass
class Section:
    keys: dict[str, str] = field(default_factory=dict)
    steps: list[Step] = field(default_factory=list)


def strip_comment(line: str) -> str:
    # `;` starts a comment unless escaped as `\;`.
    return re.split(r"(?<!\\);", line, maxsplit=1)[0].strip()


def parse_conf(text: str) -> dict[str, Section]:
    sections: dict[str, Section] = {}
    current: Section | None = None
    last_exten = ""
    last_priority = 0
    for raw in text.splitlines():
        line = strip_comment(raw)
        if not line or line.startswith("#"):
            continue
        header = re.fullmatch(r"\[([^\]]+)\](\(.*\))?", line)
        if header:
            # A context named twice is merged by Asterisk, and so here.
            current = sections.setdefault(header.group(1), Section())
            continue
        assert current is not None, f"line outside a section: {raw!r}"
        pair = re.fullmatch(r"([\w-]+)\s*=>?\s*(.*)", line)
        assert pair, f"not a key/value line: {raw!r}"
        key, value = pair.groups()
        if key in ("exten", "same"):
            if key == "exten":
                last_exten, priority, app = value.split(",", 2)
            else:
                priority, app = value.split(",", 1)
            last_priority = last_priority + 1 if priority == "n" else int(priority)
            current.steps.append(Step(last_exten, str(last_priority), app))
        else:
            current.keys[key] = value
    return sections


def read(name: str) -> dict[str, Section]:
    return parse_conf((DEPLOY / name).read_text(encoding="utf-8"))


def dialplan() -> dict[str, Section]:
    merged: dict[str, Section] = {}
    for name in DIALPLAN_FILES:
        for context, section in read(name).items():
            merged.setdefault(context, Section()).steps.extend(section.steps)
    return merged


def exten_matches(pattern: str, exten: str) -> bool:
    """Asterisk's `_` patterns: X 0-9, Z 1-9, N 2-9, [..] a class, `.` one or more, `!` zero or more."""
    if not pattern.startswith("_"):
        return pattern == exten
    parts = {"X": "[0-9]", "Z": "[1-9]", "N": "[2-9]", ".": ".+", "!": ".*"}
    regex = re.sub(
        r"\[[^\]]*\]|.",
        lambda m: m.group(0) if m.group(0).startswith("[") else parts.get(m.group(0).upper(), re.escape(m.group(0))),
        pattern[1:],
    )
    return re.fullmatch(regex, exten) is not None


def has_exten(section: Section, exten: str) -> bool:
    return any(exten_matches(step.exten, exten) for step in section.steps)


def app_args(app: str, name: str) -> str | None:
    match = re.fullmatch(rf"{name}\((.*)\)", app)
    return match.group(1) if match else None


def goto_targets(context: str, step: Step) -> list[tuple[str, str]]:
    """(context, extension) of every branch of a Goto or GotoIf; a short label stays in the same context."""
    labels: list[str] = []
    if (args := app_args(step.app, "Goto")) is not None:
        labels = [args]
    elif (args := app_args(step.app, "GotoIf")) is not None:
        _, _, branches = args.rpartition("?")
        labels = [b for b in branches.split(":") if b]
    targets = []
    for label in labels:
        fields = [f.strip() for f in label.split(",")]
        if len(fields) == 3:
            targets.append((fields[0], fields[1]))
        elif len(fields) == 2:
            targets.append((context, fields[0]))
        else:
            targets.append((context, step.exten))
    return targets


def set_values(section: Section) -> dict[str, str]:
    values = {}
    for step in section.steps:
        args = app_args(step.app, "Set")
        if args is not None:
            name, _, value = args.partition("=")
            values[name] = value
    return values


def entry_contexts(plan: dict[str, Section]) -> dict[str, Section]:
    return {name: s for name, s in plan.items() if any(app_args(st.app, "Stasis") for st in s.steps)}


def freepbx_provided(readme: str) -> set[str]:
    """The contexts the README names in its "FreePBX already has ..." sentence."""
    match = re.search(r"FreePBX already has (.*?):", readme, re.S)
    assert match, "README.md must say which contexts FreePBX already has"
    return set(re.findall(r"`([^`]+)`", match.group(1)))


@pytest.fixture
def config(monkeypatch) -> Config:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-deploy")
    for name in ("ASTERISK_ARI_URL", "ASTERISK_ARI_USERNAME", "ASTERISK_ARI_PASSWORD"):
        monkeypatch.delenv(name, raising=False)  # the shipped defaults, not the developer's Asterisk
    return load_config(ROOT / "config" / "ai-agent.yaml").config


@pytest.fixture
def readme() -> str:
    return (DEPLOY / "README.md").read_text(encoding="utf-8")


# --- the reader itself --------------------------------------------------------------------------------------


def test_reader_numbers_priorities_and_strips_comments():
    sections = parse_conf(
        "[general]\nenabled = yes ; on\n[c]\nexten => s,1,NoOp(a)\n same => n,Set(X=1\\;2)\n"
        "exten => s,n,Hangup()\n#include other.conf\n"
    )
    assert sections["general"].keys == {"enabled": "yes"}
    assert [(s.exten, s.priority, s.app) for s in sections["c"].steps] == [
        ("s", "1", "NoOp(a)"),
        ("s", "2", "Set(X=1\\;2)"),
        ("s", "3", "Hangup()"),
    ]
    assert exten_matches("_X.", "6001") and not exten_matches("_X.", "support")
    assert exten_matches("_vmX.", "vm100") and not exten_matches("_vmX.", "vm")
    assert exten_matches("_[a-c]!", "b") and not exten_matches("600", "6001")


# --- ari.conf and http.conf --------------------------------------------------------------------------------


def test_ari_conf_puts_both_variables_into_stasis_start():
    general = read("ari.conf")["general"].keys
    assert general["enabled"] == "yes"
    assert general["pretty"] == "no"
    assert general["allowed_origins"] and general["allowed_origins"] != "*"
    channelvars = [v.strip() for v in general["channelvars"].split(",")]
    assert {"AI_CONTEXT", "AI_PROVIDER"} <= set(channelvars)


def test_ari_user_is_the_configured_one(config):
    users = {name: s.keys for name, s in read("ari.conf").items() if s.keys.get("type") == "user"}
    assert list(users) == [config.asterisk.username]
    user = users[config.asterisk.username]
    assert user["read_only"] == "no"
    # A placeholder the admin must replace, never an empty or real-looking password.
    assert "CHANGE_ME" in user["password"]


def test_http_conf_serves_the_configured_ari_port(config):
    general = read("http.conf")["general"].keys
    assert general["enabled"] == "yes"
    assert general["bindaddr"] == "127.0.0.1"
    assert int(general["bindport"]) == urlparse(config.asterisk.ari_url).port == 8088


def test_http_conf_admits_the_controllers_connections_with_room_for_others():
    """Asterisk closes connections beyond sessionlimit unanswered (100 when unset, issue 19's ramps hit it): the
    shipped limit holds the controller's whole pool twice over (another controller taking over, doctor, ...)."""
    general = read("http.conf")["general"].keys
    assert int(general["sessionlimit"]) >= 2 * ARI_MAX_CONNECTIONS
    assert ARI_MAX_CONNECTIONS < 100  # and the pool fits an Asterisk whose http.conf does not set it


# --- the dialplan --------------------------------------------------------------------------------------------


def test_every_entry_context_uses_the_configured_app_and_has_a_fallback(config):
    plan = dialplan()
    entries = entry_contexts(plan)
    assert {"from-ai-agent-openai", "from-ai-agent-sales"} <= set(entries)
    for name, section in entries.items():
        apps = [step.app for step in section.steps]
        stasis = [i for i, app in enumerate(apps) if app_args(app, "Stasis") is not None]
        assert [app_args(apps[i], "Stasis") for i in stasis] == [config.asterisk.app_name], name
        after = apps[stasis[0] + 1 :]
        fallback = [app for app in after if app_args(app, "GotoIf") is not None]
        assert fallback and '"${STASISSTATUS}"="FAILED"' in fallback[0], name
        assert after.index(fallback[0]) < after.index("Hangup()"), name
        values = set_values(section)
        assert values["AI_PROVIDER"] == "openai_realtime", name
        assert apps.index(f"Set(AI_CONTEXT={values['AI_CONTEXT']})") < stasis[0], name


def test_the_guide_context_is_the_guides_plus_the_fallback_line(config):
    section = dialplan()["from-ai-agent-openai"]
    values = set_values(section)
    assert values["AI_CONTEXT"] in config.contexts
    assert values["AI_CONTEXT"] == "demo_openai"
    gotoif = [s for s in section.steps if s.app.startswith("GotoIf(")]
    assert goto_targets("from-ai-agent-openai", gotoif[0]) == [("ai-agent-fallback", "s")]
    assert has_exten(dialplan()["ai-agent-fallback"], "s")
    ours = [s.app for s in section.steps if s not in gotoif]
    assert ours == GUIDE_STEPS


def test_other_entry_contexts_are_in_the_config_or_the_readme_says_to_add_them(config, readme):
    for name, section in entry_contexts(dialplan()).items():
        context = set_values(section)["AI_CONTEXT"]
        assert context in config.contexts or f"`{context}:`" in readme, (name, context)


def test_every_goto_lands_on_a_defined_extension():
    plan = dialplan()
    seen = 0
    for context, section in plan.items():
        for step in section.steps:
            for target, exten in goto_targets(context, step):
                seen += 1
                assert target in plan, (context, step.app)
                assert has_exten(plan[target], exten), (context, step.app)
    assert seen >= 2


def test_the_fallback_never_leaves_the_caller_in_silence():
    apps = [step.app.split("(")[0] for step in dialplan()["ai-agent-fallback"].steps]
    assert {"VoiceMail", "Queue", "Dial", "Goto", "Playback"} & set(apps)


# --- the tools' dialplan targets ---------------------------------------------------------------------------


def handoff_targets(config: Config) -> list[tuple[str, str | None]]:
    """(context, extension or None) the transfer and voicemail tools continue into."""
    transfer = config.tools.transfer
    by_type = {
        "extension": transfer.extension_context,
        "queue": transfer.queue_context,
        "ringgroup": transfer.ringgroup_context,
    }
    targets: list[tuple[str, str | None]] = [(ctx, None) for ctx in by_type.values()]
    for dest in transfer.destinations.values():
        targets.append((dest.dialplan_context or by_type[dest.type], dest.target))
    voicemail = config.tools.leave_voicemail
    targets.append((voicemail.dialplan_context, voicemail.extension))
    return targets


def test_every_handoff_context_is_in_the_sample_or_provided_by_freepbx(config, readme):
    plan = dialplan()
    provided = freepbx_provided(readme)
    for context, _ in handoff_targets(config):
        assert context in plan or context in provided, context


def test_plain_asterisk_sample_reaches_every_configured_destination(config):
    plain = read("extensions_plain_asterisk.conf")
    for context, exten in handoff_targets(config):
        assert context in plain, context
        if exten is not None:
            assert has_exten(plain[context], exten), (context, exten)


def test_the_freepbx_file_never_redefines_freepbx_contexts(readme):
    provided = freepbx_provided(readme)
    assert {"from-internal", "ext-queues", "ext-group"} <= provided
    assert not provided & set(read("extensions_custom.conf"))


def test_readme_names_the_custom_destination_and_every_sample_file(readme):
    assert "`from-ai-agent-openai,s,1`" in readme
    assert "`OpenAI Realtime AI Agent`" in readme
    for path in DEPLOY.glob("*.conf"):
        assert f"`{path.name}`" in readme, path.name
