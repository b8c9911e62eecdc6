"""The package version, in one place (read by setup.cfg and the export metadata)."""

__version__ = "0.1.0"
