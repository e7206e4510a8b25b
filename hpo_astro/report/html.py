"""The HTML report: an index page and one page per study, self-contained (plotly.js inline once per page, images
as data URIs, no external URL), so the directory can be opened offline or mailed as is.

`--png` also writes every figure as a static PNG with kaleido, which needs a Chrome/Chromium browser; without one
the report refuses with one line before doing any work.
"""

from __future__ import annotations

import base64
import io
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import optuna
import plotly.graph_objects as go
import plotly.io as pio

from hpo_astro.errors import UserError
from hpo_astro.io import write_output
from hpo_astro.report import figures
from hpo_astro.report.compare import (
    METRIC_NAMES,
    StudyResult,
    compare_front,
    compare_study,
    format_duration,
    metric_cell,
    notes,
    table_rows,
)
from hpo_astro.report.pareto import front_section
from hpo_astro.results.evaluate import (
    SPLITS,
    Events,
    NoCompletedTrial,
    load_studies,
    state_counts,
    study_data,
    study_record,
)
from hpo_astro.results.page import display_url, escape, figure_html, page, table_html
from hpo_astro.store.storage import close_store, open_existing_store
from hpo_astro.store.trials import directions_text, is_multi_objective
from hpo_astro.study.pbt_lineage import budget_line, lineage, lineage_figure

if TYPE_CHECKING:
    from hpo_astro.data.prepare import DataSplits

GALLERY_LIMIT = 40  # misclassified cutouts shown per best model, most confident errors first


@dataclass
class Report:
    directory: Path
    pages: list[Path]
    images: list[Path] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class _StudyEntry:
    study: optuna.Study
    slug: str
    result: StudyResult | None  # None: no completed trial, so no best model (or a multi-objective study)
    note: str
    data: DataSplits | None
    front: list[StudyResult] = field(default_factory=list)  # a multi-objective study's Pareto front

    @property
    def rows(self) -> list[StudyResult]:
        """Its columns of the final table: its best trial, or its front's trials."""
        return [self.result] if self.result is not None else self.front


# --- static images ----------------------------------------------------------------------------------------------


def check_png_export() -> None:
    """Refuse `--png` at once, with one line, when kaleido or the browser it drives is missing."""
    # What a missing piece raises: plotly, kaleido not installed (ValueError, or ImportError from an older plotly);
    # kaleido and choreographer (which drives Chrome for it), no Chrome, or Chrome failed or closed (RuntimeError
    # subclasses); the browser process cannot be started (OSError).
    try:
        pio.to_image(go.Figure(), format="png", width=20, height=20)
    except (ValueError, ImportError, RuntimeError, OSError) as exc:
        reason = next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise UserError(
            f"--png cannot write images: {reason} (static images need the kaleido package and the Chrome/Chromium "
            "browser it drives: pip install kaleido, then plotly_get_chrome; or leave out --png)"
        ) from None


def _write_png(fig: go.Figure, path: Path) -> Path:
    width, height = int(fig.layout.width or 1100), int(fig.layout.height or 500)
    return write_output(path, pio.to_image(fig, format="png", width=width, height=height))


# --- building blocks ------------------------------------------------------------------------------------------


def _slug(name: str, taken: set[str]) -> str:
    base = re.sub(r"[^A-Za-z0-9_.-]+", "-", name).strip("-.") or "study"
    slug, i = base, 2
    while slug in taken:
        slug, i = f"{base}-{i}", i + 1
    taken.add(slug)
    return slug


def cutout_data_uri(planes: np.ndarray, scale: int = 2) -> str:
    """A (C, H, W) cutout in [0, 1] as a grayscale PNG data URI, planes side by side."""
    from PIL import Image

    gap = np.ones((planes.shape[1], 2), dtype=np.float32)
    row = np.concatenate([p for plane in planes for p in (plane, gap)][:-1], axis=1)
    pixels = (np.clip(np.nan_to_num(row), 0.0, 1.0) * 255).astype(np.uint8)
    image = Image.fromarray(pixels, mode="L")
    image = image.resize((image.width * scale, image.height * scale), Image.NEAREST)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def misclassified(labels: np.ndarray, scores: np.ndarray, threshold: float, limit: int = GALLERY_LIMIT) -> np.ndarray:
    """Indices of wrongly classified samples, most confident errors first."""
    labels = np.asarray(labels).astype(bool)
    scores = np.asarray(scores, dtype=np.float64)
    wrong = np.flatnonzero((scores >= threshold) != labels)
    confidence = np.abs(scores[wrong] - labels[wrong])
    return wrong[np.argsort(-confidence, kind="stable")][:limit]


