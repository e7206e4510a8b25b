"""Options of how each worker process trains and reports (artifacts, heartbeats, checkpoints, devices, CUDA graphs,
stacked runs), shared by `run`, `worker`, `confirm` and `tabulate`; the other shared options are in
`hpo_astro.cli.options`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from hpo_astro.study.defaults import StackMode

# How each worker process trains and reports: artifacts, heartbeats, checkpoints, devices, CUDA graphs
ArtifactsOpt = Annotated[
    Path | None,
    typer.Option(
        "--artifacts",
        metavar="DIR",
        help="Checkpoint/weights directory (default: beside the SQLite or journal file).",
    ),
]
ServedArtifactsOpt = Annotated[
    Path | None,
    typer.Option(
        "--artifacts",
        metavar="DIR",
        help="Serve the trials' artifacts from this folder (default: the one beside the SQLite or journal file).",
    ),
]
HeartbeatOpt = Annotated[
    int | None,
    typer.Option(
        "--heartbeat", metavar="SECONDS", min=0, help="Seconds between trial heartbeats; 0 disables (default: 10)."
    ),
]
GraceOpt = Annotated[
    int | None,
    typer.Option(
        "--grace-period",
        metavar="SECONDS",
        min=1,
        help="Seconds without heartbeat before a trial is dead (default: 30).",
    ),
]
CheckpointOpt = Annotated[
    int | None,
    typer.Option(
        "--checkpoint-interval",
        metavar="SECONDS",
        min=0,
        help="Seconds of training between a trial's checkpoints, after the first epoch's; 0: every epoch "
        "(default: 10).",
    ),
]
DevicesOpt = Annotated[
    str | None,
    typer.Option(
        "--devices",
        metavar="DEVICES",
        help="Comma-separated devices (cpu, cuda, cuda:N); worker i trains on device i mod n "
        "(default: every visible GPU, else the CPU).",
    ),
]
WorkerDeviceOpt = Annotated[
    str | None,
    typer.Option(
        "--devices",
        metavar="DEVICE",
        help="The device this worker trains on: cpu, cuda, cuda:N (default: a GPU if visible, else the CPU).",
    ),
]
CaptureOpt = Annotated[
    bool | None,
    typer.Option(
        "--capture/--no-capture",
        help="On CUDA, record each trial's train step once as a CUDA graph and replay it; --no-capture runs every "
        "step eagerly. CPU is always eager (default: --capture).",
    ),
]
StackRunsOpt = Annotated[
    StackMode | None,
    typer.Option(
        "--stack-runs",
        help="Train a trial's --eval-seeds runs as one stacked model: auto (on CUDA; on CPU only for batches of "
        "4 or less, where it was measured faster), on, off. The runs give what they give alone, to rounding "
        "(default: auto).",
    ),
]


def worker_settings(
    artifacts: Path | None,
    heartbeat: int | None,
    grace_period: int | None,
    checkpoint_interval: int | None,
    devices: str | None,
    capture: bool | None,
    stack_runs: str | None = None,
) -> dict[str, Any]:
    """How each worker process trains and reports, as `run` and `worker` take them: the keywords of
    `StudyConfig.merged` and `config_from_study` (None: not set)."""
    return {
        "artifacts": artifacts,
        "heartbeat_interval": heartbeat,
        "grace_period": grace_period,
        "checkpoint_interval": checkpoint_interval,
        "devices": None if devices is None else tuple(d.strip() for d in devices.split(",") if d.strip()),
        "capture": capture,
        "stack_runs": stack_runs,
    }
