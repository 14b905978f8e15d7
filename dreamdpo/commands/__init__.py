"""CLI command families; see dreamdpo/cli.py."""
