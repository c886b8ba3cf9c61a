"""The configuration: Hydra's entry and the pre-flight every command shares (with a quiet console), and the
schema of checked values."""
