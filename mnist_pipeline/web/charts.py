"""The overview's "Accuracy over time" chart: an inline `<svg>` drawn from the page of history the
overview has already read, so the chart costs no storage call of its own.

The main panel plots each gate decision's challenger accuracy on mnist_test (x: the decision's time,
colour: the model, filled: promoted, hollow: kept), the champion's accuracy as a step line, and a
dashed mark, labelled with the version, wherever the champion changed (the gate, a person or a
rollback). Every other slice the verdicts carry (new_data) gets a small panel below on the same time
axis, with the challenger's and the champion's accuracy at each decision.

Plain SVG with `<title>` tooltips: no script and no network, so it renders wherever the api-server
runs. Every text drawn comes from stored records and is escaped.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from html import escape

from mnist_pipeline.registry.gate import MNIST_TEST
from mnist_pipeline.registry.records import HistoryEvent

__all__ = [
    "CHART_ID",
    "Axis",
    "ChampionChange",
    "Decision",
    "Timeline",
    "accuracy_axis",
    "accuracy_chart",
    "percent_label",
    "time_axis",
    "timeline",
]

CHART_ID = "accuracy-chart"
_PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2")
_CHAMPION_COLOUR, _GRID_COLOUR, _MARK_COLOUR = "#333", "#e4e4e4", "#999"
_WIDTH, _LEFT, _RIGHT = 760, 70, 20  # the left margin holds the y tick labels and the axis title
_MAIN_HEIGHT, _SLICE_HEIGHT, _SLICE_GAP, _X_AXIS_ROOM = 230, 100, 34, 46
_LEGEND_TOP, _LEGEND_LINE, _CHAR_WIDTH = 14, 18, 6.5  # text width is estimated: there is no font metric
_POINT_RADIUS, _LABEL_SPACING = 4.5, 12  # marks closer than this share the label of the first
_TICKS = 5  # about this many ticks per axis
_PAD_FRACTION = 0.1  # room above and below the data, so no point sits on the frame
_MIN_ACCURACY_SPAN = 0.01  # equal accuracies still get a 1-point-wide axis
_MIN_TIME_SPAN = 60.0  # seconds: a single decision gets a minute-wide axis
_SLICE_TICKS = 3  # a slice's panel is small
_DAY = 86400
_TIME_STEPS = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200, 10800, 21600, 43200, _DAY)
_TIME_STEPS += (2 * _DAY, 7 * _DAY)  # longer spans are ticked at the first of every 1, 2, 3, 6, 12 months
_MONTH_STEPS, _MONTH = (1, 2, 3, 6, 12), 30.44 * _DAY  # an average month: only to pick the step
_TIME_FORMATS = (
    (60, "%H:%M:%S"),
    (3600, "%H:%M"),
    (_DAY, "%m-%d %H:%M"),
    (28 * _DAY, "%Y-%m-%d"),
    (math.inf, "%Y-%m"),
)
_CHANGE_KINDS = {
    "gate": "promoted by the gate",
    "approval": "promoted by the gate, approved by a person",
    "rollback": "restored by a rollback",
}


@dataclass(frozen=True)
class Decision:
    """One gate decision as plotted: its time (seconds since the epoch) and its accuracies."""

    time: float
    model: str
    version: str | None  # None: a kept challenger is not published
    promoted: bool
    accuracy: float  # the challenger's on mnist_test
    slices: dict[str, tuple[float, float | None]]  # each other slice: (challenger, champion) accuracy


@dataclass(frozen=True)
class ChampionChange:
    """A moment the champion changed: a gate promotion, a manual promotion or a rollback."""

    time: float
    model: str
    version: str
    kind: str


@dataclass(frozen=True)
class Timeline:
    """What the chart plots, oldest first."""

    decisions: list[Decision]
    changes: list[ChampionChange]
    champion: list[tuple[float, float]]  # (time, accuracy) wherever the champion's accuracy is seen to change

    @property
    def slice_names(self) -> list[str]:
        return sorted({name for decision in self.decisions for name in decision.slices})

    @property
    def times(self) -> list[float]:
        changes = [change.time for change in self.changes]
        return [d.time for d in self.decisions] + changes + [time for time, _ in self.champion]


@dataclass(frozen=True)
class Axis:
    """A data interval (low < high) with its ticks and their labels."""

    low: float
    high: float
    ticks: tuple[float, ...]
    labels: tuple[str, ...]

    def to_pixels(self, value: float, start: float, end: float) -> float:
        return start + (value - self.low) / (self.high - self.low) * (end - start)


# From history events to what is plotted.


def timeline(events: Iterable[HistoryEvent]) -> Timeline:
    """The decisions, champion changes and champion accuracy of `events` (any order); events without
    a readable time, and gate decisions without a test accuracy, are left out."""
    dated = sorted(((t, e) for e in events if (t := _seconds(e.time)) is not None), key=lambda pair: pair[0])
    decisions: list[Decision] = []
    changes: list[ChampionChange] = []
    steps: list[tuple[float, float]] = []
    for time, event in dated:
        before, after = _champion_accuracy(event), _challenger_accuracy(event)
        # A champion re-measured on a new test set changes level without a promotion.
        if before is not None and (not steps or not math.isclose(steps[-1][1], before, abs_tol=1e-12)):
            steps.append((time, before))
        if event.kind == "gate" and after is not None:
            decisions.append(_decision(time, event, after))
        if event.promoted and not event.dry_run and event.version:
            changes.append(ChampionChange(time, event.model, event.version, event.kind))
            if after is not None:
                steps.append((time, after))
    return Timeline(decisions, changes, steps)


def _decision(time: float, event: HistoryEvent, accuracy: float) -> Decision:
    slices = {
        piece.name: (challenger, _finite(piece.champion_accuracy))
        for piece in event.verdict.slices
        if piece.name != MNIST_TEST and (challenger := _finite(piece.challenger_accuracy)) is not None
    }
    promoted = event.promoted and not event.dry_run
    return Decision(time, event.model, event.version, promoted, accuracy, slices)


def _challenger_accuracy(event: HistoryEvent) -> float | None:
    """On mnist_test: the gate's slice, else its verdict (before slices), else the event's metrics
    (a manual promotion or rollback quotes the new champion's)."""
    test = event.verdict.slice(MNIST_TEST)
    candidates = (test.challenger_accuracy if test else None, event.verdict.challenger_accuracy)
    return next((v for v in map(_finite, candidates) if v is not None), _metric(event.metrics))


def _champion_accuracy(event: HistoryEvent) -> float | None:
    """The champion's accuracy on mnist_test when the event was decided, if the event says."""
    test = event.verdict.slice(MNIST_TEST)
    candidates = (test.champion_accuracy if test else None, event.verdict.champion_accuracy)
    found = next((v for v in map(_finite, candidates) if v is not None), None)
    previous = event.previous_champion
    return found if found is not None or previous is None else _metric(previous.metrics)


def _metric(metrics: dict[str, float] | None) -> float | None:
    return _finite((metrics or {}).get("accuracy"))


def _finite(value: object) -> float | None:
    # Stored records are JSON: a missing, NaN or non-numeric accuracy is not plotted.
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def _seconds(time: str) -> float | None:
    try:
        moment = datetime.fromisoformat(time.replace("Z", "+00:00"))
    except ValueError:
        return None
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).timestamp()


