"""`fnctl serve`: the gateway's command line (the gateway itself lives in `gateway`, the process in `serve`)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from fnctl.cli import pgopener
from fnctl.cli.options import StateOpt
from fnctl.cli.slowchecks import install_now
from fnctl.errors import BadInput, ExitCode

if TYPE_CHECKING:
    from fnctl.gateway.crew import Crew

app = typer.Typer()


@app.command()
def serve(
    address: Annotated[
        Optional[str],
        typer.Option(
            "--address",
            "-a",
            help="host:port to listen on (default: fnctl.toml's gateway.address, else 127.0.0.1:8080).",
            show_default=False,
        ),
    ] = None,
    state: StateOpt = None,
    read_timeout: Annotated[
        Optional[float],
        typer.Option(
            "--read-timeout",
            help="Seconds a client may take to send its request line and headers, and to idle on keep-alive (default 10).",
            show_default=False,
        ),
    ] = None,
    max_body: Annotated[
        Optional[str],
        typer.Option(
            "--max-body",
            help="Largest request body, e.g. 6Mi (default; a function's payload limit may be lower): 413 beyond.",
            show_default=False,
        ),
    ] = None,
    max_header: Annotated[
        Optional[str],
        typer.Option(
            "--max-header", help="Largest request headers in all, e.g. 16Ki (default): 431 beyond.", show_default=False
        ),
    ] = None,
    idle_timeout: Annotated[
        Optional[str],
        typer.Option(
            "--idle-timeout",
            help="Stop an instance above minInstances after it idled this long (default 5m).",
            show_default=False,
        ),
    ] = None,
    body_timeout: Annotated[
        Optional[float],
        typer.Option(
            "--body-timeout",
            help="Seconds a client may take to send its request body (default 5): 408 beyond.",
            show_default=False,
        ),
    ] = None,
    max_connections_per_client: Annotated[
        Optional[int],
        typer.Option(
            "--max-connections-per-client",
            help="Open connections per client address (default 256): 429 and closed beyond.",
            show_default=False,
        ),
    ] = None,
    access_log: Annotated[
        bool, typer.Option("--access-log/--no-access-log", help="One JSON line per request on stdout.")
    ] = True,
    workers: Annotated[
        int,
        typer.Option(
            "--workers",
            min=1,
            help="Gateway processes on the one port (SO_REUSEPORT), to use more than one core. Opt-in, default 1: "
            "the first process owns the instances, the others follow it (docs/serve.md, 'Several workers').",
        ),
    ] = 1,
    worker: Annotated[Optional[str], typer.Option("--worker", hidden=True)] = None,
    run_dir: Annotated[Optional[str], typer.Option("--run-dir", hidden=True)] = None,
    ui: Annotated[
        bool,
        typer.Option(
            "--ui",
            help="Serve the dashboard at /ui/ (also fnctl.toml's gateway.ui = true); users sign in with an API key "
            "or JWT whose roles a Policy grants `ui: [read, ...]` (docs/ui.md).",
        ),
    ] = False,
) -> None:
    """Run the gateway: HTTP invocations, HTTP Triggers, cron triggers, metrics; until SIGTERM or Ctrl-C.

    Endpoints: POST /invoke/NAME, every HTTP Trigger route, /healthz, /readyz, /metrics (Prometheus).
    Routing changes made by `fnctl apply`, `rollback` or a rollout are picked up within a second.

    On SIGTERM the gateway stops accepting, answers the requests in flight (up to gateway.drainTimeout,
    30 s by default) and exits 0; a second signal stops at once (exit 130). Settings come from the gateway
    section of fnctl.toml; options override them. See docs/serve.md for running it under systemd.

    With engine = "swarm" in fnctl.toml, run one on each node (swarm.node or FNCTL_SWARM_NODE: that node's
    engine): it serves the Swarm tasks of its own node over their sockets and starts none, and forwards a
    request for a revision with no task on its node to a node's gateway that has one, reached at its
    swarm.advertise (FNCTL_SWARM_ADVERTISE) or listening address (docs/swarm.md, "Forwarding").

    \b
    Examples:
      fnctl serve
      fnctl serve --address 0.0.0.0:8080 --state /var/lib/fnctl/state.db
      fnctl serve --ui          (then open http://127.0.0.1:8080/ui/ and sign in with an API key)
      fnctl serve --workers 2   (two processes on one port: one owns the instances, both serve)
      FNCTL_SWARM_NODE=unix:///var/run/docker.sock fnctl serve --address 10.0.0.5:8080   (a Swarm node's gateway)
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.gateway.serve import options_for
    from fnctl.gateway.serve import serve as run
    from fnctl.gateway.serve import serve_workers as run_workers
    from fnctl.manifest.project import load_project
    from fnctl.state.location import locate

    install_now()  # jsonschema explains a refused write: a request should not wait for its import
    pgopener.install_now()  # a PostgreSQL state's psycopg, at start rather than in a request
    project = load_project()
    options = options_for(
        project,
        address=address,
        read_timeout=read_timeout,
        max_body=max_body,
        max_header=max_header,
        idle_timeout=idle_timeout,
        access_log=access_log,
        body_timeout=body_timeout,
        max_connections_per_client=max_connections_per_client,
        ui=ui,
    )
    if worker is not None:  # one worker of `--workers N`, started by the parent process below
        options = replace(options, crew=_crew(worker, run_dir))
    elif workers > 1:
        if not run_workers(_worker_command(), workers, options):
            raise typer.Exit(ExitCode.INTERRUPTED)
        return
    mounts = []
    if options.ui:
        # imported only when asked for: plain `fnctl serve` does not load the dashboard
        from fnctl.dashboard.routes import mount

        mounts.append(mount(project, locate(project, state)))
    if not run(project, locate(project, state), options, mounts):
        raise typer.Exit(ExitCode.INTERRUPTED)  # a second signal cut the drain short


def _crew(worker: str, run_dir: str | None) -> Crew:
    """The hidden `--worker K/N --run-dir DIR` the parent of `--workers N` gives each worker."""
    from fnctl.gateway.crew import Crew  # with the gateway: not at start-up (other commands skip it)

    number, _, total = worker.partition("/")
    if not (number.isdigit() and total.isdigit() and int(number) < int(total)) or run_dir is None:
        raise BadInput("--worker K/N and --run-dir DIR are set by `fnctl serve --workers N`, not by hand")
    return Crew(int(number), int(total), Path(run_dir))


def _worker_command() -> list[str]:
    """This command line for the workers: without `--workers` and `--address` (the parent gives the port)."""
    args, skip = [], False
    for arg in sys.argv[1:]:
        if skip:
            skip = False
        elif arg in ("--workers", "--address", "-a"):
            skip = True
        elif not arg.startswith(("--workers=", "--address=")):
            args.append(arg)
    return [sys.executable, "-m", "fnctl", *args]
