"""`fnctl state migrate`: move the deployment state to PostgreSQL."""

from __future__ import annotations

from typing import Annotated

import typer

from fnctl.cli.options import LockOpt
from fnctl.cli.render import Output, OutputOpt, console, err_console, print_json
from fnctl.errors import ExitCode

app = typer.Typer()

state_app = typer.Typer(
    help="The deployment state store (SQLite file or PostgreSQL database).\n\n"
    "\b\nExample:\n  fnctl state migrate --from sqlite:var/state.db --to postgresql://fnctl@db.internal/shop",
    no_args_is_help=True,
)
app.add_typer(state_app, name="state")


@state_app.command("migrate")
def migrate(
    source: Annotated[str, typer.Option("--from", metavar="sqlite:PATH", help="The SQLite state file to copy.")],
    target: Annotated[
        str, typer.Option("--to", metavar="URL", help="The PostgreSQL database to copy into (postgresql://…, empty).")
    ],
    lock_timeout: LockOpt = 60.0,
    output: OutputOpt = Output.TEXT,
) -> None:
    """Copy a project's deployment state (revisions, routes, rollouts, audit chains, keys, metrics, cron and
    trigger state) from its SQLite file into an empty PostgreSQL database, and its data (collections,
    documents, the change log, idempotency keys, the outbox) from the data file beside it, then verify the
    copy: the row count of every table, and the audit chains and the change log walked on the target, each
    ending at the source's head.

    Deploys wait for the copy (the state's lock) and a running gateway's writes wait for its transaction;
    the source is left as it was. Then point fnctl at the database: `state.url` in fnctl.toml or
    FNCTL_STATE. Exits 1 when the check finds a difference.

    \b
    Examples:
      fnctl state migrate --from sqlite:~/.local/state/fnctl/shop/state.db \\
          --to 'postgresql://fnctl@db.internal/shop'
      fnctl state migrate --from sqlite:var/state.db --to 'postgresql:///shop?host=/run/postgresql' -o json
    """
    # imported when the command runs, not at start-up: `fnctl --help` and the other commands skip it
    from fnctl.commands.statemigrate import migrate as run

    done = run(source, target, lock_timeout, "fnctl state migrate")
    problems = done.problems
    if output is Output.JSON:
        data = None if done.data is None else done.data.as_json()
        print_json(
            {"source": str(done.source), "target": str(done.target), **done.transfer.as_json(), "data": data}
            | {"verified": not problems, "problems": problems}
        )
    else:
        out = console()
        # the deployment state's tables and chains, then the document store's (its one chain: the change log)
        sections = [(done.transfer.counts, [target for _, target in done.transfer.chains])]
        if done.data is not None:
            sections.append((done.data.counts, [done.data.target_chain]))
        for counts, chains in sections:
            for count in counts:
                out.print(f"{count.table}\t{count.target} rows")
            for chain in chains:
                out.print(
                    f"{chain.table} chain\t{chain.records} records, head {chain.head_id} {chain.head_hash[:16]}, "
                    f"{'intact' if chain.intact else 'BROKEN'}"
                )
        for problem in problems:
            err_console().print(f"[red]mismatch:[/red] {problem}")
        if not problems:
            err_console().print(
                f"copied and verified {done.source} -> {done.target}; use it with state.url in fnctl.toml "
                "or FNCTL_STATE"
            )
    if problems:
        raise typer.Exit(int(ExitCode.FAILED))
