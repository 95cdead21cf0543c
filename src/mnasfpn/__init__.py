"""mnasfpn: on-device latency tables and latency-aware search for MnasFPN detection heads."""

__version__ = "0.1.0"
