"""Manifests: safe YAML loading with positions, the JSON Schemas, the typed desired model, semantic checks and `validate`.

Pure but for reading files: nothing here touches Docker, the state store or git.
"""
