"""Worked examples for docs/extending.md: not registered by default (tests register them)."""
