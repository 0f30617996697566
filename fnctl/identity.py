"""Who is deploying: the actor for the audit log (the commit comes from `fnctl.gitrepo`)."""

from __future__ import annotations

import getpass
import os

# CI systems name the person or bot behind a run in these variables (first match wins).
_CI_ACTORS = ("FNCTL_ACTOR", "GITHUB_ACTOR", "GITLAB_USER_LOGIN", "BUILDKITE_BUILD_CREATOR", "CIRCLE_USERNAME")


def actor() -> str:
    """`ci:<name>` inside CI when the CI says who, else the OS user."""
    for variable in _CI_ACTORS:
        if os.environ.get(variable):
            return f"ci:{os.environ[variable]}" if variable != "FNCTL_ACTOR" else os.environ[variable]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"ci:{user}" if os.environ.get("CI") == "true" else user
