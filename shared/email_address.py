"""Email addresses the caller spells by voice: "john dot smith at example dot com" -> john.smith@example.com.

Pure functions shared by the media worker (the model's `request_transcript` argument) and the tool worker
(validation before sending). A parse that does not give one valid address returns None: the model must ask
again rather than send a transcript to a guess.
"""

from __future__ import annotations

import re

# A practical subset of RFC 5321: what callers have and what every MTA accepts. Matched with fullmatch: a
# `$` anchor also matches before a trailing newline, and "a@b.com\n" would pass into an SMTP envelope.
_LOCAL = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+(?:\.[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+)*")
_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")
_TLD = re.compile(r"[A-Za-z]{2,63}|xn--[A-Za-z0-9-]{1,59}")
_WRITTEN = re.compile(r"[A-Za-z0-9.!#$%&'*+/=?^_`{|}~-]+@[A-Za-z0-9.-]+")

_SYMBOLS = {
    "dot": ".",
    "period": ".",
    "point": ".",
    "full stop": ".",
    "underscore": "_",
    "under score": "_",
    "dash": "-",
    "hyphen": "-",
    "minus": "-",
    "plus": "+",
    "at": "@",
    "at sign": "@",
    "at symbol": "@",
    "at the rate": "@",
    "at the rate of": "@",
    "@": "@",
    "dotcom": ".com",
    "dotnet": ".net",
    "dotorg": ".org",
}
_DIGITS = {
    "zero": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
_REPEAT = {"double": 2, "triple": 3}
_CAPITAL = {"capital", "uppercase", "upper", "cap"}
# Said without ".com": "john at gmail".
_PROVIDERS = {
    "gmail": "gmail.com",
    "googlemail": "googlemail.com",
    "hotmail": "hotmail.com",
    "yahoo": "yahoo.com",
    "outlook": "outlook.com",
    "icloud": "icloud.com",
    "aol": "aol.com",
    "protonmail": "protonmail.com",
    "live": "live.com",
    "msn": "msn.com",
}
# "g mail", "hot mail": providers said as two words.
_SPLIT_PROVIDERS = {
    ("g", "mail"): "gmail",
    ("hot", "mail"): "hotmail",
    ("proton", "mail"): "protonmail",
    ("i", "cloud"): "icloud",
    ("out", "look"): "outlook",
}
_LEAD_IN = re.compile(
    r"^(?:(?:yes|yeah|yep|sure|ok|okay|so|um|uh|well|right)\b[\s,.]*)*"
    r"(?:(?:it'?s|it is|that'?s|that is|my|the|your)\s+)*"
    r"(?:(?:e-?mail(?:\s+address)?|address)\s+)?(?:is\s+|would be\s+)?",
    re.IGNORECASE,
)
_LITERAL = "\x00"  # a token that is a plain word even if it spells a symbol
_PUNCT = str.maketrans({c: " " for c in ',;:!?"()[]<>'})


def validate_email(addr: str) -> bool:
    """One @, a local part of allowed characters without stray dots, a dotted domain with a letter TLD."""
    if not isinstance(addr, str) or len(addr) > 254 or addr.count("@") != 1:
        return False
    local, domain = addr.split("@")
    if not local or len(local) > 64 or not _LOCAL.fullmatch(local):
        return False
    labels = domain.split(".")
    if len(labels) < 2 or not all(_LABEL.fullmatch(label) for label in labels):
        return False
    return bool(_TLD.fullmatch(labels[-1]))


def _normalise(addr: str) -> str:
    local, domain = addr.split("@")
    return f"{local}@{domain.lower()}"


def _tokens(text: str) -> list[str]:
    # "@" and "." stuck to words ("john.smith", "example.com") become their own tokens.
    text = re.sub(r"([@.+_])", r" \1 ", text.translate(_PUNCT))
    return [t for t in text.split() if t]


def _translate(tokens: list[str]) -> str:
    out: list[str] = []
    i = 0
    capital = False
    while i < len(tokens):
        word = tokens[i]
        low = word.lower()
        if word.startswith(_LITERAL):
            out.append(word[1:].lower())
            i += 1
            capital = False
            continue
        pair = tuple(t.lower() for t in tokens[i : i + 2])
        # Longest spoken symbol first: "at the rate of", "at sign", "under score".
        for size in (4, 3, 2):
            phrase = " ".join(t.lower() for t in tokens[i : i + size])
            if len(tokens[i : i + size]) == size and phrase in _SYMBOLS:
                out.append(_SYMBOLS[phrase])
                i += size
                break
        else:
            if pair in _SPLIT_PROVIDERS:
                out.append(_SPLIT_PROVIDERS[pair])
                i += 2
            elif low in _CAPITAL and i + 1 < len(tokens) and len(tokens[i + 1]) == 1:
                capital = True
                i += 1
                continue
            elif low in _REPEAT and i + 1 < len(tokens):
                nxt = tokens[i + 1].lower()
                out.append(_DIGITS.get(nxt, nxt) * _REPEAT[low])
                i += 2
            elif low in _SYMBOLS:
                out.append(_SYMBOLS[low])
                i += 1
            elif low in _DIGITS:
                out.append(_DIGITS[low])
                i += 1
            else:
                out.append(word.upper() if capital else low)
                i += 1
        capital = False
    return "".join(out)


def parse_spoken_email(text: str) -> str | None:
    """The address a caller said (or a transcript wrote), or None when it does not give one valid address."""
    if not text or not text.strip():
        return None
    raw = text.strip().strip(".,!?;:'\" ")
    # Already written: "john.smith@example.com" (possibly inside a sentence).
    written = [m.group(0).strip(".-") for m in _WRITTEN.finditer(raw)]
    if len(written) == 1 and validate_email(written[0]):
        return _normalise(written[0])
    tokens = _tokens(_LEAD_IN.sub("", raw, count=1))
    if not tokens:
        return None
    # "at" is the separator; when said twice, the last one is (domains rarely hold the word).
    ats = [i for i, t in enumerate(tokens) if t.lower() in ("at", "@")]
    tokens = [_LITERAL + t if i in ats[:-1] else t for i, t in enumerate(tokens)]
    addr = _translate(tokens)
    if addr.count("@") == 1:
        local, domain = addr.split("@")
        domain = domain.lower().strip(".")
        if "." not in domain and domain in _PROVIDERS:
            domain = _PROVIDERS[domain]
        addr = f"{local}@{domain}"
    return _normalise(addr) if validate_email(addr) else None


_SPOKEN_SYMBOL = {".": "dot", "_": "underscore", "-": "dash", "+": "plus"}


def spell_back(addr: str) -> str:
    """How the agent reads an address back for confirmation: the local part letter by letter, the domain by
    its words ("j o h n dot s m i t h at example dot com")."""
    local, _, domain = addr.partition("@")
    parts: list[str] = []
    for ch in local:
        if ch in _SPOKEN_SYMBOL:
            parts.append(_SPOKEN_SYMBOL[ch])
        elif ch.isupper():
            parts.append(f"capital {ch.lower()}")
        else:
            parts.append(ch)
    if domain:
        parts.append("at")
        for i, label in enumerate(domain.split(".")):
            if i:
                parts.append("dot")
            parts.append(" dash ".join(label.split("-")))
    return " ".join(parts)
