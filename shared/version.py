"""The installed version, for registration records and /metrics."""

from importlib.metadata import PackageNotFoundError, version

try:
    VERSION = version("asterisk-ai-voice-agent")
except PackageNotFoundError:  # running from a source tree that was not installed
    VERSION = "0.0.0+source"
