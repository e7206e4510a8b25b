"""Results of studies: each study's best model rebuilt and evaluated, with its cache in the store (`evaluate`), the
comparison table (`compare`), the paper's figures as Plotly (`figures`) and the self-contained HTML report (`html`).
The best model's export and scoring live in `hpo_astro.results.export`."""

from typing import Literal

FormatName = Literal["table", "markdown", "csv", "json"]  # `compare --format`: here, light, for the command line
