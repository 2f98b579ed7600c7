"""The overview's "Accuracy over time" chart, drawn from the page of history the overview has
already read, so the chart costs no storage call of its own.

The main panel plots each gate decision's challenger accuracy on mnist_test (x: the decision's
time, colour: the model, shape: what the decision came to: promoted, kept, waiting for approval,
approved, rejected or timed out), the champion's accuracy as a step line, and a dashed rule
wherever the champion changed (the gate, an approval, a person or a rollback). Every other slice
the verdicts carry (new_data) gets a small panel below on the same time axis, with the
challenger's and the champion's accuracy at each decision.

Declared with Altair (Vega-Lite) and rendered to SVG on the server by vl-convert: the page needs
no script and no network. Vega lays the axes out and drops tick labels that would overlap; the
champion changes carry no text labels of their own (the history table names each), so however
many promotions and rollbacks a page holds, no two labels overlap. Every text drawn is escaped by
the SVG renderer.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from mnist_pipeline.registry.gate import MNIST_TEST
from mnist_pipeline.registry.records import HistoryEvent

__all__ = [
    "CHART_ID",
    "DECISIONS",
    "ChampionChange",
    "Decision",
    "Timeline",
    "accuracy_chart",
    "decision_status",
    "timeline",
]

CHART_ID = "accuracy-chart"
PENDING = "waiting for approval"
# What a gate decision came to, in the legend's order, with the shape that marks it.
DECISIONS = {
    "promoted": "circle",
    "approved": "diamond",
    PENDING: "triangle-up",
    "kept": "square",
    "rejected": "cross",
    "timed out": "triangle-down",
}
_ANSWERS = {"approved": "approved", "rejected": "rejected", "timed-out": "timed out"}
_WIDTH, _MAIN_HEIGHT, _SLICE_HEIGHT = 620, 220, 90  # pixels; the page scales the SVG down to fit
_CHANGE_KINDS = {
    "gate": "promoted by the gate",
    "approval": "approved by a person",
    "manual-promotion": "promoted by a person",
    "rollback": "restored by a rollback",
}


@dataclass(frozen=True)
class Decision:
    """One gate decision as plotted: its time (seconds since the epoch) and its accuracies."""

    time: float
    model: str
    version: str | None  # None: a kept challenger is not published
    status: str  # a key of DECISIONS
    accuracy: float  # the challenger's on mnist_test
    slices: dict[str, tuple[float, float | None]]  # each other slice: (challenger, champion) accuracy

    @property
    def promoted(self) -> bool:
        return self.status in ("promoted", "approved")


@dataclass(frozen=True)
class ChampionChange:
    """A moment the champion changed: a gate promotion, an approval, a manual promotion or a rollback."""

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


def decision_status(event: HistoryEvent, answers: Mapping[tuple[str, str], str]) -> str:
    """What a gate decision came to (a key of DECISIONS): `answers` holds the approval answer
    (approved, rejected, timed-out) to a pending decision, by run and model."""
    if event.approval == "pending" and not event.dry_run:
        return _ANSWERS.get(answers.get((event.run_id or "", event.model), ""), PENDING)
    return "promoted" if event.promoted and not event.dry_run else "kept"


# From history events to what is plotted.


def timeline(
    events: Iterable[HistoryEvent], answers: Mapping[tuple[str, str], str] | None = None
) -> Timeline:
    """The decisions, champion changes and champion accuracy of `events` (any order); events without
    a readable time, and gate decisions without a test accuracy, are left out. `answers`: approval
    answers by run and model, beyond those among `events`."""
    events = list(events)
    known = dict(answers or {})
    known.update({(e.run_id or "", e.model): str(e.approval) for e in events if e.kind == "approval"})
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
            decisions.append(_decision(time, event, after, decision_status(event, known)))
        if event.promoted and not event.dry_run and event.version:
            changes.append(ChampionChange(time, event.model, event.version, event.kind))
            if after is not None:
                steps.append((time, after))
    return Timeline(decisions, changes, steps)


def _decision(time: float, event: HistoryEvent, accuracy: float, status: str) -> Decision:
    slices = {
        piece.name: (challenger, _finite(piece.champion_accuracy))
        for piece in event.verdict.slices
        if piece.name != MNIST_TEST and (challenger := _finite(piece.challenger_accuracy)) is not None
    }
    return Decision(time, event.model, event.version, status, accuracy, slices)


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


# The chart, declared.


def accuracy_chart(
    events: Iterable[HistoryEvent], answers: Mapping[tuple[str, str], str] | None = None
) -> str | None:
    """The chart of `events` as an `<svg>` element; None when none of them is a gate decision with a
    test accuracy (the page then says so in words)."""
    import vl_convert

    line = timeline(events, answers)
    if not line.decisions:
        return None
    svg = vl_convert.vegalite_to_svg(_spec(line).to_dict())
    label = "Test accuracy of each gate decision over time"
    return svg.replace("<svg ", f'<svg id="{CHART_ID}" role="img" aria-label="{label}" ', 1)


def _spec(line: Timeline) -> Any:
    import altair as alt

    main = alt.layer(*_main_layers(line)).properties(
        width=_WIDTH, height=_MAIN_HEIGHT, title=f"accuracy on {MNIST_TEST}"
    )
    panels = [_slice_panel(line, name) for name in line.slice_names]
    chart = alt.vconcat(main, *panels).resolve_scale(color="independent", shape="independent")
    return chart.configure_legend(orient="bottom", direction="horizontal", columns=3, symbolLimit=0)


def _main_layers(line: Timeline) -> list[Any]:
    import altair as alt

    points = alt.Chart(alt.Data(values=[_point(d) for d in line.decisions])).mark_point(
        filled=True, size=70, opacity=0.9
    )
    shapes = alt.Scale(domain=list(DECISIONS), range=list(DECISIONS.values()))
    layers = [
        points.encode(
            x=_time(),
            y=_accuracy(),
            color=alt.Color("model:N", title="challenger"),
            shape=alt.Shape("decision:N", scale=shapes, title="decision"),
            description=alt.Description("label:N"),  # each point's accessible name: what it shows
        )
    ]
    if line.champion:
        steps = [{"time": _iso(t), "accuracy": a, "line": "champion"} for t, a in line.champion]
        layers.insert(
            0,
            alt.Chart(alt.Data(values=steps))
            .mark_line(interpolate="step-after", color="#333", strokeWidth=1.5)
            .encode(x=_time(), y=_accuracy()),
        )
    if line.changes:
        layers.insert(0, _change_rules(line.changes))
    return layers


def _change_rules(changes: list[ChampionChange]) -> Any:
    import altair as alt

    rows = [
        {
            "time": _iso(c.time),
            "change": _CHANGE_KINDS.get(c.kind, c.kind),
            "label": f"champion {c.model}/{c.version}, {_CHANGE_KINDS.get(c.kind, c.kind)}, {_iso(c.time)}",
        }
        for c in changes
    ]
    dashes = alt.StrokeDash("change:N", title="champion changed")
    rule = alt.Chart(alt.Data(values=rows)).mark_rule(color="#999")
    return rule.encode(x=_time(), strokeDash=dashes, description=alt.Description("label:N"))


def _slice_panel(line: Timeline, name: str) -> Any:
    import altair as alt

    rows = [
        {"time": _iso(d.time), "accuracy": value, "who": who}
        for d in line.decisions
        if name in d.slices
        for who, value in zip(("challenger", "champion"), d.slices[name], strict=True)
        if value is not None
    ]
    who = alt.Color("who:N", scale=alt.Scale(domain=["challenger", "champion"], range=["#1f77b4", "#333"]))
    return (
        alt.Chart(alt.Data(values=rows))
        .mark_point(filled=True, size=45)
        .encode(x=_time(), y=_accuracy(), color=who.title(f"on {name}"))
        .properties(width=_WIDTH, height=_SLICE_HEIGHT, title=f"accuracy on {name}")
    )


def _time() -> Any:
    import altair as alt

    # UTC, as every time on the page; labels that would overlap are dropped, not drawn over each other.
    axis = alt.Axis(title="decided at (UTC)", labelOverlap="greedy", labelAngle=0, labelFlush=True)
    return alt.X("time:T", scale=alt.Scale(type="utc"), axis=axis)


def _accuracy() -> Any:
    import altair as alt

    return alt.Y(
        "accuracy:Q", scale=alt.Scale(zero=False, nice=True), axis=alt.Axis(format=".1%", tickCount=5)
    )


def _point(decision: Decision) -> dict[str, Any]:
    return {
        "time": _iso(decision.time),
        "accuracy": decision.accuracy,
        "model": decision.model,
        "decision": decision.status,
        "label": f"{decision.model}{'/' + decision.version if decision.version else ''}:"
        f" {decision.accuracy:.2%} on {MNIST_TEST}, {decision.status}, at {_iso(decision.time)}",
    }


def _iso(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
