"""CAQE's built-in mushra plugin."""
