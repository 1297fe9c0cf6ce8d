"""StasisLegs: ARI steps on our own legs wait for the leg's StasisStart, and a 422 is retried (the real
Asterisk answers externalMedia and /channels/create before the new channel is in Stasis)."""

from __future__ import annotations

import asyncio

import pytest

from controller import ids
from controller.ari.errors import AriError
from controller.stasis_legs import NotInStasis, StasisLegs


def not_in_stasis() -> AriError:
    return AriError(422, "Channel not in Stasis application", "POST", "/bridges/b/addChannel")


async def test_step_waits_for_the_legs_stasis_start():
    legs, done = StasisLegs(), []

    async def step():
        done.append(legs.is_in("em"))
        return "added"

    task = asyncio.create_task(legs.run("em", step, timeout_s=2))
    await asyncio.sleep(0.05)
    assert not task.done() and done == []
    legs.entered("em")
    assert await task == "added"
    assert done == [True]


async def test_stasis_start_before_the_rest_answer_counts():
    legs = StasisLegs()
    legs.entered("em")  # the event socket beat the REST answer

    async def step():
        return 1

    assert await legs.run("em", step, timeout_s=0.01) == 1


async def test_422_is_retried_until_it_succeeds():
    legs, calls = StasisLegs(), []
    legs.entered("em")

    async def step():
        calls.append(1)
        if len(calls) < 3:
            raise not_in_stasis()
        return "ok"

    assert await legs.run("em", step, timeout_s=2) == "ok"
    assert len(calls) == 3


async def test_a_422_that_never_stops_ends_in_not_in_stasis():
    legs = StasisLegs()
    legs.entered("em")

    async def step():
        raise not_in_stasis()

    with pytest.raises(NotInStasis, match="Channel not in Stasis application"):
        await legs.run("em", step, timeout_s=0.15)


async def test_a_409_not_in_stasis_from_a_channel_step_is_retried_too():
    legs, calls = StasisLegs(), []
    legs.entered("xfer1")

    async def dial():
        calls.append(1)
        if len(calls) < 2:
            raise AriError(409, "Channel not in Stasis application", "POST", "/channels/xfer1/dial")
        return "ringing"

    assert await legs.run("xfer1", dial, timeout_s=2) == "ringing"


async def test_other_errors_are_not_retried():
    legs, calls = StasisLegs(), []
    legs.entered("em")

    async def step():
        calls.append(1)
        raise AriError(404, "Bridge not found", "POST", "/bridges/b/addChannel")

    with pytest.raises(AriError) as info:
        await legs.run("em", step, timeout_s=2)
    assert info.value.status == 404 and calls == [1]


async def test_a_leg_that_never_enters_stasis_times_out_naming_it():
    legs = StasisLegs()

    async def step():  # pragma: no cover - must not run
        raise AssertionError("ran before StasisStart")

    with pytest.raises(NotInStasis, match="channel em did not enter Stasis"):
        await legs.run("em", step, timeout_s=0.05)


async def test_a_leg_that_left_must_enter_again():
    legs = StasisLegs()
    legs.entered("em")
    legs.left("em")
    assert not legs.is_in("em")


def test_retry_media_legs_have_their_own_ids():
    call_id = ids.new_call_id()
    first, second = ids.media_channel_id(call_id), ids.media_channel_id(call_id, 1)
    assert first == f"{call_id}-em" and second == f"{call_id}-em1"
    assert ids.owner(first) == (call_id, "em") and ids.owner(second) == (call_id, "em1")
