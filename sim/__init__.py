"""Simulators (Asterisk, OpenAI Realtime), the local cluster launcher and the call generator."""