def _gallery(entry: _StudyEntry) -> str:
    assert entry.result is not None and entry.data is not None
    labels = entry.data.y_test.numpy()
    scores = np.asarray(entry.result.evaluation.test_scores)
    threshold = float(entry.result.evaluation.test.get("threshold", 0.5))
    shown = misclassified(labels, scores, threshold)
    n_wrong = int(((scores >= threshold) != labels.astype(bool)).sum())
    intro = (
        f'<p class="muted">{n_wrong} of {len(labels)} test cutouts misclassified at threshold {threshold:g}; '
        f"showing {'all' if len(shown) == n_wrong else f'the first {len(shown)}'}, most confident errors first. "
        "Each caption gives the true class, the model's prediction and its score (the probability of real). "
        "Planes shown: "
        f"{escape(', '.join(entry.data.channels))} (ZScale-scaled, as the model sees them).</p>"
    )
    if not len(shown):
        return intro
    items = []
    for i in shown:
        truth = "real" if labels[i] > 0.5 else "bogus"
        predicted = "real" if scores[i] >= threshold else "bogus"
        # Which label is the truth and which the model's: a bare "real" read as either.
        caption = f"test #{i}: truth {truth}, predicted {predicted} (score {scores[i]:.3f})"
        items.append(
            f'<figure><img src="{cutout_data_uri(entry.data.x_test[i].numpy())}" alt="{escape(caption)}">'
            f"<figcaption>{escape(caption)}</figcaption></figure>"
        )
    return intro + '<div class="gallery">' + "".join(items) + "</div>"


# --- pages ----------------------------------------------------------------------------------------------------


class _Figures:
    """Figure HTML for a page, remembering each figure for `--png`."""

    def __init__(self, page: str, keep: bool) -> None:
        self.page, self.keep = page, keep
        self.saved: list[tuple[str, go.Figure]] = []

    def __call__(self, key: str, fig: go.Figure) -> str:
        if self.keep:
            self.saved.append((f"{self.page}-{key}", fig))
        return figure_html(fig)


