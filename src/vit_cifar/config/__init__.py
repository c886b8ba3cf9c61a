"""The configuration: what every command shares (config/entry.py) and the schema of checked values."""
