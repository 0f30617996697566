"""fnctl: validate, diff and roll out stored functions as hardened Docker sandboxes."""

__version__ = "0.1.0"
