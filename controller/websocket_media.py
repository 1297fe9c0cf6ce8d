"""The controller's part of WebSocket media (chan_websocket, server mode; media_worker/transport/websocket_media.py
says why this direction): the externalMedia parameters, the hand-over of the connection id to the worker, and
adding the media channel to the bridge once it is in Stasis.

On 22.10.1 the media channel is created Down and enters Stasis only when the worker has connected (Asterisk
answers it then), so addChannel before that answers 422 "Channel not in Stasis application": the add is
retried until the channel is in, within the setup's deadline.
"""

from __future__ import annotations

import asyncio
import time

from controller.ari.errors import AriError
from controller.ari.resources import Channel
from shared.config.schema import Config
from shared.messages import MediaReady, inbox_fields

CONNECTION_ID_VAR = "MEDIA_WEBSOCKET_CONNECTION_ID"
FRAME_SIZE_VAR = "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE"
INBOX_MAXLEN = 10_000
# Pauses between addChannel attempts: the worker usually connects within a few ms of the hand-over, and the
# greeting waits for the bridge, so the first retries are tight; then they back off.
ADD_RETRY_S = 0.004
ADD_RETRY_MAX_S = 0.05

# externalMedia for WebSocket server mode: no external_host; Asterisk hands out a connection id.
EXTERNAL_MEDIA = dict(external_host="", encapsulation="none", transport="websocket", connection_type="server")


def media_base_url(config: Config) -> str:
    return config.asterisk.media_websocket_url or config.asterisk.ari_url


def connection_id(channel: Channel) -> str:
    """The connection id from externalMedia's answer (its channelvars); "" when missing."""
    return (channel.channelvars or {}).get(CONNECTION_ID_VAR) or ""


async def send_media_ready(redis, keys, worker_id: str, ready: MediaReady) -> None:
    await redis.xadd(keys.worker_inbox(worker_id), inbox_fields("media", ready), maxlen=INBOX_MAXLEN,
                     approximate=True)


async def add_when_in_stasis(rest, bridge_id: str, channel_id: str, timeout: float) -> None:
    """addChannel, retried on 422 (the channel is not in Stasis yet: the worker has not connected) until
    `timeout`; the last 422 is raised then."""
    deadline = time.monotonic() + timeout
    pause = ADD_RETRY_S
    while True:
        try:
            await rest.add_channel(bridge_id, channel_id)
            return
        except AriError as exc:
            if exc.status != 422 or time.monotonic() + pause > deadline:
                raise
        await asyncio.sleep(pause)
        pause = min(pause * 2, ADD_RETRY_MAX_S)
