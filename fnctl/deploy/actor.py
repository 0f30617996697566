"""Who is deploying: the actor for the audit log (the commit comes from `fnctl.gitops.gitrepo`)."""

from __future__ import annotations

import getpass
import os

# Who is behind a run, as CI systems name them ("ci:<name>") and as git servers name the pusher whose push
# runs fnctl's hook ("push:<name>": GitLab, Gitea, gitolite); the first variable set wins.
_ACTORS = (
    ("FNCTL_ACTOR", ""),
    ("GITHUB_ACTOR", "ci:"),
    ("GITLAB_USER_LOGIN", "ci:"),
    ("BUILDKITE_BUILD_CREATOR", "ci:"),
    ("CIRCLE_USERNAME", "ci:"),
    ("GL_USERNAME", "push:"),
    ("GITEA_PUSHER_NAME", "push:"),
    ("GL_USER", "push:"),
)


def actor() -> str:
    """The person or bot named by CI or by the git server (see `_ACTORS`), else the OS user."""
    for variable, prefix in _ACTORS:
        if os.environ.get(variable):
            return prefix + os.environ[variable]
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return f"ci:{user}" if os.environ.get("CI") == "true" else user
