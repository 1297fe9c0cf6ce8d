"""The controller's part of WebSocket media (chan_websocket, server mode; media_worker/transport/websocket_media.py
says why this direction): the externalMedia parameters and the hand-over of the connection id to the worker.

On 22.10.1 the media channel is created Down and enters Stasis only once the worker has connected (Asterisk
answers it then), so its addChannel waits for that StasisStart like every leg's (controller/stasis_legs.py);
a worker that never connects fails the setup at controller.ari_timeout_ms and the call goes to another worker.
"""

from __future__ import annotations

from controller.ari.resources import Channel
from controller.ari.rest import MediaTransport
from controller.leadership import Leadership
from shared.config.schema import Config
from shared.messages import MediaBridged, MediaReady, inbox_fields

CONNECTION_ID_VAR = "MEDIA_WEBSOCKET_CONNECTION_ID"
FRAME_SIZE_VAR = "MEDIA_WEBSOCKET_OPTIMAL_FRAME_SIZE"
INBOX_MAXLEN = 10_000

# externalMedia for WebSocket server mode: no external_host; Asterisk hands out a connection id.
EXTERNAL_MEDIA = MediaTransport(external_host="", encapsulation="none", transport="websocket", connection_type="server")


def media_base_url(config: Config) -> str:
    return config.asterisk.media_websocket_url or config.asterisk.ari_url


def connection_id(channel: Channel) -> str:
    """The connection id from externalMedia's answer (its channelvars); "" when missing."""
    return (channel.channelvars or {}).get(CONNECTION_ID_VAR) or ""


async def send_media_ready(fence: Leadership, keys, worker_id: str, ready: MediaReady) -> None:
    await fence.xadd(keys.worker_inbox(worker_id), inbox_fields("media", ready), maxlen=INBOX_MAXLEN)


async def send_bridged(fence: Leadership, keys, worker_id: str, bridged: MediaBridged) -> None:
    await fence.xadd(keys.worker_inbox(worker_id), inbox_fields("media_bridged", bridged), maxlen=INBOX_MAXLEN)
