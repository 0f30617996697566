"""`python -m fnctl` entry point."""

from fnctl.cli.app import main

main()
