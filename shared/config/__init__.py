"""The cluster's configuration: `load_config()` gives a typed `Config` or a `ConfigError` naming every problem."""

from shared.config.load import ConfigError, LoadedConfig, load_config
from shared.config.schema import Config

__all__ = ["Config", "ConfigError", "LoadedConfig", "load_config"]
