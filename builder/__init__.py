"""pibuild: flash-ready Raspberry Pi images for a highly available BIND cluster."""

__version__ = "0.1.0"
