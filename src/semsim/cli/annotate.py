"""``semsim annotate``: collect human recognizability judgments (thin layer over :mod:`semsim.annotation`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.table import Table

from semsim.errors import SemsimError

if TYPE_CHECKING:
    from semsim.annotation.db import Database

annotate_app = typer.Typer(help="Human annotation: load sets, add annotators, serve the app, export labels.",
                           no_args_is_help=True)

DbOption = Annotated[str, typer.Option("--db", help="SQLite file or SQLAlchemy URL (postgresql://...)")]


def _db(url: str) -> Database:
    from semsim.annotation.db import Database

    return Database(url)


def _classes(value: str | None) -> list[str] | None:
    if not value:
        return None
    path = Path(value)
    if path.is_file():
        names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    else:
        names = [c.strip() for c in value.split(",") if c.strip()]
    if len(set(names)) != len(names):
        raise SemsimError(f"--classes {value}: class names repeat; give each class once")
    return names


@annotate_app.command()
def init(
    db: DbOption,
    sets: Annotated[list[Path], typer.Option("--sets", help="set to load: SemSim-layout folder or manifest "
                                              "(repeat the option for several sets)")],
    per_item: Annotated[int, typer.Option("--per-item", min=1, help="distinct annotators per item")] = 5,
    task: Annotated[str, typer.Option(help="'class' (pick the class or can't tell) or 'pair' (side by "
                                      "side)")] = "class",
    study: Annotated[str | None, typer.Option(help="study name, used as label_source human:<study>")] = None,
    classes: Annotated[str | None, typer.Option(help="class names: comma-separated or a file with one per "
                                                 "line (default: 0..max label)")] = None,
    gold: Annotated[list[Path] | None, typer.Option("--gold", help="set of gold items with known answers "
                                                     "(the 'label', or a 'gold_answer' column)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the per-annotator random orders")] = 0,
) -> None:
    """Create the annotation database (or add sets to it)."""
    from semsim.annotation.store import init_project

    counts = init_project(db, list(sets), per_item=per_item, task=task, study=study,
                          classes=_classes(classes), gold=list(gold or []), seed=seed)
    typer.echo(f"loaded {counts['items']} item(s) from {counts['sets']} set(s) and {counts['gold']} gold "
               f"item(s) into {db}; {counts['assigned']} assignment(s) made")


@annotate_app.command("add-annotator")
def add_annotator(
    db: DbOption,
    names: Annotated[list[str], typer.Argument(help="the annotators' names (unique)")],
    admin: Annotated[bool, typer.Option("--admin", help="administrators (dashboard, exports)")] = False,
    base_url: Annotated[str, typer.Option(help="address the app is reached at")] = "http://127.0.0.1:8000",
) -> None:
    """Create annotators and print each one's secret link (shown once; only its hash is stored)."""
    from semsim.annotation.store import add_annotators

    tokens = add_annotators(_db(db), names, admin=admin)
    for name, token in tokens.items():
        typer.echo(f"{name}\t{base_url.rstrip('/')}/start/{token}")


@annotate_app.command()
def deactivate(db: DbOption, name: Annotated[str, typer.Argument(help="annotator to deactivate")]) -> None:
    """Revoke an annotator's link; their unanswered items go to the others."""
    from semsim.annotation.store import set_active

    set_active(_db(db), name, False)
    typer.echo(f"deactivated {name}")


@annotate_app.command()
def serve(
    db: DbOption,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port")] = 8000,
) -> None:
    """Run the annotation app."""
    from semsim.annotation.app import serve as run

    typer.echo(f"serving {db} on http://{host}:{port} (admins open their link; Ctrl+C stops)", err=True)
    run(db, host=host, port=port)


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


@annotate_app.command()
def status(db: DbOption) -> None:
    """Progress per set and annotator, agreement, gold accuracy."""
    from semsim.annotation.store import dashboard

    d = dashboard(_db(db))
    console = Console()
    table = Table(title=f"{d['info'].study}: {d['n_answers']} answers on {d['n_items']} items")
    for col in ("set", "items", "answers", "needed", "complete", "Fleiss kappa", "Krippendorff alpha"):
        table.add_column(col)
    rows = [{"set": "overall", "items": d["n_items"], "answers": d["n_answers"],
             "needed": d["n_items"] * d["info"].per_item, "complete": "", **d["overall"]}, *d["sets"]]
    for r in rows:
        table.add_row(str(r["set"]), str(r["items"]), str(r["answers"]), str(r["needed"]), str(r["complete"]),
                      _fmt(r["answers_fleiss_kappa"]), _fmt(r["answers_krippendorff_alpha"]))
    console.print(table)
    people = Table(title="annotators")
    for col in ("name", "done", "assigned", "gold accuracy", "state"):
        people.add_column(col)
    for a in d["annotators"]:
        state = "imported" if a["imported"] else ("active" if a["active"] else "inactive")
        people.add_row(a["name"], str(a["done"]), str(a["assigned"]), _fmt(a["gold_accuracy"]), state)
    console.print(people)


@annotate_app.command("export")
def export_cmd(
    db: DbOption,
    out: Annotated[Path, typer.Option(help="labels.csv/.parquet (label table), tasks.json (Label Studio) or "
                                      "a new folder (SemSim training layout)")],
    fmt: Annotated[str | None, typer.Option("--format", help="labels, folders or labelstudio (default: by "
                                            "--out)")] = None,
) -> None:
    """Export the answers."""
    from semsim.annotation.export import export

    path = export(_db(db), out, fmt)
    typer.echo(f"wrote {path}")


@annotate_app.command("import")
def import_cmd(
    db: DbOption,
    source: Annotated[Path, typer.Argument(help="Label Studio JSON export")],
) -> None:
    """Import answers from a Label Studio JSON export."""
    from semsim.annotation.export import import_labelstudio

    counts = import_labelstudio(_db(db), source)
    typer.echo(f"imported {counts['added']} answer(s); {counts['duplicates']} already present, "
               f"{counts['unmatched']} task(s) without a matching item, {counts['skipped']} cancelled/empty")


def register(app: typer.Typer) -> None:
    app.add_typer(annotate_app, name="annotate")
