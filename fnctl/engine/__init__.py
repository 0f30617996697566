"""The container engine: the Docker boundary (`dockerio`, the only importer of the docker SDK), revision images, sandboxed instances and the sandbox profile they run under, and `fnctl sandbox check`.
"""
