"""Settings from the environment (12-factor), validated once at start-up.

Every variable is declared once in `SettingsSchema`, with its help text; `--help` and the
README's table are written from the same declarations. A bad value raises `ConfigError`
naming the variable, which `__main__` prints as one line.

A map: `settings` holds the `Settings` dataclass; `fields` how a variable is declared (`_env`)
and parsed; `schema` the variables, one module per concern, combined into `SettingsSchema`;
`loading` the checks across variables, the keys, the development secret
and the demo's credentials. Import from here.
"""

from realtime.config.loading import (
    DEV_SECRET_SUFFIX,
    ConfigError,
    development_secret,
    load_settings,
    with_demo_credentials,
)
from realtime.config.schema import SettingsSchema, describe_variables
from realtime.config.schema.auth import SUPPORTED_JWT_ALGORITHMS
from realtime.config.schema.server import EVENT_LOOPS, LOG_LEVELS
from realtime.config.settings import Settings

__all__ = [
    "DEV_SECRET_SUFFIX",
    "EVENT_LOOPS",
    "LOG_LEVELS",
    "SUPPORTED_JWT_ALGORITHMS",
    "ConfigError",
    "Settings",
    "SettingsSchema",
    "describe_variables",
    "development_secret",
    "load_settings",
    "with_demo_credentials",
]