# Axes.


def accuracy_axis(values: Sequence[float], ticks: int = _TICKS) -> Axis:
    """An accuracy axis around `values` (not empty): padded, at least `_MIN_ACCURACY_SPAN` wide,
    within [0, 1], widened to whole tick steps (about `ticks` of them), labelled in percent."""
    if not values:
        raise ValueError("an accuracy axis needs at least one value")
    low, high = min(values), max(values)
    pad = max((high - low) * _PAD_FRACTION, (_MIN_ACCURACY_SPAN - (high - low)) / 2)
    low, high = max(0.0, low - pad), min(1.0, high + pad)
    step = _nice_step(high - low, ticks)
    first, last = math.floor(low / step + 1e-9), math.ceil(high / step - 1e-9)
    marks = tuple(round(i * step, 12) for i in range(first, last + 1))
    return Axis(marks[0], marks[-1], marks, tuple(percent_label(mark, step) for mark in marks))


def percent_label(value: float, step: float) -> str:
    """`value` in percent with as many decimals as `step` (the tick spacing) needs: 97.5%, 97.25%."""
    points = step * 100
    decimals = next((d for d in range(6) if abs(round(points, d) - points) < 1e-9 * max(points, 1)), 6)
    return f"{value * 100:.{decimals}f}%"


