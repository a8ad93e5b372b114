"""`pixsearch keys`: API keys for `pixsearch serve` (admin and query roles; stored hashed)."""
from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pixsearch.cli.common import err, fail, open_engine, out, print_json

keys_app = typer.Typer(no_args_is_help=True, help="Create, list and revoke API keys for the REST API.")


@keys_app.command("create")
def create_cmd(
    role: str = typer.Option("query", help="admin (everything) or query (search and read only)."),
    name: str = typer.Option("", help="A label to recognise the key by."),
) -> None:
    """Create a key and print it once on stdout (only its hash is stored)."""
    with open_engine() as engine:
        record, secret = engine.create_api_key(role, name)
    err.print(f"created {record.role} key {record.id} {escape(repr(record.name))}; store it now, it is not shown again:",
              highlight=False)
    print(secret)


@keys_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """List keys (ids, roles, names, dates; never the secrets)."""
    with open_engine() as engine:
        records = engine.list_api_keys()
    if as_json:
        print_json([r.__dict__ for r in records])
        return
    table = Table(show_edge=False)
    for column in ("id", "role", "name", "created", "revoked"):
        table.add_column(column)
    for r in records:
        table.add_row(r.id, r.role, Text(r.name), f"{r.created_at:%Y-%m-%d %H:%M}",
                      f"{r.revoked_at:%Y-%m-%d %H:%M}" if r.revoked_at else "")
    out.print(table)


@keys_app.command("revoke")
def revoke_cmd(key_id: str) -> None:
    """Revoke a key by id; requests with it are refused from then on."""
    with open_engine() as engine:
        if not engine.revoke_api_key(key_id):
            raise fail(f"no active key with id {key_id!r}")
    err.print(f"revoked {escape(key_id)}", highlight=False)
