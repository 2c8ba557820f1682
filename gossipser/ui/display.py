"""Subscribers to engine events: the metrics CSV writer, a live rich view, plain log lines."""

from __future__ import annotations

import csv
import math
from pathlib import Path

from rich.console import Console, Group
from rich.live import Live
from rich.panel import Panel
from rich.progress_bar import ProgressBar
from rich.table import Table
from rich.text import Text

from gossipser.gossip.events import Event, RoundFinished, RunFinished, RunStarted

SPARK = "▁▂▃▄▅▆▇█"


def sparkline(values: list[float], *, width: int = 40, log: bool = False) -> str:
    """Unicode sparkline of the last `width` values (log scale for distances)."""
    vals = [v for v in values if v is not None and math.isfinite(v)][-width:]
    if log:
        vals = [math.log10(max(v, 1e-12)) for v in vals]
    if not vals:
        return ""
    lo, hi = min(vals), max(vals)
    span = hi - lo or 1.0
    return "".join(SPARK[min(len(SPARK) - 1, int((v - lo) / span * len(SPARK)))] for v in vals)


class MetricsWriter:
    """Appends each round's row to OUT/metrics.csv (flushed, so a crash keeps what was done)."""

    def __init__(self, path: Path, columns: tuple[str, ...]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._file = path.open("w", newline="")
        self._writer = csv.DictWriter(self._file, fieldnames=list(columns))
        self._writer.writeheader()

    def __call__(self, event: Event) -> None:
        if isinstance(event, RoundFinished):
            self._writer.writerow({k: _fmt(v) for k, v in event.row.items()})
            self._file.flush()
        elif isinstance(event, RunFinished):
            self.close()

    def close(self) -> None:
        if not self._file.closed:
            self._file.close()


def _fmt(v):
    return f"{v:.6g}" if isinstance(v, float) else v


def defence_text(info: dict) -> str:
    """', robust merge median; Byzantine peers 1, 4 (signflip)' or ''."""
    text = f", robust merge {info['robust']}" if info.get("robust") else ""
    if info.get("byzantine"):
        text += (f"; Byzantine peers {', '.join(map(str, info['byzantine']))} "
                 f"({info['attack']}), left out of the metrics")
    return text


class PlainDisplay:
    """One log line per evaluated round (CI, pipes, --display plain)."""

    def __init__(self, console: Console) -> None:
        self.console = console

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            i = event.info
            self.console.print(
                f"simulate: {i['algorithm']} on {i['topology']}, {i['peers']} peers, "
                f"{i['rounds']} rounds, {i['model']} on {i['corpus']} "
                f"({len(i['classes'])} classes), {i['workers']} worker process(es)"
                + defence_text(i) + ("; virtual clock" if i.get("clock") == "virtual" else "")
                + (f"; set up in {i['setup_s']:.1f} s" if i.get("setup_s") is not None else ""))
        elif isinstance(event, RoundFinished) and event.row["ua_mean"] != "":
            r = event.row
            self.console.print(
                f"round {event.round}/{event.rounds}  UA mean {r['ua_mean']:.3f} "
                f"[{r['ua_min']:.3f}, {r['ua_max']:.3f}]  avg-model UA {r['ua_avg_model']:.3f}  "
                f"loss {r['loss_mean']:.3f}  consensus {r['consensus_distance']:.3g}  "
                f"online {r['online']}  MB/peer {r['bytes_per_peer_mean'] / 1e6:.2f}  "
                + (f"epsilon {r['epsilon_max']:.2f}  " if r.get("epsilon_max", "") != "" else "")
                + virtual_text(r) + f"{r['wall_s']:.1f} s")


def virtual_text(row: dict) -> str:
    """'virtual 46.2 s  ' on the virtual clock (the simulated time the row was reached)."""
    return f"virtual {row['virtual_s']:.1f} s  " if row.get("virtual_s", "") != "" else ""


class LiveDisplay:
    """Round progress, a table of peers and the trend of UA and consensus distance."""

    def __init__(self, console: Console, *, max_rows: int = 24) -> None:
        self.console = console
        self.max_rows = max_rows
        self.info: dict = {}
        self.ua: list[float] = []
        self.avg_ua: list[float] = []
        self.dist: list[float] = []
        self.live: Live | None = None
        self.last: RoundFinished | None = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.info = event.info
            self.live = Live(self._render(), console=self.console, refresh_per_second=4,
                             transient=False)
            self.live.start()
        elif isinstance(event, RoundFinished):
            self.last = event
            if event.row["ua_mean"] != "":
                self.ua.append(event.row["ua_mean"])
                self.avg_ua.append(event.row["ua_avg_model"])
            self.dist.append(event.row["consensus_distance"])
            if self.live is not None:
                self.live.update(self._render())
        elif isinstance(event, RunFinished) and self.live is not None:
            self.live.update(self._render())
            self.close()

    def close(self) -> None:
        """Stop the live view (also when the run ends early, e.g. on Ctrl-C)."""
        if self.live is not None:
            self.live.stop()
            self.live = None

    def _render(self):
        i = self.info
        head = Text.assemble(
            ("gossipser ", "bold"), f"{i.get('algorithm')} on {i.get('topology')} · ",
            f"{i.get('peers')} peers · {i.get('model')} · {i.get('corpus')} · ",
            f"{len(i.get('classes', []))} classes · {i.get('workers')} workers",
            " · virtual clock" if i.get("clock") == "virtual" else "",
            (f" · set up in {i['setup_s']:.1f} s" if i.get("setup_s") is not None else ""),
            (defence_text(i), "red"),
        )
        ev = self.last
        done = ev.round if ev else 0
        total = ev.rounds if ev else i.get("rounds", 1)
        bar = Table.grid(padding=(0, 1))
        bar.add_row(f"round {done}/{total}", ProgressBar(total=total, completed=done, width=40),
                    (virtual_text(ev.row) + f"{ev.row['wall_s']:.1f} s") if ev else "")
        trend = Table.grid(padding=(0, 1))
        if self.ua:
            trend.add_row("mean UA", Text(sparkline(self.ua), style="green"),
                          f"{self.ua[-1]:.3f}")
            trend.add_row("avg-model UA", Text(sparkline(self.avg_ua), style="cyan"),
                          f"{self.avg_ua[-1]:.3f}")
        if self.dist:
            trend.add_row("consensus (log)", Text(sparkline(self.dist, log=True), style="magenta"),
                          f"{self.dist[-1]:.3g}")
        if ev and ev.row.get("epsilon_max", "") != "":
            dp = i.get("dp", {})
            trend.add_row("privacy", Text(f"epsilon {ev.row['epsilon_max']:.2f} spent by the "
                                          f"worst peer (delta {dp.get('delta', 0):g})",
                                          style="yellow"), "")
        return Panel(Group(head, bar, trend, self._peer_table()), title="gossip simulation",
                     border_style="blue")

    def _peer_table(self) -> Table:
        table = Table(expand=False, box=None, header_style="bold")
        for name, justify in (("peer", "right"), ("UA", "right"), ("loss", "right"),
                              ("dist²", "right"), ("sent MB", "right"), ("state", "left")):
            table.add_column(name, justify=justify)
        if self.last is None:
            return table
        peers = self.last.peers
        shown = peers[: self.max_rows]
        byzantine = set(self.info.get("byzantine", ()))
        for p in shown:
            table.add_row(
                str(p.peer), "" if p.ua is None else f"{p.ua:.3f}",
                "" if p.loss is None or not math.isfinite(p.loss) else f"{p.loss:.3f}",
                "" if not math.isfinite(p.distance) else f"{p.distance:.3g}",
                f"{p.bytes_sent / 1e6:.2f}",
                "[bold red]byzantine[/]" if p.peer in byzantine
                else "[green]online[/]" if p.online else "[red]offline[/]",
            )
        if len(peers) > len(shown):
            table.add_row("…", "", "", "", "", f"{len(peers) - len(shown)} more")
        return table


class PeerStatusView:
    """A networked peer's (or server's) status: a live line on a terminal, else log lines."""

    def __init__(self, console: Console, title: str) -> None:
        self.console = console
        self.title = title
        self.live: Live | None = None
        self.ua: list[float] = []

    def __call__(self, row: dict) -> None:
        if "note" in row:
            self.console.print(f"{self.title}: {row['note']}")
            return
        if row.get("ua") not in ("", None):
            self.ua.append(row["ua"])
        parts = [f"round {row['round']}"]
        if row.get("ua") not in ("", None):
            parts.append(f"UA {row['ua']:.3f}")
        if isinstance(row.get("loss"), float) and math.isfinite(row["loss"]):
            parts.append(f"loss {row['loss']:.3f}")
        for key, label in (("missing", "missing"), ("updates", "updates"),
                           ("rejected", "rejected"), ("send_failures", "send failures")):
            if row.get(key):
                parts.append(f"{label} {row[key]}")
        parts.append(f"sent {row.get('bytes_sent', 0) / 1e6:.2f} MB")
        parts.append(f"{row.get('wall_s', 0):.1f} s")
        line = f"{self.title}: " + "  ".join(parts)
        if not self.console.is_terminal:
            self.console.print(line)
            return
        text = Text(line + "  ")
        text.append(sparkline(self.ua, width=30), style="green")
        if self.live is None:
            self.live = Live(text, console=self.console, refresh_per_second=4)
            self.live.start()
        else:
            self.live.update(text)

    def close(self) -> None:
        if self.live is not None:
            self.live.stop()
