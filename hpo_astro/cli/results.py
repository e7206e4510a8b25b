"""The commands over finished studies: `compare` (best trials on train/val/test), `report` (HTML), `export` (a best
model), `predict` (score cutouts with one) and `dashboard` (optuna-dashboard on the store)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hpo_astro.cli.application import app
from hpo_astro.cli.options import (
    LOCALHOST,
    DashboardHostOpt,
    DashboardPortOpt,
    ExportedStudyOpt,
    ScoredDataOpt,
    StorageOpt,
    StudiesOpt,
    StudyDataOpt,
)
from hpo_astro.cli.output import console, note
from hpo_astro.cli.worker_options import (
    ServedArtifactsOpt,
)
from hpo_astro.errors import UserError
from hpo_astro.report import FormatName
from hpo_astro.results import SplitName
from hpo_astro.study.defaults import DEFAULT_STORAGE


@app.command("compare")
def compare_command(
    storage: StorageOpt = DEFAULT_STORAGE,
    study: StudiesOpt = None,
    fmt: Annotated[FormatName, typer.Option("--format", help="How to print it.")] = "table",
    out: Annotated[
        Path | None, typer.Option("--out", metavar="FILE", help="Write to this file instead of stdout.")
    ] = None,
    data: StudyDataOpt = None,
) -> None:
    """Evaluate each study's best trial (each Pareto-front trial of a multi-objective study) on train/val/test: the
    paper's final table, plus ROC AUC, precision, recall, F1, FPR at 5% FNR, MDR at 1% FPR, wall time and trials
    used. Cached in the store: a second run is instant."""
    from hpo_astro.io import check_output, write_output
    from hpo_astro.report.compare import check_format, compare_studies, render, rich_table

    check_format(fmt)
    if out is not None:
        check_output(out)
    comparison = compare_studies(storage, study, data, events=note)
    for _, why in comparison.skipped:
        note(f"skipped: {why}")
    if out is not None:
        write_output(out, render(comparison, fmt))
        console.print(f"wrote {out}")
    elif fmt == "table":
        console.print(rich_table(comparison))
    else:
        typer.echo(render(comparison, fmt), nl=False)


@app.command("report")
def report_command(
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Directory for index.html and one page per study.")],
    storage: StorageOpt = DEFAULT_STORAGE,
    study: StudiesOpt = None,
    png: Annotated[bool, typer.Option("--png", help="Also write every figure as a PNG (kaleido + Chrome).")] = False,
    data: StudyDataOpt = None,
) -> None:
    """Write a self-contained HTML report (interactive Plotly, works offline): the paper's figures per study,
    cross-study overlays, Optuna's plots, each best model's confusion matrix and misclassified cutouts (a
    multi-objective study: its Pareto front, plotted and tabulated)."""
    from hpo_astro.report.html import build_report

    report = build_report(storage, out, study, data=data, png=png, events=note)
    for _, why in report.skipped:
        note(f"skipped: {why}")
    images = f" and {len(report.images)} PNG images" if report.images else ""
    console.print(f"wrote {len(report.pages)} pages{images} to {out}/; open {out / 'index.html'}")


@app.command("export")
def export_command(
    study: ExportedStudyOpt,
    out: Annotated[Path, typer.Option("--out", metavar="DIR", help="Directory for model.pt and model.json.")],
    storage: StorageOpt = DEFAULT_STORAGE,
    data: StudyDataOpt = None,
    pick: Annotated[
        str | None,
        typer.Option(
            "--pick",
            metavar="RULE",
            help=(
                "Which trial: best:NAME (the best of one objective) and/or bounds such as latency<50us, params<=1M, "
                "joined by commas. Default: the best trial (a multi-objective study: best of its first objective)."
            ),
        ),
    ] = None,
) -> None:
    """Export a study's best model: weights, hyperparameters and preprocessing (channels, scaling, threshold)."""
    from hpo_astro.results.export import export_best

    exported = export_best(storage, study, out, data, events=note, pick=pick)
    t = exported.evaluation.test
    chosen = exported.manifest["study"]
    console.print(
        f"exported trial #{chosen['trial']} of study {study!r} to {out}/: test accuracy "
        f"{t['accuracy']:.4f}, ROC AUC {t['roc_auc']:.4f}, FPR@5%FNR {t['fpr_at_5fnr']:.4f}",
        highlight=False,
    )
    console.print(f"chosen by {chosen['chosen_by']}", highlight=False, markup=False)
    if exported.matches_cache is False:
        note("warning: these metrics differ from the ones `compare` cached for this trial (another device?)")


