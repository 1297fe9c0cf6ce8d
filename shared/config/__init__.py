"""The cluster's configuration: `load_config()` gives a typed `Config` or a `ConfigError` naming every problem;
`check()` lists every problem (errors, warnings, notes) without raising, for check-config and doctor."""

from shared.config.load import ConfigError, LoadedConfig, check, check_text, load_config
from shared.config.schema import Config
from shared.config.validate import Problem, Severity

__all__ = ["Config", "ConfigError", "LoadedConfig", "Problem", "Severity", "check", "check_text", "load_config"]
