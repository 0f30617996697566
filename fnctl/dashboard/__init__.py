"""The dashboard (`fnctl serve --ui`): pages at /ui that read the same JSON the CLI prints with `-o json`, from
documented endpoints under /v1/ (`reads`: the commands' own functions), a rollout followed live as server-sent
events (`live`), the actions of `promote`, `abort`, `retry` and `rollback` (`actions`), who may do what
(`access`, pure), and the HTTP side (`routes`; the shipped files are in `static/`).
"""
