"""VJP rules."""
