"""CAQE's built-in pairwise plugin."""
