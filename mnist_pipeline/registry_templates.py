"""HTML of the Model Registry page (Jinja2, autoescaped): the overview and one version's page."""

from __future__ import annotations

from typing import Any

__all__ = ["render"]

_BASE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{% block title %}{% endblock %}</title>
<style>
 body { font-family: system-ui, sans-serif; margin: 1.5rem; color: #1a1a1a; }
 table { border-collapse: collapse; margin: 0.5rem 0 1.5rem; }
 th, td { border: 1px solid #ccc; padding: 0.3rem 0.6rem; text-align: left; font-size: 0.9rem; }
 th { background: #f0f3f7; } tr.champion { background: #fff6d6; font-weight: 600; }
 .badge { background: #e8a500; color: white; border-radius: 0.6rem; padding: 0 0.5rem; font-size: 0.8rem; }
 td.nowrap { white-space: nowrap; } .muted { color: #666; } .no { color: #a33; } .yes { color: #176a2c; }
 img { max-width: 100%; border: 1px solid #ddd; margin: 0.3rem 0 1rem; }
 .card { max-width: 60rem; } code { font-size: 0.85rem; }
</style></head><body>{% block body %}{% endblock %}</body></html>"""

_OVERVIEW = """{% extends "base" %}{% block title %}Model Registry{% endblock %}{% block body %}
<h1>Model Registry</h1>
<p class="muted">Registry <code>{{ registry_uri }}</code>: read-only.</p>
<h2>Champion</h2>
{% if champion %}
<p id="champion"><a href="{{ champion.link }}">{{ champion.model }} / {{ champion.version }}</a>:
 accuracy {{ "%.4f"|format(champion.metrics.accuracy) }}, promoted {{ champion.promoted_at }}
 {% if champion.run_id %}by run <code>{{ champion.run_id }}</code>{% endif %}.<br>
 Verdict: {{ champion.verdict }}</p>
{% else %}<p id="champion">No champion yet.</p>{% endif %}
<h2>Versions</h2>
{% if versions %}
<table id="versions"><tr><th>model</th><th>version</th><th>test accuracy</th><th>loss</th>
 <th>trained at</th><th>gate verdict</th><th>report</th></tr>
{% for row in versions %}
<tr class="{{ 'champion' if row.is_champion else '' }}" data-version="{{ row.model }}/{{ row.version }}">
 <td>{{ row.model }}{% if row.is_champion %} <span class="badge">champion</span>{% endif %}</td>
 <td class="nowrap"><a href="{{ row.link }}">{{ row.version }}</a></td>
 <td>{{ "%.4f"|format(row.accuracy) if row.accuracy is not none else "?" }}</td>
 <td>{{ "%.4f"|format(row.loss) if row.loss is not none else "?" }}</td>
 <td class="nowrap">{{ row.trained_at }}</td><td>{{ row.verdict }}</td>
 <td><a href="{{ row.link }}">figures, model card</a></td></tr>
{% endfor %}</table>
{% else %}<p>No published versions yet.</p>{% endif %}
<h2>Promotion history</h2>
{% if history %}
<table id="history"><tr><th>time (UTC)</th><th>kind</th><th>model / version</th><th>promoted</th>
 <th>accuracy</th><th>verdict</th><th>run</th><th>trigger</th></tr>
{% for event in history %}
<tr><td class="nowrap">{{ event.time }}</td><td>{{ event.kind }}</td>
 <td>{{ event.model }}{% if event.version %} / {{ event.version }}{% endif %}</td>
 <td class="{{ 'yes' if event.promoted else 'no' }}">{{ 'yes' if event.promoted else 'no' }}
  {%- if event.forced %} (forced){% endif %}{% if event.dry_run %} (dry run){% endif %}</td>
 <td>{{ "%.4f"|format(event.accuracy) if event.accuracy is not none else "" }}</td>
 <td>{{ event.reason }}</td><td><code>{{ event.run_id or "" }}</code></td>
 <td>{{ event.trigger or "" }}</td></tr>
{% endfor %}</table>
{% else %}<p>No gate decisions yet.</p>{% endif %}
{% endblock %}"""

_VERSION = """{% extends "base" %}{% block title %}{{ model }} / {{ version }}{% endblock %}{% block body %}
<p><a href="{{ overview_link }}">&larr; Model Registry</a></p>
<h1>{{ model }} / {{ version }}{% if is_champion %} <span class="badge">champion</span>{% endif %}</h1>
<table id="summary">
 <tr><th>test accuracy</th><td>{{ "%.4f"|format(metrics.accuracy) }}</td></tr>
 <tr><th>loss</th><td>{{ "%.4f"|format(metrics.loss) }}</td></tr>
 <tr><th>gate verdict</th><td>{{ verdict }}</td></tr>
 <tr><th>data hash</th><td><code>{{ metadata.data_hash }}</code></td></tr>
 <tr><th>Airflow run</th><td><code>{{ metadata.airflow_run_id }}</code></td></tr>
 <tr><th>trained at</th><td>{{ metadata.trained_at }}</td></tr>
</table>
<h2>Report</h2>
{% for figure in figures %}<h3>{{ figure.title }}</h3><img src="{{ figure.link }}" alt="{{ figure.title }}">
{% else %}<p>This version was published without report figures.</p>{% endfor %}
<h2>Model card</h2>
<div class="card" id="model-card">{{ model_card_html|safe }}</div>
{% endblock %}"""


def render(template: str, **context: Any) -> str:
    """`template` is "overview" or "version"."""
    return _environment().get_template(template).render(**context)


def _environment() -> Any:
    import jinja2

    loader = jinja2.DictLoader({"base": _BASE, "overview": _OVERVIEW, "version": _VERSION})
    return jinja2.Environment(loader=loader, autoescape=True, undefined=jinja2.StrictUndefined)
