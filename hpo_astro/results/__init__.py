"""What finished studies give: their status (`status`), their best models rebuilt and evaluated with a cache in the
store (`evaluate`), the best model exported and used to score cutouts (`export`), optuna-dashboard (`dashboard`) and
the HTML page kit the reports share (`page`)."""

from typing import Literal

SplitName = Literal["all", "train", "val", "test"]  # what `predict` scores: here, light, for the command line
