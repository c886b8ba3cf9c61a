"""The configuration: Hydra's entry and the pre-flight every command shares, the schema of checked values, a
quiet console."""
