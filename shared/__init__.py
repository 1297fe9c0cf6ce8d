"""Code every role shares: config, Redis keys and messages, logging, health and metrics."""
