"""The HTML page kit shared by the study report (`hpo_astro.report.html`) and the benchmark report
(`hpo_astro.benchmark.render`): one self-contained page (Plotly's JavaScript inlined, no external URL), escaped text,
tables, figures, and a store URL shown without its password."""

from __future__ import annotations

import html
from collections.abc import Sequence

import plotly.graph_objects as go
import plotly.io as pio

PLOTLY_CONFIG = {"displaylogo": False, "responsive": True}
CSS = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1200px; padding: 0 1em; color: #222; }
nav { font-size: 0.9em; margin-bottom: 1em; } nav a { margin-right: 0.8em; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.note { color: #8a5a00; background: #fff8e6; padding: 0.4em 0.7em; border-left: 3px solid #e0a800; }
.muted { color: #666; font-size: 0.9em; }
.gallery { display: flex; flex-wrap: wrap; gap: 0.6em; }
.gallery figure { margin: 0; font-size: 0.8em; text-align: center; }
.gallery img { image-rendering: pixelated; border: 1px solid #999; }
"""


def escape(text: object) -> str:
    return html.escape(str(text))


def figure_html(fig: go.Figure) -> str:
    return pio.to_html(fig, full_html=False, include_plotlyjs=False, config=PLOTLY_CONFIG)


def table_html(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    head = "".join(f"<th>{escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, nav: str, body: str) -> str:
    from plotly.offline import get_plotlyjs

    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        f"<title>{escape(title)}</title>\n<style>{CSS}</style>\n"
        f'<script type="text/javascript">{get_plotlyjs()}</script>\n</head>\n<body>\n'
        f"<nav>{nav}</nav>\n<h1>{escape(title)}</h1>\n{body}\n</body>\n</html>\n"
    )


def display_url(url: str) -> str:
    """The store's URL with any password hidden; a URL SQLAlchemy does not parse (journal:PATH) is shown as is."""
    import sqlalchemy.exc
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except (sqlalchemy.exc.ArgumentError, ValueError):  # not an SQLAlchemy URL; a port that is not a number
        return url
