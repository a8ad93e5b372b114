"""`pixsearch backup` and `pixsearch restore`: a library (or one index) in one file, and back."""
from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import typer
from rich.markup import escape

from pixsearch.cli.common import err, fail, note, open_engine
from pixsearch.service import Engine


def backup_cmd(
    file: Path = typer.Argument(..., help="The backup file to write (replaced atomically if it exists)."),
    index: Optional[str] = typer.Option(None, "--index", "-i", help="Only this index (default: everything)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Write the database (indexes, settings, API keys), the uploaded images and a manifest with versions and
    checksums to one file. The database part is one consistent snapshot: the server may keep running."""
    from pixsearch.service.backup import backup

    with open_engine() as engine:
        err.print("writing the backup", highlight=False)
        report = backup(engine, file, index=index)
    if as_json:
        print(json.dumps(report.to_json()))
    rows = sum(report.indexes.values())
    err.print(f"backup: {escape(str(report.path))} ({report.bytes / 1e6:,.1f} MB: {len(report.indexes)} indexes, "
              f"{rows:,} rows, {report.uploads} uploads, {report.keys} API keys) in {report.seconds:.1f} s",
              highlight=False)


def restore_cmd(
    file: Path = typer.Argument(..., help="A file written by `pixsearch backup`."),
    force: bool = typer.Option(False, "--force", help="Replace what the database holds (everything, or the index "
                               "of the same name for a one-index backup)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON on stdout."),
) -> None:
    """Restore a backup into PIXSEARCH_HOME's database (or PIXSEARCH_DATABASE_URL's) and uploads folder, then build
    the ANN indexes. The file is checked whole first: a truncated or altered one, or one of a newer release, is
    refused and nothing changes. Stop servers using this home first."""
    from pixsearch.service.backup import restore

    with open_engine() as engine:
        report = restore(engine, file, force=force, say=lambda line: err.print(escape(line), highlight=False))
    if as_json:
        print(json.dumps(report.to_json()))
    for line in report.notes:
        err.print(f"note: {escape(line)}", highlight=False)
    err.print(f"restored {len(report.indexes)} indexes ({escape(', '.join(f'{n}: {c:,} rows' for n, c in report.indexes.items()))}), "
              f"{report.keys} API keys, {report.uploads} uploads, made by {escape(report.made_by)}; built "
              f"{len(report.rebuilt)} ANN indexes; {report.seconds:.1f} s", highlight=False)


@contextmanager
def scheduled_backups(engine: Engine) -> Iterator[None]:
    """While `pixsearch serve` runs: a backup every settings.backup_every (none when it is empty), in a thread."""
    from pixsearch.service.backup import BackupSchedule, parse_interval

    settings = engine.settings
    if not settings.backup_every:
        yield
        return
    try:
        every = parse_interval(settings.backup_every)
    except ValueError as exc:
        raise fail(str(exc)) from None
    folder = Path(settings.backup_dir).expanduser() if settings.backup_dir else settings.home / "backups"
    schedule = BackupSchedule(engine, folder, every, settings.backup_keep).start()
    note(f"backups: every {settings.backup_every} into {folder}, the newest {settings.backup_keep} kept")
    try:
        yield
    finally:
        schedule.stop()
