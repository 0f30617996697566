"""Loads libGL through ctypes at import, as OpenGL bindings do, and wraps the failure the way numpy wraps its
own ("you should not try to import ... from its source directory"): the base image has no libGL."""

import ctypes

try:
    _GL = ctypes.CDLL("libGL.so.1")
except OSError as exc:
    raise ImportError("Error importing loads_gl: you should not try to import it from its source directory") from exc


def handler(event):
    return {"gl": True}