def time_axis(times: Sequence[float]) -> Axis:
    """A UTC time axis around `times` (seconds since the epoch, not empty), padded, at least
    `_MIN_TIME_SPAN` wide, with ticks at round seconds, minutes, hours, days or months."""
    if not times:
        raise ValueError("a time axis needs at least one time")
    low, high = min(times), max(times)
    pad = max((high - low) * _PAD_FRACTION / 2, (_MIN_TIME_SPAN - (high - low)) / 2)
    low, high = low - pad, high + pad
    span = high - low
    step = next((s for s in _TIME_STEPS if s * _TICKS >= span), None)
    if step is None:
        months = next((m for m in _MONTH_STEPS if m * _MONTH * _TICKS >= span), None)
        months = months or 12 * math.ceil(span / (12 * _MONTH * _TICKS))
        ticks, step = _month_ticks(low, high, months), months * _MONTH
    else:
        ticks = tuple(i * step for i in range(math.ceil(low / step), math.floor(high / step) + 1))
    return Axis(low, high, ticks, tuple(_time_label(tick, step) for tick in ticks))


def _month_ticks(low: float, high: float, months: int) -> tuple[float, ...]:
    """The firsts of the months between `low` and `high` whose index is a multiple of `months`
    (so that a 3-month step ticks quarters)."""
    start = datetime.fromtimestamp(low, UTC)
    index = start.year * 12 + start.month  # the month after low's (months counted from year 0)
    index += -index % months
    ticks = []
    while (tick := datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC).timestamp()) <= high:
        ticks.append(tick)
        index += months
    return tuple(ticks)


def _time_label(seconds: float, step: float) -> str:
    # Finer steps need the time of day, coarser ones the date; the axis title names the days.
    pattern = next(form for finer_than, form in _TIME_FORMATS if step < finer_than)
    return datetime.fromtimestamp(seconds, UTC).strftime(pattern)


def _nice_step(span: float, ticks: int = _TICKS) -> float:
    """1, 2, 2.5 or 5 times a power of ten, giving about `ticks` ticks over `span` (> 0)."""
    raw = span / ticks
    magnitude = 10 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw * (1 - 1e-9))


# Drawing.


@dataclass(frozen=True)
class _Frame:
    """What every panel shares: the time axis and the models' colours."""

    x: Axis
    colours: dict[str, str]

    def px(self, time: float) -> float:
        return self.x.to_pixels(time, _LEFT, _WIDTH - _RIGHT)


@dataclass(frozen=True)
class _Panel:
    """One plot area: its place, its accuracy axis, the slice it shows."""

    top: float
    height: float
    y: Axis
    slice_name: str

    @property
    def bottom(self) -> float:
        return self.top + self.height

    def py(self, value: float) -> float:
        return self.y.to_pixels(value, self.bottom, self.top)


def accuracy_chart(events: Iterable[HistoryEvent]) -> str | None:
    """The chart of `events` as an `<svg>` element; None when none of them is a gate decision with a
    test accuracy (the page then says so in words)."""
    line = timeline(events)
    if not line.decisions:
        return None
    models = sorted({decision.model for decision in line.decisions})
    frame = _Frame(time_axis(line.times), {m: _PALETTE[i % len(_PALETTE)] for i, m in enumerate(models)})
    legend, legend_bottom = _legend(frame.colours, bool(line.slice_names))
    main = _Panel(legend_bottom + 10, _MAIN_HEIGHT, accuracy_axis(_main_values(line)), MNIST_TEST)
    parts = [*legend, *_main_panel(frame, main, line)]
    bottom = main.bottom
    for name in line.slice_names:
        panel = _Panel(
            bottom + _SLICE_GAP, _SLICE_HEIGHT, accuracy_axis(_slice_values(line, name), _SLICE_TICKS), name
        )
        parts += _slice_panel(frame, panel, line.decisions)
        bottom = panel.bottom
    parts += _time_labels(frame, bottom)
    height = bottom + _X_AXIS_ROOM
    opening = (
        f'<svg id="{CHART_ID}" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {_WIDTH} {height:.0f}"'
        f' width="{_WIDTH}" height="{height:.0f}" role="img" font-family="system-ui, sans-serif"'
        ' font-size="11"><title>Test accuracy of each gate decision over time</title>'
    )
    return "\n".join([opening, *parts, "</svg>"])


def _main_values(line: Timeline) -> list[float]:
    return [d.accuracy for d in line.decisions] + [accuracy for _, accuracy in line.champion]


def _slice_values(line: Timeline, name: str) -> list[float]:
    pairs = [d.slices[name] for d in line.decisions if name in d.slices]
    return [v for pair in pairs for v in pair if v is not None]


