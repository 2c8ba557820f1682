"""Rich rendering for the command line: progress, score tables, confusion matrices.

On a terminal these are live bars and tables; elsewhere (CI, pipes) plain lines.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from gossipser.learn.metrics import Scores


def make_console(stderr: bool = False) -> Console:
    console = Console(stderr=stderr, highlight=False, soft_wrap=False)
    if not console.is_terminal:  # logs and pipes: wide enough for the confusion matrix
        console = Console(stderr=stderr, highlight=False, soft_wrap=False, width=120)
    return console


@contextmanager
def progress(
    console: Console, description: str, total: int, *, every: int = 0,
) -> Iterator[Callable[..., None]]:
    """Yield `update(done, total=None, info='')`: a live bar on a terminal; otherwise a plain
    line every `every` steps (0: only at the end)."""
    if console.is_terminal:
        # started on the first update, so work that turns out to be cached shows no bar
        bar = Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
            TextColumn("{task.fields[info]}"), TimeRemainingColumn(), console=console,
            transient=False,
        )
        task = None

        def update(done: int, total_: int | None = None, info: str = "") -> None:
            nonlocal task
            if task is None:
                bar.start()
                task = bar.add_task(description, total=total_ or total, info="")
            bar.update(task, completed=done, total=total_ or total, info=info)

        try:
            yield update
        finally:
            if task is not None:
                bar.stop()
        return
    state = {"last": 0}

    def plain(done: int, total_: int | None = None, info: str = "") -> None:
        t = total_ or total
        if (every and done - state["last"] >= every) or done == t:
            state["last"] = done
            console.print(f"{description}: {done}/{t} {info}".rstrip())

    yield plain


def scores_table(rows: Sequence[tuple[str, Scores]], title: str = "results") -> Table:
    table = Table(title=title, title_justify="left")
    table.add_column("")
    for name in ("UA", "WA", "macro-P", "macro-R", "macro-F1"):
        table.add_column(name, justify="right")
    for label, s in rows:
        table.add_row(label, *(f"{v:.3f}" for v in (
            s.ua, s.wa, s.macro_precision, s.macro_recall, s.macro_f1)))
    return table


def confusion_table(scores: Scores, classes: Sequence[str]) -> Table:
    """Rows: true class; columns: predicted. The diagonal is bold, recall on the right."""
    cm = scores.confusion
    table = Table(title="confusion (rows: true, columns: predicted)", title_justify="left")
    table.add_column("true \\ pred")
    for c in classes:
        table.add_column(c[:5], justify="right")
    table.add_column("recall", justify="right")
    for i, c in enumerate(classes):
        support = int(cm[i].sum())
        cells = [f"[bold green]{v}[/]" if i == j else (str(v) if v else "[dim]0[/]")
                 for j, v in enumerate(cm[i])]
        recall = f"{cm[i, i] / support:.2f}" if support else "-"
        table.add_row(c, *cells, recall)
    return table


def error_line(message: str) -> None:
    """One clear line on stderr, no traceback."""
    print(f"gossipser: error: {message}", file=sys.stderr)
