"""The real Asterisk judges the simulator's module answers (tests/test_sim_modules.py's table)."""

from __future__ import annotations

import pytest

from tests.test_sim_modules import ANSWERS, comparable

pytestmark = pytest.mark.realpbx


@pytest.mark.parametrize("name", list(ANSWERS))
def test_the_real_asterisk_answers_module_requests_as_recorded(real_asterisk, name):
    status, body = real_asterisk.ari("GET", f"/asterisk/modules/{name}")
    assert (status, comparable(body)) == ANSWERS[name]
