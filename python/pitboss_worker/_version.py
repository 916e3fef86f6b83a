"""The package version, reported in the HELLO frame."""

__version__ = "0.1.0"
