"""What is in an ExRomana file: per-class counts, per-plane statistics, non-finite pixels, a PNG gallery."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw
from torchvision.utils import make_grid

from hpo_astro.data.exromana import PLANE_NAMES, ExRomanaSet
from hpo_astro.data.prepare import zscale
from hpo_astro.io import atomic_write


def plane_statistics(data: ExRomanaSet, plane_names: tuple[str, ...] = PLANE_NAMES) -> list[dict]:
    """Per plane: finite-pixel mean, std, min, max, median and the count of non-finite pixels."""
    rows = []
    for i, name in enumerate(plane_names):
        plane = data.samples[..., i]
        finite = np.isfinite(plane)
        values = plane[finite]
        rows.append(
            {
                "plane": name,
                "mean": float(values.mean()) if values.size else float("nan"),
                "std": float(values.std()) if values.size else float("nan"),
                "min": float(values.min()) if values.size else float("nan"),
                "median": float(np.median(values)) if values.size else float("nan"),
                "max": float(values.max()) if values.size else float("nan"),
                "nonfinite_pixels": int(plane.size - finite.sum()),
                "cutouts_with_nonfinite": int((~finite).any(axis=(1, 2)).sum()),
            }
        )
    return rows


def write_gallery(
    data: ExRomanaSet,
    path: str | Path,
    per_class: int = 6,
    seed: int = 0,
    plane_names: tuple[str, ...] = PLANE_NAMES,
    scale: int = 2,
) -> Path:
    """A PNG grid: one row per cutout (first `per_class` TP rows, then FP rows), one column per plane,
    each plane ZScaled for display; a label strip names the rows and columns."""
    rng = np.random.default_rng(seed)
    rows: list[tuple[str, int]] = []
    for label, name in ((1, "TP"), (0, "FP")):
        idx = np.flatnonzero(data.labels == label)
        chosen = np.sort(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
        rows += [(name, int(i)) for i in chosen]
    cutouts = np.stack([np.moveaxis(data.samples[i], -1, 0) for _, i in rows])  # (R, 4, 64, 64)
    scaled, _ = zscale(cutouts)
    tiles = torch.from_numpy(scaled.reshape(-1, 1, *scaled.shape[-2:]))
    pad = 2
    grid = make_grid(tiles, nrow=len(plane_names), padding=pad, pad_value=1.0)
    image = Image.fromarray((grid[0].numpy() * 255).astype(np.uint8), mode="L")
    image = image.resize((image.width * scale, image.height * scale), Image.Resampling.NEAREST)

    left, top, cell = 70, 18, (64 + pad) * scale
    canvas = Image.new("L", (image.width + left, image.height + top), 255)
    canvas.paste(image, (left, top))
    draw = ImageDraw.Draw(canvas)
    for c, name in enumerate(plane_names):
        draw.text((left + c * cell + cell // 3, 3), name, fill=0)
    for r, (name, index) in enumerate(rows):
        draw.text((4, top + r * cell + cell // 2 - 6), f"{name} #{index}", fill=0)
    path = Path(path)
    with atomic_write(path) as fh:
        canvas.save(fh, format="PNG")
    return path
