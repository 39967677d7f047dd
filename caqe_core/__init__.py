"""CAQE: listening tests in the browser."""
__version__ = "0.1.0"
