"""The media worker's OpenAI Realtime client (GA protocol): `protocol` holds the rules without I/O,
`client` runs one call's session over a WebSocket, `pool` keeps prewarmed connections."""
