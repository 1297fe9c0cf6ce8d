"""The media worker's transports toward Asterisk: an AudioSocket TCP server, per-call RTP endpoints, and per-call
WebSocket media connections to Asterisk (chan_websocket, server mode).

All hand a call session the same `MediaLink` (link.py); the wire formats live in sans-I/O codecs
(audiosocket_codec.py, rtp_codec.py, websocket_codec.py) that are tested with plain bytes.
"""