@app.command("predict")
def predict_command(
    model: Annotated[
        Path, typer.Option("--model", metavar="DIR", help="A directory written by `hpo-astro export` (or train).")
    ],
    data: ScoredDataOpt,
    out: Annotated[Path, typer.Option("--out", metavar="FILE", help="CSV of index,label,score,prediction.")] = Path(
        "scores.csv"
    ),
    split: Annotated[
        SplitName, typer.Option("--split", help="The whole file, or that split of a labelled file, as in training.")
    ] = "all",
) -> None:
    """Score cutouts with an exported model, without the study store; print metrics when labels are present."""
    from hpo_astro.results.export import predict, write_scores

    prediction = predict(model, data, split)
    write_scores(prediction, out)
    n, n_real = len(prediction.scores), int(prediction.predictions.sum())
    console.print(
        f"scored {n} cutouts of {data}{'' if split == 'all' else f' ({split} split)'} with {model} (channels "
        f"{','.join(prediction.channels)}, threshold {prediction.threshold:g}): {n_real} real, {n - n_real} bogus; "
        f"wrote {out}",
        highlight=False,
    )
    if prediction.metrics is not None:
        m = prediction.metrics
        console.print(
            f"metrics: loss {m.loss:.4f}  accuracy {m.accuracy:.4f}  ROC AUC {m.roc_auc:.4f}  precision "
            f"{m.precision:.4f}  recall {m.recall:.4f}  F1 {m.f1:.4f}  FPR@5%FNR {m.fpr_at_5fnr:.4f}",
            highlight=False,
        )


@app.command("dashboard")
def dashboard_command(
    storage: StorageOpt = DEFAULT_STORAGE,
    host: DashboardHostOpt = LOCALHOST,
    port: DashboardPortOpt = 8080,
    artifacts_dir: ServedArtifactsOpt = None,
) -> None:
    """Browse the study store with optuna-dashboard (every trial, its curves and attributes); Ctrl-C stops it."""
    import shlex

    from hpo_astro.results.dashboard import ReadOnlyArtifacts, run_server, served_folder, unserved_folders
    from hpo_astro.store.storage import read_store

    # One folder, never one the store names (a store from someone else could name any); served as downloads only.
    folder = served_folder(storage, artifacts_dir)
    with read_store(storage) as store:  # read-only: the dashboard's own writes (notes, ...) are refused
        for other, studies in unserved_folders(store, folder).items():
            names, serve = ", ".join(repr(name) for name in studies), shlex.quote(str(other))
            note(f"note: {other} (the artifact folder of {names}) is not served; add --artifacts {serve} to serve it")
        artifacts = ReadOnlyArtifacts([folder]) if folder is not None else None
        shown = f"[{host}]" if ":" in host else host
        console.print(f"optuna-dashboard on {storage}: http://{shown}:{port}/ (Ctrl-C to stop)", highlight=False)
        if host not in (LOCALHOST, "localhost", "::1"):
            note(f"warning: bound to {host}, reachable from other machines; optuna-dashboard has no authentication")
        try:
            run_server(store, host=host, port=port, artifact_store=artifacts)
        except KeyboardInterrupt:
            pass
        except OSError as exc:
            raise UserError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from None
