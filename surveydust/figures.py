"""Figures a person looks at: label distributions and example stamps of a training store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from surveydust.physics import LAW_R_V
from surveydust.quantities import LABELS

#: the label histograms of :func:`plot_training_store` (axis labels from :data:`surveydust.quantities.LABELS`)
LABEL_PANELS = ("A_V", "EBV", "R_V", "log_ssfr", "redshift", "log_mstar")
RGB_BANDS = ("F444W", "F356W", "F277W")


def subplots(nrows: int = 1, ncols: int = 1, **kwargs: Any) -> tuple[Any, Any]:
    """A figure and its axes like ``pyplot.subplots``, without pyplot: no global figure
    state and no backend chosen (only ``savefig`` renders, to a file)."""
    from matplotlib.figure import Figure

    figure_kw = {k: kwargs.pop(k) for k in ("figsize", "dpi") if k in kwargs}
    fig = Figure(**figure_kw)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def plot_training_store(ds: xr.Dataset, out_dir: Path | str) -> list[Path]:
    """Write ``labels.png`` and ``stamps.png`` for a training store; return their paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    labels = ds[[*LABEL_PANELS, "dtm"]].compute()
    paths = [_plot_labels(labels, out_dir / "labels.png")]
    paths.append(_plot_stamps(ds, out_dir / "stamps.png"))
    return paths


def _plot_labels(ds: xr.Dataset, path: Path) -> Path:
    fig, axes = subplots(2, 4, figsize=(16, 7))
    for ax, name in zip(axes.flat, LABEL_PANELS):
        values = ds[name].values
        values = values[np.isfinite(values)]
        if name == "R_V":
            values = values[values < np.percentile(values, 99)] if values.size else values
        ax.hist(values, bins=40, color="0.3")
        ax.set_xlabel(LABELS[name])
    ax = axes.flat[6]
    sc = ax.scatter(ds["EBV"], ds["A_V"], c=ds["dtm"], s=3, cmap="viridis")
    ebv = np.linspace(0, float(ds["EBV"].max()) or 1.0, 10)
    for law, rv in LAW_R_V.items():
        ax.plot(ebv, rv * ebv, lw=1, label=f"{law} R_V={rv}")
    rv_med = float(np.nanmedian(ds["R_V"]))
    ax.plot(ebv, rv_med * ebv, "r--", lw=1, label=f"median R_V={rv_med:.2f}")
    ax.set_xlabel(LABELS["EBV"])
    ax.set_ylabel(LABELS["A_V"])
    ax.legend(fontsize=7)
    fig.colorbar(sc, ax=ax, label="DTM")
    ax = axes.flat[7]
    dtms = np.unique(ds["dtm"].values)
    med = [np.nanmedian(ds["R_V"].values[ds["dtm"].values == d]) if d > 0 else np.nan for d in dtms]
    ax.plot(dtms, med, "o-")
    ax.axhline(LAW_R_V["calzetti"], color="0.5", lw=1, ls=":")
    ax.set_xlabel("dust-to-metal ratio")
    ax.set_ylabel("median R_V")
    fig.suptitle(f"{ds.sizes['sample']} images")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path


def _stretch(rgb: np.ndarray, scale: float) -> np.ndarray:
    """asinh stretch with a fixed ``scale``, so dimming by dust shows along a row."""
    return np.clip(np.arcsinh(np.clip(rgb, 0, None) / (0.05 * scale)) / np.arcsinh(20.0), 0, 1)


def _brightest_galaxies(ds: xr.Dataset, n: int) -> np.ndarray:
    """Galaxy ids of the ``n`` highest-SNR dust-free images (so structure shows)."""
    first = ds[["snr", "galaxy_id", "dtm"]].compute()
    snr = first["snr"].max("band").values
    snr = np.where(first["dtm"].values == first["dtm"].values.min(), snr, -np.inf)
    gids = first["galaxy_id"].values
    best = {}
    for i in np.argsort(-snr):
        best.setdefault(gids[i], i)
        if len(best) == n:
            break
    return np.array(sorted(best))


def _plot_stamps(ds: xr.Dataset, path: Path, n_galaxies: int = 5, n_dtm: int = 6) -> Path:
    """Rows: galaxies (view 0); columns: DTM values; false-colour F444W/F356W/F277W."""
    bands = [b for b in RGB_BANDS if b in ds["band"].values] or [str(ds["band"].values[0])]
    dtms = np.unique(ds["dtm"].values)
    dtms = dtms[np.linspace(0, len(dtms) - 1, min(n_dtm, len(dtms))).astype(int)]
    galaxies = _brightest_galaxies(ds, n_galaxies)
    fig, axes = subplots(len(galaxies), len(dtms), figsize=(2 * len(dtms), 2 * len(galaxies)),
                             squeeze=False)
    for row, gid in zip(axes, galaxies):
        sel = (ds["galaxy_id"] == gid) & (ds["view"] == ds["view"].min())
        sub = ds.isel(sample=np.flatnonzero(sel.values)).sel(band=bands)
        sub = sub[["image", "A_V", "dtm"]].compute()
        scale = float(np.percentile(sub["image"].values, 99.5)) or 1.0
        for ax, dtm in zip(row, dtms):
            i = int(np.argmin(np.abs(sub["dtm"].values - dtm)))
            img = np.moveaxis(sub["image"].values[i], 0, -1)
            ax.imshow(_stretch(img if img.shape[-1] == 3 else img[..., 0], scale), origin="lower",
                      cmap=None if img.shape[-1] == 3 else "gray")
            ax.set_title(f"DTM {dtm:.1f}  A_V {float(sub['A_V'].values[i]):.2f}", fontsize=8)
            ax.set_xticks([])
            ax.set_yticks([])
        row[0].set_ylabel(f"galaxy {gid}", fontsize=8)
    fig.suptitle("R,G,B = " + ", ".join(bands) if len(bands) == 3 else bands[0], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    return path
