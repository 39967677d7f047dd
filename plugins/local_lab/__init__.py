"""CAQE's built-in local_lab plugin."""
