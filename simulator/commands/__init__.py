"""CLI command groups (see simulator/cli.py)."""
