"""Fails while being imported, as a handler whose configuration is missing would."""


def _load_settings():
    raise RuntimeError("settings missing at import")


SETTINGS = _load_settings()


def handler(event):
    return SETTINGS
