"""`pixsearch models`: which models this machine has, and how fast they run here."""
from __future__ import annotations

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from pixsearch.cli.common import err, fail, open_engine, out, print_json

models_app = typer.Typer(no_args_is_help=True, help="List the models available here and check one.")


def _size(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:,.0f} MB"


@models_app.command("list")
def list_cmd(as_json: bool = typer.Option(False, "--json")) -> None:
    """The offline model, the models indexes use, and CLIP-class checkpoints in the local Hugging Face cache: where
    their weights are (or what is missing), their vector fields and size on disk."""
    from pixsearch.models.catalog import catalogue

    with open_engine() as engine:
        recorded = sorted({spec.model for spec in engine.list_indexes() if spec.model})
        infos = catalogue(engine.settings.cache_dir, recorded)
    if as_json:
        print_json([info.to_json() for info in infos])
        return
    table = Table(show_edge=False)
    for column in ("model", "fields (dims)", "weights", "size"):
        table.add_column(column, overflow="fold")
    for info in infos:
        fields = ", ".join(f"{name} ({dims})" for name, dims in info.dims.items()) or "-"
        where = Text(info.location or "-") if info.available else Text(f"missing: {info.message}", style="yellow")
        table.add_row(Text(info.name), fields, where, _size(info.size_bytes))
    out.print(table)


@models_app.command("check")
def check_cmd(
    model: str = typer.Argument(..., help="offline, clip:PATH_OR_REPO_ID or open_clip:ARCH[:CHECKPOINT]"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Load a model, embed sample photos and a text, and print load time and time per item."""
    from pixsearch.ingest.decode import read_and_decode
    from pixsearch.models import ModelNotAvailableError
    from pixsearch.models.catalog import check
    from pixsearch.samples import sample_files

    from PIL import Image

    images = [read_and_decode(str(path), draft=None).image for path in list(sample_files().values())[:8]]
    if not images:
        images = [Image.new("RGB", (640, 480), (120, 80, 40))]
    with open_engine() as engine:
        try:
            result = check(model, engine.settings.cache_dir, images)
        except ModelNotAvailableError as exc:
            raise fail(str(exc)) from None
    if as_json:
        print_json(result.to_json())
        return
    err.print(f"[bold]{escape(result.name)}[/] ({escape(result.model_id)}): fields "
              + ", ".join(f"{name} {dims}-d" for name, dims in result.dims.items()), highlight=False)
    out.print(f"load {result.load_seconds:.2f} s; first image {result.first_image_seconds:.2f} s, then "
              f"{result.image_seconds * 1000:.1f} ms/image; first text {result.first_text_seconds:.2f} s, then "
              f"{result.text_seconds * 1000:.1f} ms/query", highlight=False)
