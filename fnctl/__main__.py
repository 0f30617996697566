"""`python -m fnctl` entry point."""

from fnctl.cli import main

main()
