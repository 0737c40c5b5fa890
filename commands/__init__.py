"""User commands that are not pipeline stages: `python -m commands.<name> --help`."""
