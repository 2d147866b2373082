"""imds-flow: NetFlow v5 / v9 / IPFIX and sFlow collector that detects instance-metadata-service traffic."""
from __future__ import annotations

__all__ = ["Config", "ConfigError", "load_config", "__version__"]

__version__ = "0.1.0"

_FROM_CONFIG = {"Config": "Config", "ConfigError": "ConfigError", "load_config": "load"}


def __getattr__(name: str):
    """Config, ConfigError and load_config on first use: `imds-flow listen` binds its sockets
    before the config module (and its dataclasses) is imported."""
    if name in _FROM_CONFIG:
        from . import config
        return getattr(config, _FROM_CONFIG[name])
    raise AttributeError(f"module 'imds_flow' has no attribute {name!r}")
