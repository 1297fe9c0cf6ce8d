"""The composition root: the `voice-agent` command that starts each role, the operator commands and the
development tools (simulators, demo, load test). It is the one package that may import every role and `sim`;
the roles themselves meet only through `shared`."""
