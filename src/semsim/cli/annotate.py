"""``semsim annotate``: collect human recognizability judgments (thin layer over :mod:`semsim.annotation`)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from semsim.errors import SemsimError

if TYPE_CHECKING:
    from semsim.annotation.db import Database

annotate_app = typer.Typer(help="Human annotation: load sets, add annotators, serve the app, export labels.",
                           no_args_is_help=True, rich_markup_mode=None)

DbOption = Annotated[str, typer.Option("--db", help="SQLite file or SQLAlchemy URL (postgresql://...)")]
BaseUrlOption = Annotated[str | None, typer.Option(help="address the app is reached at (default: the "
                                                   "--public-url or host:port of the last `serve`)")]


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
    seed: Annotated[int, typer.Option(help="seed of the per-annotator random orders (and of --sample)")] = 0,
    sample: Annotated[int | None, typer.Option(min=1, help="load only N randomly drawn images of each set "
                                               "(labels for 'semsim estimate')")] = None,
    instructions: Annotated[Path | None, typer.Option(help="text file shown to annotators before they start "
                                                      "(paragraphs separated by blank lines)")] = None,
    examples: Annotated[list[Path] | None, typer.Option("--examples", help="set of example items shown with "
                                                        "their answer on the instructions page")] = None,
) -> None:
    """Create the annotation database (or add sets to it)."""
    from semsim.annotation.loading import init_project

    text = None
    if instructions is not None:
        try:
            text = instructions.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SemsimError(f"--instructions {instructions}: not a readable UTF-8 text file ({exc})") from None
    counts = init_project(db, list(sets), per_item=per_item, task=task, study=study,
                          classes=_classes(classes), gold=list(gold or []), seed=seed, instructions=text,
                          examples=list(examples or []), sample=sample)
    typer.echo(f"loaded {counts['items']} item(s) from {counts['sets']} set(s), {counts['gold']} gold "
               f"item(s) and {counts['examples']} example(s) into {db}; {counts['assigned']} assignment(s) made")
    if counts["items_short"]:
        typer.echo(f"next: add at least {per_item} annotators (`semsim annotate add-annotator`); each item "
                   f"needs {per_item} distinct judges", err=True)


@annotate_app.command("add-annotator")
def add_annotator(
    db: DbOption,
    names: Annotated[list[str], typer.Argument(help="the annotators' names (unique)")],
    admin: Annotated[bool, typer.Option("--admin", help="administrators (dashboard, exports)")] = False,
    base_url: BaseUrlOption = None,
) -> None:
    """Create annotators and print each one's secret link (shown once; only its hash is stored)."""
    from semsim.annotation.annotators import add_annotators, link

    database = _db(db)
    tokens = add_annotators(database, names, admin=admin)
    for name, token in tokens.items():
        typer.echo(f"{name}\t{link(database, token, base_url)}")
    _warn_short(database)


def _warn_short(database: Database) -> None:
    from semsim.annotation.assignment import shortfall_warning

    warning = shortfall_warning(database)
    if warning:
        typer.echo(warning, err=True)


@annotate_app.command()
def deactivate(db: DbOption, name: Annotated[str, typer.Argument(help="annotator to deactivate")]) -> None:
    """Revoke an annotator's link and sessions; their unanswered items go to the others."""
    from semsim.annotation.annotators import set_active

    database = _db(db)
    set_active(database, name, False)
    typer.echo(f"deactivated {name}")
    _warn_short(database)


@annotate_app.command()
def reactivate(db: DbOption, name: Annotated[str, typer.Argument(help="annotator to reactivate")]) -> None:
    """Let a deactivated annotator log in again (with their old link) and give them work."""
    from semsim.annotation.annotators import set_active

    counts = set_active(_db(db), name, True)
    typer.echo(f"reactivated {name}; {counts['assigned']} assignment(s) made, {counts['moved']} moved")


@annotate_app.command()
def reissue(db: DbOption, name: Annotated[str, typer.Argument(help="annotator who needs a new link")],
            base_url: BaseUrlOption = None) -> None:
    """Print a new secret link for an annotator (the old link and their open sessions stop working)."""
    from semsim.annotation.annotators import link
    from semsim.annotation.annotators import reissue as new_link

    database = _db(db)
    token = new_link(database, name)
    typer.echo(f"{name}\t{link(database, token, base_url)}")


@annotate_app.command()
def serve(
    db: DbOption,
    host: Annotated[str, typer.Option(help="interface to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535, help="port")] = 8000,
    public_url: Annotated[str | None, typer.Option(help="address people reach the app at, e.g. "
                                                   "https://study.example.org behind a reverse proxy (default: "
                                                   "http://HOST:PORT); links of add-annotator use it")] = None,
    session_hours: Annotated[float, typer.Option(min=0.01, help="a browser session ends after this "
                                                 "many hours")] = 12.0,
    secure_cookies: Annotated[bool, typer.Option("--secure-cookies", help="mark the session cookie Secure "
                                                 "(behind a TLS proxy; automatic when the app sees https)")] = False,
    workers: Annotated[int, typer.Option(min=1, max=64, help="server processes sharing the port (one per "
                                         "core)")] = 1,
) -> None:
    """Run the annotation app."""
    from semsim.annotation.app import serve as run

    shown = public_url or f"http://{host}:{port}"
    typer.echo(f"serving {db} on http://{host}:{port} as {shown} (admins open their link; Ctrl+C stops)",
               err=True)
    run(db, host=host, port=port, public_url=public_url, session_hours=session_hours,
        secure_cookies=secure_cookies, workers=workers)


def _fmt(x: float) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


@annotate_app.command()
def status(db: DbOption) -> None:
    """Progress per set and annotator, agreement, gold accuracy."""
    from rich.console import Console
    from rich.table import Table

    from semsim.annotation.dashboard import dashboard

    database = _db(db)
    d = dashboard(database)
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
    if d["flagged"]:
        typer.echo(f"{len(d['flagged'])} item(s) flagged as broken: "
                   + ", ".join(f"{x['set']}/{x['image_id']}" for x in d["flagged"][:10]))
    _warn_short(database)


@annotate_app.command("export")
def export_cmd(
    db: DbOption,
    out: Annotated[Path, typer.Option(help="labels.csv/.parquet (label table), tasks.json (Label Studio) or "
                                      "a new folder (SemSim training layout)")],
    fmt: Annotated[str | None, typer.Option("--format", help="labels, folders or labelstudio (default: by "
                                            "--out)")] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing file")] = False,
) -> None:
    """Export the answers."""
    from semsim.annotation.export import export

    path = export(_db(db), out, fmt, force=force)
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
               f"{counts['conflicts']} conflicting with a stored answer of the same person (kept the stored "
               f"one), {counts['unmatched']} task(s) without a matching item, {counts['skipped']} cancelled/empty")


def register(app: typer.Typer) -> None:
    app.add_typer(annotate_app, name="annotate")
