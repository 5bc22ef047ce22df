"""A sweep's result (`SweepResult`) and its files: a markdown report, a CSV of its rows and a chart.

`dump_sweep` writes `<dir>/<name>.md`, `<name>.csv` and, with the `plot` extra, `<name>.png` (name
percent-encoded by `engine.naming.name_file_stem`, so any sweep name is one safe file name). The chart
shows each parameter set's score (its mean in-sample metric, as ranked): a line over the values of a
single parameter, a heatmap over the first two parameters otherwise (each cell the best score over
any further parameters), or a scatter when the values are too many for cells (an Optuna search of
real numbers). matplotlib is imported lazily and only through its object API, as `reports/plots.py`
does, so the report works without it and from any thread.
"""

from __future__ import annotations

import csv
import importlib
import io
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from ..engine.naming import name_file_stem
from ..reports.plots import plot_available
from ..reports.report import markdown_table, write_atomic
from .ranking import LOWER_IS_BETTER, rank_key
from .sweep_models import RankedParams, SplitChoice, SweepRow

__all__ = ["SweepFiles", "SweepResult", "dump_sweep", "render_sweep_png", "sweep_csv", "sweep_markdown"]

_NA = "N/A"
_MAX_CELLS = 40  # distinct values per axis a heatmap shows; more become a scatter


@dataclass(frozen=True)
class SweepFiles:
    """Where `SweepResult.dump` wrote: the markdown report, the CSV of the rows, the chart (or None)."""

    markdown: Path
    csv: Path
    chart: Path | None

    def to_dict(self) -> dict[str, str | None]:
        return {"markdown": str(self.markdown), "csv": str(self.csv),
                "chart": None if self.chart is None else str(self.chart)}


@dataclass(frozen=True)
class SweepResult:
    """Everything a sweep found (see `bk.Sweep`).

    `rows` are in plan order (frame, split, parameter set, symbol), never completion order; `splits`
    holds the choice made on each split; `ranking` every parameter set, best first; `best` the first
    one's parameters (None when none ran without an error). `interrupted` is True when the sweep was
    stopped or cancelled: the rows are those of the jobs that finished.
    """

    name: str
    metric: str
    search: Literal["grid", "optuna"]
    param_names: tuple[str, ...]
    rows: list[SweepRow]
    splits: list[SplitChoice]
    ranking: list[RankedParams]
    interrupted: bool
    total_jobs: int
    finished_jobs: int
    failed_jobs: int
    elapsed_seconds: float
    executor: str
    walk_forward: bool
    dump_dir: Path = Path("./dump")

    @property
    def best(self) -> dict[str, Any] | None:
        if not self.ranking or self.ranking[0].errors or self.ranking[0].runs == 0:
            return None
        return dict(self.ranking[0].params)

    @property
    def best_score(self) -> float | None:
        return self.ranking[0].score if self.best is not None else None

    def table(self) -> list[dict[str, Any]]:
        """The rows as dicts (`SweepRow.to_dict`)."""
        return [row.to_dict() for row in self.rows]

    def to_dict(self) -> dict[str, Any]:
        """The whole result as JSON-ready builtins (what `backtest-kit sweep --json` prints)."""
        return {
            "name": self.name,
            "metric": self.metric,
            "search": self.search,
            "executor": self.executor,
            "walk_forward": self.walk_forward,
            "interrupted": self.interrupted,
            "jobs": {"total": self.total_jobs, "finished": self.finished_jobs, "failed": self.failed_jobs},
            "elapsed_seconds": round(self.elapsed_seconds, 6),
            "best": self.best,
            "best_score": self.best_score,
            "splits": [s.to_dict() for s in self.splits],
            "ranking": [r.to_dict() for r in self.ranking],
            "rows": self.table(),
        }

    def to_markdown(self) -> str:
        return sweep_markdown(self)

    def to_csv(self) -> str:
        return sweep_csv(self)

    def dump(self, directory: str | Path | None = None, *, plot: bool = True) -> SweepFiles:
        """Write `<dir>/sweep/<name>.md` and `.csv` (name percent-encoded) and, with `plot` and the `plot`
        extra, `<name>.png` (the metric against the parameters). `directory` defaults to the engine's
        dump directory (`./dump`)."""
        base = Path(directory) if directory is not None else self.dump_dir
        return dump_sweep(self, base / "sweep", plot=plot)



def _num(x: float | int | None) -> str:
    if x is None:
        return _NA
    if isinstance(x, int):
        return str(x)
    return f"{x:.4f}"


def _value(v: Any) -> str:
    return f"{v:g}" if isinstance(v, float) else str(v)


def _params_text(params: Any) -> str:
    return _NA if params is None else ", ".join(f"{k}={_value(v)}" for k, v in params.items())


