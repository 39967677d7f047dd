"""CAQE's built-in mturk plugin."""
