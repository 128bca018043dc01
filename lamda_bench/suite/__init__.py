"""Suites: TOML in, validated cells out (parse, text, values, sweep, conventions, cell)."""