def _study_page(entry: _StudyEntry, nav: str, figs: _Figures) -> str:
    study = entry.study
    record = study_record(study)  # None for a study another program made: its facts show "?"
    counts = state_counts(study)
    if record is None:
        objective = target = pruner = seed = source = fingerprint = "?"
        max_epochs, channels = None, []
    else:
        objective, target, pruner, seed = record.objective, record.n_trials, record.pruner, record.seed
        source, fingerprint = record.data_source, record.data_fingerprint
        max_epochs, channels = record.max_epochs, record.channels
    facts = [
        ("strategy", record.strategy if record is not None else "?"),
        (
            "objective",
            directions_text(study, objective)
            if is_multi_objective(study)
            else f"{objective} ({directions_text(study)})",
        ),
        ("trials", ", ".join(f"{n} {s}" for s, n in counts.items()) + f" (target {target})"),
        ("pruner", pruner),
        ("seed", seed),
        ("max epochs", max_epochs or "t_max"),
        ("data", f"{source} (fingerprint {fingerprint}, channels {','.join(channels)})"),
    ]
    parts = [table_html(["study", study.study_name], facts)]
    result = entry.result
    if result is not None:
        ev = result.evaluation
        parts.append(f"<h2>Best configuration: trial #{result.best_trial}</h2>")
        sem = result.best_value_sem
        spread = "" if sem is None else f" ± {sem:.4f} ({result.best_value_runs} runs)"
        parts.append(
            f'<p class="muted">chosen by {escape(result.chosen_by)}; objective {escape(result.objective)} = '
            f"{result.best_value:.4f}{spread}; model "
            f"{'rebuilt from its saved weights' if ev.source == 'weights' else 'retrained with its stored seed'}"
            f"{'' if ev.reproduced is not False else ' (its validation metrics differ from the trial record!)'}; "
            f"search: {result.stats.n_finished} finished trials, "
            f"{format_duration(result.stats.wall_time_sum_s)} of trial time, within 1% of the final best after "
            f"{result.stats.trials_to_within or 'n/a'} trials.</p>"
        )
        parts.append(table_html(["hyperparameter", "value"], list(result.params.items())))
        rows = [[split, *(metric_cell(getattr(ev, split), m) for m in METRIC_NAMES)] for split in SPLITS]
        parts.append(table_html(["split", *METRIC_NAMES], rows))
    elif entry.front:
        parts.append(front_section(study, entry.front, figs))
    else:
        parts.append(f'<p class="note">{escape(entry.note)}; its best-model sections are left out.</p>')
    parts += [
        "<h2>(a) Improvement time series</h2>",
        figs("improvement", figures.improvement_figure(study)),
        "<h2>(b) Distributions over trials</h2>",
        figs("distributions", figures.distributions_figure(study)),
        "<h2>(c) Per-epoch curves of all trials</h2>",
        figs("curves", figures.curves_figure(study)),
    ]
    if record is not None and record.strategy == "pbt" and lineage(study):  # population-based training
        parts += [
            "<h2>Population-based training: lineage</h2>",
            f'<p class="muted">{escape(budget_line(study) or "")}; each member\'s objective at the end of each '
            "segment; a dashed line joins a member to the one whose checkpoint it copied (exploit) before its "
            "hyperparameters were perturbed (explore). Each trial's <code>pbt_schedule</code> attribute is its "
            "member's hyperparameters, epoch range by epoch range.</p>",
            figs("lineage", lineage_figure(study)),
        ]
    parts.append("<h2>Optuna's visualisations</h2>")
    for plot in figures.optuna_plots(study):
        parts.append(f"<h3>{escape(plot.title)}</h3>")
        if plot.figure is None:
            parts.append(f'<p class="note">not drawn: {escape(plot.note or "no data")}</p>')
        else:
            if plot.note:
                parts.append(f'<p class="note">Optuna: {escape(plot.note)}</p>')
            parts.append(figs(plot.key, plot.figure))
    if result is not None and entry.data is not None:
        threshold = float(result.evaluation.test.get("threshold", 0.5))
        confusion = figures.confusion_figure(
            entry.data.y_test.numpy(),
            np.asarray(result.evaluation.test_scores),
            threshold,
            f"{study.study_name}: test confusion matrix (trial #{result.best_trial})",
        )
        parts += ["<h2>Best model on the test split</h2>", figs("confusion", confusion)]
        parts += ["<h3>Misclassified test cutouts</h3>", _gallery(entry)]
    return page(f"Study {study.study_name}", nav, "\n".join(parts))


def _index_page(
    entries: Sequence[_StudyEntry],
    skipped: Sequence[tuple[str, str]],
    nav: str,
    overlays: Sequence[str],
    store: str,
    images: Sequence[str],
) -> str:
    results = [r for e in entries for r in e.rows]
    parts = [f'<p class="muted">study store {escape(store)}; generated {time.strftime("%Y-%m-%d %H:%M:%S %Z")}</p>']
    parts.append("<h2>Final table: best configuration of each study</h2>")
    if results:
        rows = table_rows(results)
        parts.append(table_html(["", *(r.label for r in results)], rows))
        parts.append('<ul class="muted">' + "".join(f"<li>{escape(n)}</li>" for n in notes(results)) + "</ul>")
    else:
        parts.append('<p class="note">no study has a completed trial, so there is no best model to evaluate.</p>')
    left_out = [e.note for e in entries if not e.rows] + [why for _, why in skipped]
    parts += [f'<p class="note">{escape(n)}</p>' for n in left_out]
    parts += ["<h2>Running best across studies</h2>", *overlays, "<h2>Studies</h2><ul>"]
    for e in entries:
        best = f"best {e.result.best_value:.4f} (trial #{e.result.best_trial})" if e.result else e.note
        if e.front:
            best = f"Pareto front of {len(e.front)}: " + ", ".join(f"#{r.best_trial}" for r in e.front)
        record = study_record(e.study)
        parts.append(
            f'<li><a href="study-{escape(e.slug)}.html">{escape(e.study.study_name)}</a> '
            f"({escape(record.strategy if record is not None else '?')}): {escape(best)}</li>"
        )
    parts.append("</ul>")
    if images:
        parts.append("<h2>Static images</h2><ul>")
        parts += [f'<li><a href="{escape(p)}">{escape(p)}</a></li>' for p in images]
        parts.append("</ul>")
    return page("hpo-astro report", nav, "\n".join(parts))


