"""The media worker's transports toward Asterisk: an AudioSocket TCP server and per-call RTP endpoints.

Both hand a call session the same `MediaLink` (link.py); the wire formats live in sans-I/O codecs
(audiosocket_codec.py, rtp_codec.py) that are tested with plain bytes.
"""
