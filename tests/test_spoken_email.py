"""Addresses spelled by voice: spoken forms to addresses, invalid ones to None, and the spell-back."""

from __future__ import annotations

import pytest

from shared.email_address import parse_spoken_email, spell_back, validate_email

SPOKEN = [
    ("john dot smith at example dot com", "john.smith@example.com"),
    ("John Dot Smith At Example Dot Com.", "john.smith@example.com"),
    ("j o h n at example dot com", "john@example.com"),
    ("my email is john at gmail dot com", "john@gmail.com"),
    ("it's jane underscore doe at example dot org", "jane_doe@example.org"),
    ("sure, my email address is bob at example dot net!", "bob@example.net"),
    ("mary dash ann at example dot com", "mary-ann@example.com"),
    ("mary hyphen ann at my dash company dot co dot uk", "mary-ann@my-company.co.uk"),
    ("john plus calls at example dot com", "john+calls@example.com"),
    ("capital j o h n at example dot com", "John@example.com"),
    ("john one two three at example dot com", "john123@example.com"),
    ("f double o at example dot com", "foo@example.com"),
    ("agent double seven at example dot com", "agent77@example.com"),
    ("john at gmail", "john@gmail.com"),
    ("john at g mail dot com", "john@gmail.com"),
    ("alice at hotmail", "alice@hotmail.com"),
    ("alice at yahoo dot com", "alice@yahoo.com"),
    ("john.smith@example.com", "john.smith@example.com"),
    ("It is John.Smith@Example.COM.", "John.Smith@example.com"),
    ("john at sign example dot com", "john@example.com"),
    ("john at the rate of example dot com", "john@example.com"),
    ("john at example dotcom", "john@example.com"),
    ("pat at work at example dot com", "patatwork@example.com"),
    ("s m i t h period j at example period com", "smith.j@example.com"),
    ("zero nine eight at example dot io", "098@example.io"),
    ("jane doe at example dot com", "janedoe@example.com"),
    ("yeah it's sales at acme dash corp dot com", "sales@acme-corp.com"),
]

INVALID = [
    "",
    "   ",
    "john smith",  # no @
    "john at example",  # no dot in the domain, not a known provider
    "at example dot com",  # empty local part
    "john at dot com",  # empty domain label
    "john dot at example dot com",  # local part ends with a dot
    "john at example dot c",  # one-letter TLD
    "john at example dot one two three",  # numeric TLD
    "a@b@c.com",
    "john at example dot dot com",
]


@pytest.mark.parametrize("spoken,expected", SPOKEN)
def test_spoken_forms_give_the_address(spoken, expected):
    assert parse_spoken_email(spoken) == expected


@pytest.mark.parametrize("spoken", INVALID)
def test_invalid_forms_give_none(spoken):
    assert parse_spoken_email(spoken) is None


def test_unknown_words_join_the_address_rather_than_vanish():
    # Nothing is dropped silently: the spell-back lets the caller catch a mishearing.
    assert parse_spoken_email("john at exa mple dot com star") == "john@example.comstar"


@pytest.mark.parametrize(
    "addr,ok",
    [
        ("a@b.co", True),
        ("first.last+tag@sub.example.co.uk", True),
        ("x_y-z@ex-ample.com", True),
        ("a@b", False),
        ("a@@b.com", False),
        (".a@b.com", False),
        ("a..b@c.com", False),
        ("a@-b.com", False),
        ("a@b-.com", False),
        ("a b@c.com", False),
        ("a@b.c0m", False),
        ("a" * 65 + "@b.com", False),
        ("a@" + "b" * 250 + ".com", False),
        ("a@b.xn--p1ai", True),
        # `$` matched before a trailing newline: these went into the SMTP envelope.
        ("a@b.com\n", False),
        ("a\n@b.com", False),
        ("a@b\n.com", False),
    ],
)
def test_validate_email(addr, ok):
    assert validate_email(addr) is ok


def test_spell_back_spells_the_local_part_and_says_the_domain():
    assert spell_back("john.smith@example.com") == "j o h n dot s m i t h at example dot com"
    assert spell_back("Jo_e+1@my-co.co.uk") == "capital j o underscore e plus 1 at my dash co dot co dot uk"


def test_spell_back_of_a_parse_parses_back_to_the_same_address():
    for _, addr in SPOKEN:
        assert parse_spoken_email(spell_back(addr)) == addr