def _direction(metric: str) -> str:
    return "lower is better" if metric in LOWER_IS_BETTER else "higher is better"


def _summary(result: SweepResult) -> list[str]:
    search = ("grid" if result.search == "grid" else "Optuna") + (" with walk-forward" if result.walk_forward else "")
    jobs = f"{result.finished_jobs} of {result.total_jobs} finished, {result.failed_jobs} failed"
    lines = [
        f"**Search:** {search} over {', '.join(result.param_names)}",
        f"**Metric:** {result.metric} ({_direction(result.metric)})",
        f"**Executor:** {result.executor}",
        f"**Jobs:** {jobs} in {result.elapsed_seconds:.2f} s",
        f"**Best parameters:** {_params_text(result.best)} (score {_num(result.best_score)})",
    ]
    if result.interrupted:
        lines.append("**Interrupted:** the tables hold the jobs that finished before the sweep was stopped")
    return [line + "  " for line in lines[:-1]] + lines[-1:]


def _splits_table(result: SweepResult) -> list[str]:
    rows = [[s.frame, _NA if s.split is None else str(s.split), str(s.train), _NA if s.test is None else str(s.test),
             _params_text(s.params), _num(s.in_sample), _num(s.out_of_sample), str(s.candidates)]
            for s in result.splits]
    return markdown_table(["Frame", "Split", "Train (UTC)", "Test (UTC)", "Chosen", "In-sample", "Out-of-sample",
                           "Candidates"], rows)


def _ranking_table(result: SweepResult) -> list[str]:
    names = list(result.param_names)
    rows = [[str(i + 1), *(_value(r.params.get(n)) for n in names), _num(r.score), _num(r.out_of_sample),
             str(r.runs), str(r.errors)] for i, r in enumerate(result.ranking)]
    return markdown_table(["Rank", *names, "Score", "Out-of-sample", "Runs", "Errors"], rows)


def _runs_table(result: SweepResult) -> list[str]:
    names = list(result.param_names)
    rows = [[*(_value(r.params.get(n)) for n in names), r.symbol, r.frame, _NA if r.split is None else str(r.split),
             _NA if r.trial is None else str(r.trial), _num(r.in_sample), _num(r.trades_in_sample),
             _num(r.out_of_sample), _num(r.trades_out_of_sample), "yes" if r.chosen else "", r.error or ""]
            for r in result.rows]
    return markdown_table([*names, "Symbol", "Frame", "Split", "Trial", "In-sample", "Trades", "Out-of-sample",
                           "Trades (test)", "Chosen", "Error"], rows)


def sweep_markdown(result: SweepResult, chart: str | None = None) -> str:
    """The report: summary, walk-forward splits, ranking of parameter sets, every run."""
    lines = [f"# Sweep {result.name}", "", *_summary(result), ""]
    if chart is not None:
        lines += [f"![{result.metric} by parameters]({chart})", ""]
    if result.walk_forward:
        lines += ["## Walk-forward splits", "",
                  "Chosen on the train window (mean over the symbols), then run on the test window that follows.",
                  "", *_splits_table(result), ""]
    lines += ["## Ranking", "", f"Score: mean in-sample {result.metric} over every symbol and split a parameter "
              "set ran on; a set that failed anywhere ranks last.", "", *_ranking_table(result), ""]
    lines += ["## Runs", "", *_runs_table(result)]
    return "\n".join(lines)


def _csv_columns(result: SweepResult) -> tuple[list[str], list[str]]:
    fixed = ["symbol", "frame", "split", "train_start", "train_end", "test_start", "test_end", "trial", "chosen",
             "metric", "in_sample", "out_of_sample", "trades_in_sample", "trades_out_of_sample", "error"]
    params = [name if name not in fixed else f"param_{name}" for name in result.param_names]
    return params, fixed


def sweep_csv(result: SweepResult) -> str:
    """One line per row: the parameters (one column each), then `SweepRow.to_dict`'s fields."""
    param_columns, fixed = _csv_columns(result)
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([*param_columns, *fixed])
    for row in result.rows:
        data = row.to_dict()
        cells = [row.params.get(name) for name in result.param_names] + [data[c] for c in fixed]
        writer.writerow(["" if v is None else v for v in cells])
    return buffer.getvalue()


# ---------------------------------------------------------------------------------------------------------
# Chart
# ---------------------------------------------------------------------------------------------------------


def _scored(result: SweepResult) -> list[RankedParams]:
    return [r for r in result.ranking if r.score is not None]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _axis(values: Sequence[Any]) -> tuple[list[Any], bool]:
    """The distinct values of one parameter in plotting order, and whether they are numbers."""
    distinct: list[Any] = []
    for v in values:
        if v not in distinct:
            distinct.append(v)
    numeric = all(_is_number(v) for v in distinct)
    return (sorted(distinct) if numeric else distinct), numeric