def _main_panel(frame: _Frame, panel: _Panel, line: Timeline) -> list[str]:
    parts = ['<g class="main-panel">', *_panel_frame(frame, panel, "accuracy on mnist_test")]
    parts += _champion_line(frame, panel, line)
    parts += _change_marks(frame, panel, line.changes)
    parts += [_point(frame, panel, decision) for decision in line.decisions]
    return [*parts, "</g>"]


def _slice_panel(frame: _Frame, panel: _Panel, decisions: list[Decision]) -> list[str]:
    name = panel.slice_name
    parts = [f'<g class="slice-panel" data-slice="{_e(name)}">', *_panel_frame(frame, panel, name)]
    for decision in (d for d in decisions if name in d.slices):
        challenger, champion = decision.slices[name]
        x, who = frame.px(decision.time), _who(decision)
        if champion is not None:
            half = _POINT_RADIUS - 0.5  # a square: the champion, told apart from the challenger's circle
            parts.append(
                f'<rect class="slice-champion" x="{x - half:.1f}" y="{panel.py(champion) - half:.1f}"'
                f' width="{2 * half:.1f}" height="{2 * half:.1f}" fill="{_CHAMPION_COLOUR}">'
                f"<title>{_e(f'champion when {who} was judged: {_pct(champion)} on {name}')}</title></rect>"
            )
        figures = f"{_pct(challenger)} on {name}"
        parts.append(_marker(frame, decision, x, panel.py(challenger), "slice-point", figures))
    return [*parts, "</g>"]


def _panel_frame(frame: _Frame, panel: _Panel, title: str) -> list[str]:
    """The panel's box, grid, accuracy ticks and title (the time labels go under the last panel)."""
    left, right = _LEFT, _WIDTH - _RIGHT
    parts = [
        f'<rect x="{left}" y="{panel.top:.1f}" width="{right - left}" height="{panel.height:.1f}"'
        ' fill="white" stroke="#bbb"/>'
    ]
    for tick in frame.x.ticks:
        x = frame.px(tick)
        parts.append(_line(x, panel.top, x, panel.bottom, _GRID_COLOUR))
    for tick, label in zip(panel.y.ticks, panel.y.labels, strict=True):
        y = panel.py(tick)
        parts.append(_line(left, y, right, y, _GRID_COLOUR))
        parts.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{_e(label)}</text>')
    middle = panel.top + panel.height / 2
    parts.append(
        f'<text class="axis-title" x="14" y="{middle:.1f}" text-anchor="middle"'
        f' transform="rotate(-90 14 {middle:.1f})">{_e(title)}</text>'
    )
    return parts


def _champion_line(frame: _Frame, panel: _Panel, line: Timeline) -> list[str]:
    """A step line: the champion's accuracy holds until the next change, up to the last event."""
    if not line.champion:
        return []
    first_time, first_accuracy = line.champion[0]
    path = [f"M{frame.px(first_time):.1f},{panel.py(first_accuracy):.1f}"]
    for time, accuracy in line.champion[1:]:
        path.append(f"H{frame.px(time):.1f}V{panel.py(accuracy):.1f}")
    path.append(f"H{frame.px(max(line.times)):.1f}")
    return [
        f'<path class="champion-line" d="{"".join(path)}" fill="none" stroke="{_CHAMPION_COLOUR}"'
        ' stroke-width="1.5"><title>the champion\'s accuracy on mnist_test</title></path>'
    ]


def _change_marks(frame: _Frame, panel: _Panel, changes: list[ChampionChange]) -> list[str]:
    """A dashed line at each change of champion, labelled with the version unless too close to the
    previous label to be read."""
    parts, labelled_at = [], -math.inf
    for change in changes:
        x, name = frame.px(change.time), f"{change.model}/{change.version}"
        tooltip = f"{name}: {_CHANGE_KINDS.get(change.kind, change.kind)}"
        parts.append(f'<g class="champion-change" data-version="{_e(name)}"><title>{_e(tooltip)}</title>')
        parts.append(_line(x, panel.top, x, panel.bottom, _MARK_COLOUR, dashed=True))
        if x - labelled_at >= _LABEL_SPACING:
            labelled_at = x
            parts.append(
                f'<text x="{x - 4:.1f}" y="{panel.top + 4:.1f}" text-anchor="end" font-size="9" fill="#666"'
                f' transform="rotate(-90 {x - 4:.1f} {panel.top + 4:.1f})">{_e(name)}</text>'
            )
        parts.append("</g>")
    return parts


def _point(frame: _Frame, panel: _Panel, decision: Decision) -> str:
    x, y = frame.px(decision.time), panel.py(decision.accuracy)
    return _marker(frame, decision, x, y, "point", f"{_pct(decision.accuracy)} on mnist_test")


