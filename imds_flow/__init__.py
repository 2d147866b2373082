"""imds-flow: NetFlow v5 / v9 / IPFIX collector that detects instance-metadata-service traffic."""
from __future__ import annotations

from .config import Config, ConfigError, load as load_config

__all__ = ["Config", "ConfigError", "load_config", "__version__"]

__version__ = "0.1.0"