def render_sweep_png(result: SweepResult, *, dpi: int = 100) -> bytes | None:
    """The chart as PNG bytes; None when no parameter set has a score. Raises ImportError without matplotlib."""
    figure: Any = importlib.import_module("matplotlib.figure")
    scored = _scored(result)
    if not scored:
        return None
    names = list(result.param_names)
    fig = figure.Figure(figsize=(8, 5.5), dpi=dpi, layout="constrained")
    ax = fig.subplots()
    label = f"mean in-sample {result.metric}"
    if len(names) == 1:
        _line_chart(ax, result, scored, names[0], label)
    else:
        _two_param_chart(fig, ax, result, scored, names[0], names[1], label)
    extra = f" (best over {', '.join(names[2:])})" if len(names) > 2 else ""
    fig.suptitle(f"Sweep {result.name}: {result.metric} ({_direction(result.metric)}){extra}", fontsize=11)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=dpi)
    return buffer.getvalue()


def _line_chart(ax: Any, result: SweepResult, scored: list[RankedParams], name: str, label: str) -> None:
    values, numeric = _axis([r.params[name] for r in scored])
    by_value = {repr(r.params[name]): r for r in scored}
    xs = values if numeric else list(range(len(values)))
    ax.plot(xs, [by_value[repr(v)].score for v in values], marker="o", color="#1f5fa8", label=label)
    tested = [(x, by_value[repr(v)].out_of_sample) for x, v in zip(xs, values, strict=True)
              if by_value[repr(v)].out_of_sample is not None]
    if tested:
        ax.scatter([t[0] for t in tested], [t[1] for t in tested], color="#d13b3b", zorder=3,
                   label=f"mean out-of-sample {result.metric} (where chosen)")
    if not numeric:
        ax.set_xticks(xs, [_value(v) for v in values])
    ax.set_xlabel(name)
    ax.set_ylabel(result.metric)
    ax.grid(True, alpha=0.3)
    ax.legend(loc="best", fontsize=8, frameon=False)


def _two_param_chart(fig: Any, ax: Any, result: SweepResult, scored: list[RankedParams], x_name: str,
                     y_name: str, label: str) -> None:
    xs, _ = _axis([r.params[x_name] for r in scored])
    ys, _ = _axis([r.params[y_name] for r in scored])
    if len(xs) > _MAX_CELLS or len(ys) > _MAX_CELLS:
        points = ax.scatter([r.params[x_name] for r in scored], [r.params[y_name] for r in scored],
                                     c=[r.score for r in scored], cmap="viridis", s=30)
        fig.colorbar(points, ax=ax, label=label)
    else:
        cells: list[list[float]] = [[float("nan")] * len(xs) for _ in ys]
        best: dict[tuple[int, int], float] = {}
        x_index = {repr(v): i for i, v in enumerate(xs)}
        y_index = {repr(v): j for j, v in enumerate(ys)}
        for r in scored:
            assert r.score is not None
            key = (y_index[repr(r.params[y_name])], x_index[repr(r.params[x_name])])
            if key not in best or rank_key(r.score, result.metric) < rank_key(best[key], result.metric):
                best[key] = r.score
        for (j, i), score in best.items():
            cells[j][i] = score
        cmap = "viridis_r" if result.metric in LOWER_IS_BETTER else "viridis"
        image = ax.imshow(cells, origin="lower", aspect="auto", cmap=cmap)
        ax.set_xticks(range(len(xs)), [_value(v) for v in xs])
        ax.set_yticks(range(len(ys)), [_value(v) for v in ys])
        if len(xs) * len(ys) <= 100:
            for (j, i), score in best.items():
                ax.text(i, j, f"{score:.2f}", ha="center", va="center", fontsize=7, color="black",
                        bbox={"facecolor": "white", "alpha": 0.6, "linewidth": 0, "pad": 1})
        fig.colorbar(image, ax=ax, label=label)
    ax.set_xlabel(x_name)
    ax.set_ylabel(y_name)


# ---------------------------------------------------------------------------------------------------------
# Files
# ---------------------------------------------------------------------------------------------------------


def dump_sweep(result: SweepResult, directory: Path, *, plot: bool = True) -> SweepFiles:
    """Write the markdown report, the CSV and (with `plot` and matplotlib, when a set has a score) the chart."""

    stem = name_file_stem(result.name)
    chart: Path | None = None
    if plot and plot_available():
        data = render_sweep_png(result)
        if data is not None:
            chart = write_atomic(directory / f"{stem}.png", data)
    markdown = write_atomic(directory / f"{stem}.md", sweep_markdown(result, None if chart is None else chart.name))
    table = write_atomic(directory / f"{stem}.csv", sweep_csv(result))
    return SweepFiles(markdown=markdown, csv=table, chart=chart)

