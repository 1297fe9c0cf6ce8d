"""The `{caller_name}`-style variables of greetings and prompts: what the controller fills in per call, and
what check-config reports as unknown. One module so the two can never disagree."""

from __future__ import annotations

import string

# Filled per call by the controller (controller/contexts.py); anything else is left as written.
TEMPLATE_VARIABLES = ("caller_name", "caller_number", "company_name")


class Template(string.Formatter):
    """str.format that leaves unknown `{names}` (and stray braces) as written instead of raising: a prompt
    that talks about JSON must not break the call."""

    def __init__(self, values: dict[str, str]):
        self.values = values

    def fill(self, text: str) -> str:
        try:
            parsed = list(self.parse(text))
        except ValueError:  # an unmatched brace: leave the text alone
            return text
        out = []
        for literal, field, spec, conv in parsed:
            out.append(literal)
            if field is None:
                continue
            if field in self.values and not spec and not conv:
                out.append(self.values[field])
            else:
                out.append("{" + field + (("!" + conv) if conv else "") + ((":" + spec) if spec else "") + "}")
        return "".join(out)


def unknown_variables(text: str) -> list[str]:
    """The `{name}` fields of `text` that look meant as variables (an identifier, no format spec) but are not
    one of TEMPLATE_VARIABLES: they would reach the caller or the model as written. JSON in a prompt
    (`{"a": 1}`) and stray braces are not variables and are left alone, as `Template.fill` leaves them."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError:
        return []
    found = []
    for _literal, field, spec, conv in parsed:
        if field and field.isidentifier() and not spec and not conv and field not in TEMPLATE_VARIABLES:
            if field not in found:
                found.append(field)
    return found