def _marker(frame: _Frame, decision: Decision, x: float, y: float, kind: str, figures: str) -> str:
    """A challenger's circle, filled when promoted, hollow when kept, with its tooltip."""
    colour = frame.colours[decision.model]
    outcome = "promoted" if decision.promoted else "kept"
    version = f"{decision.model}/{decision.version}" if decision.version else ""
    when = datetime.fromtimestamp(decision.time, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    tooltip = f"{_who(decision)}: {figures}, {outcome if decision.promoted else 'kept the champion'} ({when})"
    return (
        f'<circle class="{kind} {outcome}" data-version="{_e(version)}" data-model="{_e(decision.model)}"'
        f' cx="{x:.1f}" cy="{y:.1f}" r="{_POINT_RADIUS}" fill="{colour if decision.promoted else "white"}"'
        f' stroke="{colour}" stroke-width="1.8"><title>{_e(tooltip)}</title></circle>'
    )


def _time_labels(frame: _Frame, bottom: float) -> list[str]:
    parts = [
        f'<text x="{frame.px(tick):.1f}" y="{bottom + 15:.1f}" text-anchor="{_anchor(frame.px(tick))}">'
        f"{_e(label)}</text>"
        for tick, label in zip(frame.x.ticks, frame.x.labels, strict=True)
    ]
    first, last = (datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d") for t in (frame.x.low, frame.x.high))
    days = first if first == last else f"{first} to {last}"
    middle = (_LEFT + _WIDTH - _RIGHT) / 2
    parts.append(
        f'<text class="axis-title" x="{middle:.1f}" y="{bottom + 36:.1f}" text-anchor="middle">'
        f"{_e(f'time of the decision (UTC, {days})')}</text>"
    )
    return parts


def _anchor(x: float) -> str:
    # A label at the right edge ends there rather than running out of the picture.
    return "end" if _WIDTH - _RIGHT - x < 30 else "middle"


def _legend(colours: dict[str, str], slices: bool) -> tuple[list[str], float]:
    """One entry per model, then what the marks mean (the slice panels' square when there are
    any); wrapped onto more lines when wide. Returns the entries and the bottom of the legend."""
    entries = [_legend_entry(name, f'<circle r="4.5" fill="{colour}"/>') for name, colour in colours.items()]
    entries += [
        _legend_entry("promoted", f'<circle r="4.5" fill="{_MARK_COLOUR}"/>'),
        _legend_entry("kept", f'<circle r="4.5" fill="white" stroke="{_MARK_COLOUR}" stroke-width="1.8"/>'),
        _legend_entry("champion", f'<path d="M-7,0H7" stroke="{_CHAMPION_COLOUR}" stroke-width="1.5"/>'),
        _legend_entry("new champion", f'<path d="M0,-6V6" stroke="{_MARK_COLOUR}" stroke-dasharray="3 2"/>'),
    ]
    if slices:
        square = f'<rect x="-4" y="-4" width="8" height="8" fill="{_CHAMPION_COLOUR}"/>'
        entries.append(_legend_entry("champion on the slice", square))
    parts, x, y = ['<g class="legend">'], float(_LEFT), float(_LEGEND_TOP)
    for width, body in entries:
        if x + width > _WIDTH - _RIGHT and x > _LEFT:
            x, y = float(_LEFT), y + _LEGEND_LINE
        parts.append(f'<g transform="translate({x + 7:.1f} {y:.1f})">{body}</g>')
        x += width
    return [*parts, "</g>"], y + _LEGEND_LINE / 2


def _legend_entry(label: str, symbol: str) -> tuple[float, str]:
    text = f'<text x="11" y="4">{_e(label)}</text>'
    return 22 + _CHAR_WIDTH * len(label), symbol + text


def _line(x1: float, y1: float, x2: float, y2: float, colour: str, dashed: bool = False) -> str:
    dash = ' stroke-dasharray="4 3"' if dashed else ""
    return f'<line x1="{x1:.1f}" y1="{y1:.1f}" x2="{x2:.1f}" y2="{y2:.1f}" stroke="{colour}"{dash}/>'


def _who(decision: Decision) -> str:
    return f"{decision.model}/{decision.version}" if decision.version else f"{decision.model} (not published)"


def _pct(accuracy: float) -> str:
    return f"{accuracy * 100:.2f}%"


def _e(text: str) -> str:
    return escape(text, quote=True)