def build_report(
    url: str,
    out: Path,
    names: Sequence[str] | None = None,
    data: Path | None = None,
    png: bool = False,
    events: Events | None = None,
) -> Report:
    """Write index.html and study-<name>.html for the selected studies (all by default) into `out`.

    A study without finished trials is an error when named and skipped otherwise; a study whose trials were all
    pruned gets its figures without the best-model sections. The best models' test metrics come from `compare`
    (cached in the store, evaluated now when not)."""
    if png:
        check_png_export()
    storage = open_existing_store(url)  # read-only; compare's cache is written through a separate handle
    try:
        return _build_report(storage, url, out, names, data, png, events)
    finally:
        close_store(storage)


def _build_report(
    storage: optuna.storages.BaseStorage,
    url: str,
    out: Path,
    names: Sequence[str] | None,
    data: Path | None,
    png: bool,
    events: Events | None,
) -> Report:
    studies = load_studies(storage, url, names)
    entries: list[_StudyEntry] = []
    skipped: list[tuple[str, str]] = []
    taken: set[str] = set()
    memo: dict = {}
    for study in studies:
        if not figures.finished_trials(study):
            held = ", ".join(f"{n} {s}" for s, n in state_counts(study).items()) or "no trials"
            why = f"study {study.study_name!r} has no finished trial ({held}): nothing to draw"
            if names:
                raise UserError(why)
            skipped.append((study.study_name, why))
            continue
        front: list[StudyResult] = []
        result, note, splits = None, "", None
        try:
            if is_multi_objective(study):  # no best model: its front's, without test cutouts
                front = compare_front(study, data, events, memo, url)
            else:
                result = compare_study(study, data, events, memo, url)
                splits = study_data(study, data, memo)
        except NoCompletedTrial as exc:
            note = str(exc)
        entries.append(_StudyEntry(study, _slug(study.study_name, taken), result, note, splits, front))
    if not entries:
        raise UserError("nothing to report: " + "; ".join(why for _, why in skipped))

    out = Path(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the report directory {out}: {exc.strerror or exc}") from None
    nav = '<a href="index.html">index</a>' + "".join(
        f'<a href="study-{escape(e.slug)}.html">{escape(e.study.study_name)}</a>' for e in entries
    )
    pages: list[Path] = []
    saved: list[tuple[str, go.Figure]] = []
    for entry in entries:
        figs = _Figures(entry.slug, png)
        pages.append(write_output(out / f"study-{entry.slug}.html", _study_page(entry, nav, figs)))
        saved += figs.saved
    figs = _Figures("index", png)
    progress = [figures.search_progress(e.study) for e in entries]
    overlays = [
        figs("overlay-trials", figures.overlay_figure(progress, "trial")),
        figs("overlay-time", figures.overlay_figure(progress, "time")),
    ]
    saved += figs.saved
    listed = [f"png/{name}.png" for name, _ in saved]
    index_html = _index_page(entries, skipped, nav, overlays, display_url(url), listed)
    images = [_write_png(fig, out / "png" / f"{name}.png") for name, fig in saved] if png else []
    index = write_output(out / "index.html", index_html)
    return Report(out, [index, *pages], images, skipped)
