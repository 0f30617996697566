"""The command line: typer apps assembled explicitly, each command parsing its options, calling one function of `fnctl.commands` (or a subsystem) and rendering the result with rich, plain lines or JSON.
"""
