"""Packaged configuration files (presets, cleaning rules)."""
