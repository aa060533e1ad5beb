"""A small JWST-like demo field with known truth: mock galaxies in i2d-style FITS mosaics.

``simulate_field`` draws galaxies from the built-in simulator's population,
renders each one (one random view, one dust-to-metal ratio drawn from the
configuration's ``dtm_values``) with the simulator's own imaging code, adds
the noiseless PSF-convolved stamps into a common rotated TAN pixel grid, adds
Gaussian noise at the configured survey depth (with a smooth spatial variation,
like the exposure map of a real mosaic), blanks a NaN border (and a corner
triangle, like the rotated edge of a real mosaic), and writes

- ``<field>_<band>_i2d.fits`` per band, laid out like the JWST pipeline's i2d
  products: an empty primary HDU and image extensions ``SCI``, ``ERR`` (MJy/sr)
  and ``WHT`` (= 1 / ERR^2; 0 where there is no data), float32, with the same
  celestial WCS in every band;
- ``<field>_truth.ecsv``, one row per injected galaxy with its position, labels
  and noiseless total flux per band (nJy).

With ``foreground`` switched on, the field also gets the sky's mix around its z > 6
galaxies (:mod:`surveydust.simulate.foreground`: ordinary galaxies at z ~ 0.2-6, dusty
z ~ 2-4 galaxies, Balmer-break galaxies at z ~ 1-2.5 and brown dwarfs, with number counts
per arcmin^2 from the ``foreground:`` section of ``configs/simulation.yaml``); the truth
table then holds every source, with a ``kind`` column. Switched off (the default) the
files are byte for byte what they were before the foreground existed. Bands the
simulator cannot use as network inputs over its redshift range (F090W at z up to 8: it
lies blueward of Lyman-alpha there) are accepted as photometry-only bands.

``simulate_field`` is two steps: :func:`render_field` (placement, each galaxy rendered by
:func:`surveydust.simulate.render.render_galaxy`, the foreground, noise; arrays in memory)
and :func:`write_field` (the FITS files and the truth table, each written atomically).

The field's galaxies come from their own random streams
(``default_rng([seed, FIELD_STREAM, galaxy])``), so they are never the same
galaxies as those of a training store simulated with the same seed.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from scipy.ndimage import distance_transform_edt

from surveydust.config import ForegroundConfig, SimulationConfig, load_foreground_config, load_simulation_config
from surveydust.errors import InputError
from surveydust.instrument import LYMAN_ALPHA_AA, bandpass, check_bands
from surveydust.physics import kpc_per_arcsec, mjy_per_sr_to_njy, pixel_area_sr
from surveydust.provenance import VERSION
from surveydust.quantities import r_v
from surveydust.simulate.foreground import SourceDraw, draw_foreground, render_source, stamp_size_for
from surveydust.simulate.imaging import PSFSet
from surveydust.simulate.morphology import draw_view
from surveydust.simulate.render import draw_with_photometry, noise_sigma, psf_kernels, render_galaxy
from surveydust.simulate.sed_library import load_sed_library
from surveydust.stores.base import write_atomically

FIELD_NAME = "demo"
#: separates the field's random streams from those of training stores with the same seed
FIELD_STREAM = 0xF1E1D
#: stamp each galaxy is rendered on unless ``stamp_size`` is overridden [pixels]
FIELD_STAMP_SIZE = 64
#: smallest distance of a galaxy centre from the nearest pixel without data [pixels]
EDGE_MARGIN_PIX = 20.0
#: smallest separation of two galaxy centres [pixels]
MIN_SEPARATION_PIX = 24.0
#: deliberately placed galaxies sit within this distance of a tile boundary [pixels]
STRADDLE_HALF_WIDTH_PIX = 2.0
MAX_PLACEMENT_TRIES = 2000
#: separates the foreground's random streams (4-element keys) from the high-z galaxies' (3-element)
FOREGROUND_STREAM = 0xF06E


@dataclass(frozen=True)
class FieldFiles:
    """Files written by :func:`simulate_field`."""

    bands: dict[str, Path]   # band -> <field>_<band>_i2d.fits
    truth: Path              # <field>_truth.ecsv


def field_wcs(shape: tuple[int, int], centre: tuple[float, float], rotation_deg: float,
              pixel_scale_arcsec: float) -> WCS:
    """TAN WCS of an ``(ny, nx)`` grid centred on ``centre`` (RA, Dec deg), rotated by
    ``rotation_deg`` (the CROTA2 angle, written as a PC matrix as in real mosaics)."""
    ny, nx = shape
    cdelt = pixel_scale_arcsec / 3600.0
    rho = np.deg2rad(rotation_deg)
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.cunit = ["deg", "deg"]
    w.wcs.crval = [float(centre[0]), float(centre[1])]
    w.wcs.crpix = [(nx + 1) / 2.0, (ny + 1) / 2.0]
    w.wcs.cdelt = [-cdelt, cdelt]
    w.wcs.pc = [[np.cos(rho), np.sin(rho)], [-np.sin(rho), np.cos(rho)]]
    w.wcs.radesys = "ICRS"
    w.wcs.set()
    return w


def data_mask(shape: tuple[int, int], border_pix: int, corner_cut: float) -> np.ndarray:
    """True where the mosaic has data: inside ``border_pix`` of the edges and outside a
    triangle cut off the high-x, high-y corner (legs ``corner_cut`` of each side)."""
    ny, nx = shape
    valid = np.zeros(shape, bool)
    b = int(border_pix)
    valid[b:ny - b, b:nx - b] = True
    if corner_cut > 0:
        y, x = np.ogrid[:ny, :nx]
        ax, ay = corner_cut * (nx - 2 * b), corner_cut * (ny - 2 * b)
        valid &= (nx - b - x) / ax + (ny - b - y) / ay >= 1.0
    return valid


def _noise_pattern(shape: tuple[int, int], amplitude: float, rng: np.random.Generator) -> np.ndarray:
    """A smooth relative depth variation 1 +- ``amplitude`` (low-order sinusoids)."""
    ny, nx = shape
    y = np.linspace(0.0, 1.0, ny)[:, None]
    x = np.linspace(0.0, 1.0, nx)[None, :]
    kx, ky = rng.uniform(0.6, 1.4, size=2)
    px, py, pxy = rng.uniform(0, 2 * np.pi, size=3)
    s = (np.sin(2 * np.pi * kx * x + px) + np.sin(2 * np.pi * ky * y + py)
         + 0.5 * np.sin(2 * np.pi * (x + y) + pxy))
    s /= np.abs(s).max()
    return (1.0 + amplitude * s).astype(np.float32)


def _place(n: int, allowed: np.ndarray, tile_pix: int, n_straddle: int,
           rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Galaxy centres (x, y) [0-based pixels] on ``allowed`` pixels, at least
    MIN_SEPARATION_PIX apart; the first ``n_straddle`` within STRADDLE_HALF_WIDTH_PIX of a
    tile boundary (between pixels k * tile_pix - 1 and k * tile_pix). Also returns
    which ones were placed on a boundary."""
    ny, nx = allowed.shape
    lines = [(axis, k * tile_pix - 0.5) for axis, size in ((0, nx), (1, ny))
             for k in range(1, -(-size // tile_pix)) if k * tile_pix < size]
    n_straddle = min(n_straddle, n) if lines else 0
    xy: list[tuple[float, float]] = []
    for i in range(n):
        for _ in range(MAX_PLACEMENT_TRIES):
            x, y = rng.uniform(-0.5, nx - 0.5), rng.uniform(-0.5, ny - 0.5)
            if i < n_straddle:
                axis, at = lines[int(rng.integers(len(lines)))]
                offset = rng.uniform(-STRADDLE_HALF_WIDTH_PIX, STRADDLE_HALF_WIDTH_PIX)
                x, y = (at + offset, y) if axis == 0 else (x, at + offset)
            if not allowed[round(y), round(x)]:  # x, y: Python floats
                continue
            if xy and np.min(np.hypot(*(np.asarray(xy) - (x, y)).T)) < MIN_SEPARATION_PIX:
                continue
            xy.append((x, y))
            break
        else:
            raise InputError(f"cannot place {n} galaxies at least {MIN_SEPARATION_PIX:g} px apart "
                             f"and {EDGE_MARGIN_PIX:g} px from the data edge of a {nx}x{ny} field; "
                             "ask for fewer galaxies or a larger field")
    placed = np.asarray(xy, float).reshape(-1, 2)
    return placed, np.arange(n) < n_straddle


def _place_more(n: int, allowed: np.ndarray, taken: np.ndarray,
                rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Centres (x, y) of ``n`` more sources on ``allowed`` pixels, MIN_SEPARATION_PIX from each
    other and from ``taken`` (k, 2); a source that finds no room is left out (``placed`` False)."""
    ny, nx = allowed.shape
    xy = [tuple(p) for p in np.asarray(taken, float).reshape(-1, 2)]
    first = len(xy)
    placed = np.zeros(n, bool)
    for i in range(n):
        for _ in range(MAX_PLACEMENT_TRIES):
            x, y = rng.uniform(-0.5, nx - 0.5), rng.uniform(-0.5, ny - 0.5)
            if not allowed[round(y), round(x)]:  # x, y: Python floats
                continue
            if xy and np.min(np.hypot(*(np.asarray(xy) - (x, y)).T)) < MIN_SEPARATION_PIX:
                continue
            xy.append((x, y))
            placed[i] = True
            break
    return np.asarray(xy[first:], float).reshape(-1, 2), placed


def _foreground_config(foreground: bool | ForegroundConfig | dict[str, Any] | None,
                       config: SimulationConfig | Path | str | None) -> ForegroundConfig:
    """The field's foreground config: None follows ``enabled`` of the config file (``config`` when
    it is a YAML file, else the shipped one); True / False switch it on / off; a mapping
    overrides the shipped settings (and switches it on unless it says ``enabled``)."""
    source = config if isinstance(config, (str, Path)) else None
    if isinstance(foreground, ForegroundConfig):
        return foreground
    if isinstance(foreground, dict):
        return load_foreground_config(source, **{"enabled": True, **foreground})
    if foreground is None:
        return load_foreground_config(source)
    return load_foreground_config(source, enabled=bool(foreground))


def _field_configs(config: SimulationConfig | Path | str | None, bands: list[str] | tuple[str, ...] | None,
                   **settings: Any) -> tuple[SimulationConfig, SimulationConfig]:
    """The validated simulation config and the one the field is rendered with: the same, unless
    ``bands`` holds bands that lie blueward of Lyman-alpha at the top of the redshift range
    (F090W at z = 8), which the simulator refuses as inputs; those are rendered too
    (photometry only) and left out of the validated config."""
    if bands is None:
        cfg = load_simulation_config(config, bands=None, **settings)
        return cfg, cfg
    names = check_bands(bands)
    try:
        cfg = load_simulation_config(config, bands=list(names), **settings)
        return cfg, cfg
    except ValueError:
        z_range = settings.get("redshift_range") or load_simulation_config(config).redshift_range
        z_max = float(z_range[1])

    def photometry_only(band: str) -> bool:
        wave, thr = bandpass(band)
        return bool(wave[thr > 0.01 * thr.max()].max() / (1 + z_max) < LYMAN_ALPHA_AA)

    modelled = [b for b in names if not photometry_only(b)]
    cfg = load_simulation_config(config, bands=modelled or list(names), **settings)
    if len(modelled) == len(names):
        return cfg, cfg
    render = cfg.model_copy(update={"bands": names})
    if isinstance(render.depth, dict):
        missing = [b for b in names if b not in render.depth]
        if missing:
            raise InputError(f"depth gives no 5-sigma magnitude for band(s) {missing}")
    return cfg, render


def _add_foreground(image: np.ndarray, fg: ForegroundConfig, cfg: SimulationConfig, allowed: np.ndarray,
                    area_arcmin2: float, taken: np.ndarray, kernels: np.ndarray, wcs: WCS,
                    first_id: int) -> tuple[list[dict[str, Any]], list[str]]:
    """Draw, place, render (PSF-convolved, noiseless) and add the foreground to ``image``;
    return its truth rows (the high-z rows' columns) and kinds."""
    frng = np.random.default_rng([cfg.seed, FIELD_STREAM, FOREGROUND_STREAM, 1])
    sources = draw_foreground(frng, fg, cfg.bands, area_arcmin2)
    prng = np.random.default_rng([cfg.seed, FIELD_STREAM, FOREGROUND_STREAM, 2])
    xy, placed = _place_more(len(sources), allowed, taken, prng)
    psf_sets: dict[int, PSFSet] = {}
    rows: list[dict[str, Any]] = []
    kinds: list[str] = []
    for src, (x, y) in zip([s for s, ok in zip(sources, placed) if ok], xy):
        n = stamp_size_for(src, cfg.pixel_scale_arcsec)
        psfs = psf_sets.setdefault(n, PSFSet(kernels, n))
        x0, y0 = (int(np.floor(c - (n - 1) / 2.0 + 0.5)) for c in (x, y))
        profile = render_source(src, n, cfg.pixel_scale_arcsec, cfg.oversample,
                                (y - y0 - (n - 1) / 2.0, x - x0 - (n - 1) / 2.0))
        stamp = psfs.convolve(src.flux_njy[:, None, None] * profile[None])
        ys, xs = slice(max(y0, 0), min(y0 + n, image.shape[1])), slice(max(x0, 0), min(x0 + n, image.shape[2]))
        image[:, ys, xs] += stamp[:, ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0].astype(np.float32)
        rows.append(_foreground_row(first_id + len(rows), src, stamp, x, y, x0, y0, cfg, wcs))
        kinds.append(src.kind)
    return rows, kinds


def _centre_and_centroid(stamp: np.ndarray, x: float, y: float, x0: int, y0: int,
                         wcs: WCS) -> tuple[float, float, float, float, float, float]:
    """The light-weighted centroid (x, y) [pixels] of a noiseless ``stamp`` (band, y, x) whose
    pixel [0, 0] is mosaic pixel (x0, y0), then RA, Dec [deg] of the centre (x, y) and of
    the centroid."""
    light = stamp.sum(axis=0)
    yy, xx = np.indices(light.shape)
    xc, yc = x0 + (xx * light).sum() / light.sum(), y0 + (yy * light).sum() / light.sum()
    (ra, rac), (dec, decc) = wcs.pixel_to_world_values([x, xc], [y, yc])
    return xc, yc, ra, dec, rac, decc


def _foreground_row(source_id: int, src: SourceDraw, stamp: np.ndarray, x: float, y: float, x0: int, y0: int,
                    cfg: SimulationConfig, wcs: WCS) -> dict[str, Any]:
    """A foreground source's truth row, with the columns of a high-z galaxy's (NaN where they do
    not apply: no dust-to-metal ratio; no mass, SFR or size for a brown dwarf)."""
    xc, yc, ra, dec, rac, decc = _centre_and_centroid(stamp, x, y, x0, y0, wcs)
    galaxy = src.kind != "brown_dwarf"
    nan = float("nan")
    return {
        "id": source_id, "ra": float(ra), "dec": float(dec), "x": float(x), "y": float(y),
        "x_centroid": float(xc), "y_centroid": float(yc), "ra_centroid": float(rac), "dec_centroid": float(decc),
        "on_tile_boundary": False, "redshift": src.redshift, "A_V": src.a_v, "EBV": src.ebv,
        "R_V": float(r_v(src.a_v, src.ebv)) if galaxy else nan,
        "log_ssfr": src.log_sfr - src.log_mstar, "dtm": nan, "log_mstar": src.log_mstar, "log_sfr": src.log_sfr,
        "r_eff_kpc": src.r_eff_arcsec * kpc_per_arcsec(round(src.redshift, 3)) if galaxy else nan,
        "inclination_deg": float(np.rad2deg(np.arccos(src.axis_ratio))) if galaxy else nan,
        **{f"flux_{b}": float(stamp[i].sum()) for i, b in enumerate(cfg.bands)},
    }


def _check_outputs(paths: list[Path], overwrite: bool) -> None:
    existing = [str(p) for p in paths if p.exists()]
    if existing and not overwrite:
        raise FileExistsError(f"{existing[0]} already exists; pass overwrite=True to replace it")


@dataclass(frozen=True)
class FieldLayout:
    """The field's pixel grid and where it has data (see :func:`simulate_field` for each setting)."""

    shape: tuple[int, int]             # (ny, nx) [pixels]
    rotation_deg: float                # rotation of the grid on the sky [deg]
    centre: tuple[float, float]        # (RA, Dec) of the centre [deg]
    border_pix: int                    # width of the border without data [pixels]
    corner_cut: float                  # legs of the corner triangle without data (fraction of the width)
    noise_variation: float             # relative amplitude of the smooth noise variation
    tile_pix: int                      # tile edge [pixels] for the galaxies placed across tile boundaries
    n_straddle: int                    # galaxies placed across tile boundaries

    def __post_init__(self) -> None:
        if self.border_pix < 0 or self.tile_pix < 1 or self.n_straddle < 0:
            raise InputError("border_pix and n_straddle must be >= 0 and tile_pix >= 1")
        if not (0 <= self.noise_variation < 1 and 0 <= self.corner_cut < 1):
            raise InputError("noise_variation and corner_cut must lie in [0, 1)")
        if min(self.shape) <= 2 * self.border_pix + 2 * EDGE_MARGIN_PIX:
            raise InputError(f"field shape {self.shape} leaves no room inside a {self.border_pix} px border")


@dataclass(frozen=True)
class RenderedField:
    """A rendered field before it is written: noisy images, errors, truth."""

    sci_njy: np.ndarray                # (band, y, x) float32 galaxies + noise [nJy per pixel]
    err_njy: np.ndarray                # (band, y, x) float32 1-sigma noise [nJy per pixel]
    valid: np.ndarray                  # (y, x) bool: where the mosaic has data
    wcs: WCS                           # celestial WCS of the grid
    rows: list[dict[str, Any]]         # truth rows: the high-z galaxies, then the foreground
    kinds: list[str]                   # kind of each row
    sigma: np.ndarray                  # (band,) nominal per-pixel noise sigma [nJy]


def render_field(cfg: SimulationConfig, n_galaxies: int, layout: FieldLayout,
                 fg: ForegroundConfig) -> RenderedField:
    """Place and render the field's galaxies (and foreground), then add its noise.

    Parameters
    ----------
    cfg : SimulationConfig
        The config the field is rendered with (bands, depth, stamp size [pixels], seed).
    n_galaxies : int
        High-z galaxies injected (one view and one random DTM from ``dtm_values`` each).
    layout : FieldLayout
        The grid, its data region and the noise variation.
    fg : ForegroundConfig
        The sky's mix around the high-z galaxies (nothing when not ``enabled``).

    Returns
    -------
    RenderedField
        Noisy images and errors [nJy per pixel], the data mask, the WCS and the truth rows.
    """
    wcs = field_wcs(layout.shape, layout.centre, layout.rotation_deg, cfg.pixel_scale_arcsec)
    valid = data_mask(layout.shape, layout.border_pix, layout.corner_cut)
    edge_dist = distance_transform_edt(np.pad(valid, 1))[1:-1, 1:-1]
    rng = np.random.default_rng([cfg.seed, FIELD_STREAM])
    allowed = edge_dist >= EDGE_MARGIN_PIX
    xy, on_boundary = _place(n_galaxies, allowed, layout.tile_pix, layout.n_straddle, rng)
    kernels = psf_kernels(cfg)
    sigma = noise_sigma(cfg)
    image = np.zeros((len(cfg.bands), *layout.shape), np.float32)
    rows = _add_galaxies(image, cfg, xy, on_boundary, PSFSet(kernels, cfg.stamp_size), sigma, wcs)
    kinds = ["high_z"] * len(rows)
    if fg.enabled:
        area = float(valid.sum()) * (cfg.pixel_scale_arcsec / 60.0) ** 2
        more, more_kinds = _add_foreground(image, fg, cfg, allowed, area, xy, kernels, wcs, len(rows))
        rows += more
        kinds += more_kinds
    relative = _noise_pattern(layout.shape, layout.noise_variation, rng)
    err_njy = np.empty_like(image)
    for i in range(len(cfg.bands)):
        err_njy[i] = (sigma[i] * relative).astype(np.float32)
        image[i] += rng.standard_normal(layout.shape, dtype=np.float32) * err_njy[i]
    return RenderedField(sci_njy=image, err_njy=err_njy, valid=valid, wcs=wcs, rows=rows, kinds=kinds, sigma=sigma)


def _add_galaxies(image: np.ndarray, cfg: SimulationConfig, xy: np.ndarray, on_boundary: np.ndarray,
                  psfs: PSFSet, sigma: np.ndarray, wcs: WCS) -> list[dict[str, Any]]:
    """Render each high-z galaxy (noiseless, by :func:`surveydust.simulate.render.render_galaxy`)
    centred on its position ``xy`` [pixels] and add it to ``image``; return the truth rows."""
    lib = load_sed_library()
    n = cfg.stamp_size
    rows: list[dict[str, Any]] = []
    for g, ((x, y), straddles) in enumerate(zip(xy, on_boundary)):
        grng = np.random.default_rng([cfg.seed, FIELD_STREAM, g])
        gal, phot = draw_with_photometry(grng, cfg, lib)
        dtm = float(grng.choice(np.asarray(cfg.dtm_values)))
        # the stamp's centre sits at (n - 1) / 2 + offset: an integer origin plus a sub-pixel offset
        x0, y0 = (int(np.floor(c - (n - 1) / 2.0 + 0.5)) for c in (x, y))
        view = dataclasses.replace(draw_view(grng), offset_pix=(y - y0 - (n - 1) / 2.0,
                                                                x - x0 - (n - 1) / 2.0))
        (obs,) = render_galaxy(gal, phot, view, [dtm], cfg, psfs, sigma, grng, noise=False)
        stamp = obs.image.astype(np.float64)
        ys, xs = slice(max(y0, 0), min(y0 + n, image.shape[1])), slice(max(x0, 0), min(x0 + n, image.shape[2]))
        image[:, ys, xs] += obs.image[:, ys.start - y0:ys.stop - y0, xs.start - x0:xs.stop - x0]
        xc, yc, ra, dec, rac, decc = _centre_and_centroid(stamp, x, y, x0, y0, wcs)
        rows.append({
            "id": g, "ra": float(ra), "dec": float(dec), "x": float(x), "y": float(y),
            "x_centroid": float(xc), "y_centroid": float(yc),
            "ra_centroid": float(rac), "dec_centroid": float(decc),
            "on_tile_boundary": bool(straddles),
            "redshift": gal.redshift, "A_V": obs.a_v, "EBV": obs.ebv,
            "R_V": float(r_v(obs.a_v, obs.ebv)), "log_ssfr": gal.log_ssfr, "dtm": dtm,
            "log_mstar": gal.log_mstar, "log_sfr": gal.log_sfr, "r_eff_kpc": gal.r_eff_kpc,
            "inclination_deg": float(np.rad2deg(view.inclination)),
            **{f"flux_{b}": float(stamp[i].sum()) for i, b in enumerate(cfg.bands)},
        })
    return rows


def write_field(rendered: RenderedField, out_dir: Path | str, *, field: str, cfg: SimulationConfig,
                valid_cfg: SimulationConfig, fg: ForegroundConfig, layout: FieldLayout,
                n_galaxies: int) -> FieldFiles:
    """Write a rendered field: one i2d-style FITS file per band and the truth table.

    Parameters
    ----------
    rendered : RenderedField
        The field from :func:`render_field`.
    out_dir : pathlib.Path or str
        Folder for ``<field>_<band>_i2d.fits`` and ``<field>_truth.ecsv`` (created if missing;
        existing files are replaced, each atomically).
    field : str
        Field name (file names, ``TARGNAME``).
    cfg, valid_cfg : SimulationConfig
        The config the field was rendered with, and the validated one recorded in the truth
        table (they differ by the photometry-only bands).
    fg : ForegroundConfig
        The foreground settings (recorded when enabled).
    layout : FieldLayout
        The grid settings, recorded in the truth table.
    n_galaxies : int
        High-z galaxies injected (the first rows of the truth table).

    Returns
    -------
    FieldFiles
        The paths written. Images are in MJy/sr (``PIXAR_SR`` [sr] gives the conversion to
        nJy per pixel); ``WHT`` = 1 / ``ERR**2``, 0 where there are no data.
    """
    out_dir = Path(out_dir)
    paths = {b: out_dir / f"{field}_{b}_i2d.fits" for b in cfg.bands}
    truth_path = out_dir / f"{field}_truth.ecsv"
    pixar = pixel_area_sr(cfg.pixel_scale_arcsec)
    header = rendered.wcs.to_header()
    primary = fits.Header()
    primary.update({"TELESCOP": ("JWST", "simulated"), "INSTRUME": "NIRCAM", "TARGNAME": field,
                    "ORIGIN": "surveydust", "SDVERS": (VERSION, "surveydust version"),
                    "SIMSEED": (cfg.seed, "simulate_field seed"),
                    "NGAL": (n_galaxies, "injected galaxies"),
                    **({"NFOREGR": (len(rendered.rows) - n_galaxies, "injected foreground sources")}
                       if fg.enabled else {}),
                    "DEPTH": (cfg.depth if isinstance(cfg.depth, str) else "custom", "noise depth preset")})
    out_dir.mkdir(parents=True, exist_ok=True)
    for i, band in enumerate(cfg.bands):
        hdul = _band_hdul(rendered, i, band, header, primary, pixar, cfg.pixel_scale_arcsec)
        write_atomically(paths[band], hdul.writeto)
    truth = _truth_table(rendered, field=field, cfg=cfg, valid_cfg=valid_cfg, fg=fg, layout=layout,
                         n_galaxies=n_galaxies)
    write_atomically(truth_path, lambda tmp: truth.write(tmp, format="ascii.ecsv"))
    return FieldFiles(bands=paths, truth=truth_path)


def _band_hdul(rendered: RenderedField, i: int, band: str, header: fits.Header, primary: fits.Header,
               pixar: float, pixel_scale_arcsec: float) -> fits.HDUList:
    """Band ``i`` of the field as a JWST-pipeline-style i2d HDU list: an empty primary HDU and
    ``SCI``, ``ERR`` [MJy/sr] and ``WHT`` [(MJy/sr)^-2] float32 images (NaN, NaN and 0 where
    there are no data)."""
    njy_per_mjysr = float(mjy_per_sr_to_njy(1.0, pixar))
    sci = (rendered.sci_njy[i] / njy_per_mjysr).astype(np.float32)
    err = (rendered.err_njy[i] / njy_per_mjysr).astype(np.float32)
    wht = (1.0 / err.astype(np.float64) ** 2).astype(np.float32)
    valid = rendered.valid
    sci[~valid], err[~valid], wht[~valid] = np.nan, np.nan, 0.0
    ext = header.copy()
    ext.update({"BUNIT": "MJy/sr", "PIXAR_SR": (pixar, "nominal pixel area [sr]"),
                "PIXAR_A2": (pixel_scale_arcsec**2, "nominal pixel area [arcsec^2]"),
                "FILTER": band})
    phdr = primary.copy()
    phdr.update({"FILTER": band, "PUPIL": "CLEAR",
                 "NOISENJY": (float(rendered.sigma[i]), "nominal per-pixel noise sigma [nJy]")})
    wht_hdr = header.copy()
    wht_hdr["FILTER"] = band
    wht_hdr.add_comment("WHT = 1 / ERR^2 [(MJy/sr)^-2]; 0 where there are no data")
    return fits.HDUList([fits.PrimaryHDU(header=phdr),
                         fits.ImageHDU(sci, header=ext, name="SCI"),
                         fits.ImageHDU(err, header=ext, name="ERR"),
                         fits.ImageHDU(wht, header=wht_hdr, name="WHT")])


#: units of the truth table's columns
_TRUTH_UNITS = {"ra": "deg", "dec": "deg", "x": "pix", "y": "pix", "x_centroid": "pix",
                "y_centroid": "pix", "ra_centroid": "deg", "dec_centroid": "deg", "A_V": "mag",
                "EBV": "mag", "log_ssfr": "dex(1/yr)",
                "log_mstar": "dex(solMass)", "log_sfr": "dex(solMass/yr)", "r_eff_kpc": "kpc",
                "inclination_deg": "deg"}
#: descriptions of the truth table's columns (the band fluxes' are added per field)
_TRUTH_DESCRIPTIONS = {
    "x": "galaxy centre, 0-based pixel (x) in the mosaic", "y": "galaxy centre, 0-based pixel (y)",
    "ra": "ICRS RA of (x, y)", "dec": "ICRS Dec of (x, y)",
    "x_centroid": "light-weighted centroid of the noiseless image (all bands)",
    "y_centroid": "light-weighted centroid of the noiseless image (all bands)",
    "ra_centroid": "ICRS RA of the light-weighted centroid",
    "dec_centroid": "ICRS Dec of the light-weighted centroid",
    "A_V": "from integrated attenuated vs intrinsic light at 5500 A rest",
    "EBV": "from integrated light at 4400 and 5500 A rest", "R_V": "A_V / E(B-V); NaN without reddening",
    "log_ssfr": "100 Myr SFR over stellar mass", "dtm": "dust-to-metal ratio",
    "kind": "high_z (the simulator's z > 6 galaxies), foreground, dusty, balmer_break or brown_dwarf",
}


def _truth_table(rendered: RenderedField, *, field: str, cfg: SimulationConfig, valid_cfg: SimulationConfig,
                 fg: ForegroundConfig, layout: FieldLayout, n_galaxies: int) -> Table:
    """The truth table: one row per injected source, with units, descriptions and the field's settings."""
    truth = Table(rows=rendered.rows)
    if fg.enabled:
        truth.add_column(np.array(rendered.kinds, dtype="U12"), name="kind", index=truth.colnames.index("redshift"))
    units = {**_TRUTH_UNITS, **{f"flux_{b}": "nJy" for b in cfg.bands}}
    descriptions = {**_TRUTH_DESCRIPTIONS,
                    "on_tile_boundary": f"placed across a boundary of {layout.tile_pix} px tiles",
                    **{f"flux_{b}": f"noiseless total {b} flux (PSF-convolved stamp)" for b in cfg.bands}}
    for name, col in truth.columns.items():
        if name in units:
            col.unit = units[name]
        if name in descriptions:
            col.description = descriptions[name]
    truth.meta.update({"field": field, "seed": cfg.seed, "shape": list(layout.shape),
                       "pixel_scale_arcsec": cfg.pixel_scale_arcsec, "bands": list(cfg.bands),
                       "depth_mag": cfg.depth_mag(), "noise_sigma_njy": dict(zip(cfg.bands, rendered.sigma.tolist())),
                       "rotation_deg": float(layout.rotation_deg), "centre": [float(c) for c in layout.centre],
                       "border_pix": int(layout.border_pix), "tile_pix": int(layout.tile_pix),
                       "simulation_config": valid_cfg.to_json(), "surveydust_version": VERSION})
    if fg.enabled:
        truth.meta.update({"n_high_z": int(n_galaxies), "foreground_config": fg.to_json()})
    if cfg.bands != valid_cfg.bands:
        truth.meta["photometry_only_bands"] = [b for b in cfg.bands if b not in valid_cfg.bands]
    return truth


def simulate_field(
    out_dir: Path | str,
    *,
    n_galaxies: int = 40,
    shape: tuple[int, int] = (1024, 1024),
    bands: list[str] | tuple[str, ...] | None = None,
    seed: int = 0,
    depth: str | dict[str, float] | None = "ceers",
    rotation_deg: float = 30.0,
    centre: tuple[float, float] = (53.16, -27.78),
    border_pix: int = 40,
    config: SimulationConfig | Path | str | None = None,
    field: str = FIELD_NAME,
    noise_variation: float = 0.2,
    corner_cut: float = 0.25,
    tile_pix: int = 256,
    n_straddle: int = 4,
    overwrite: bool = False,
    foreground: bool | ForegroundConfig | dict[str, Any] | None = None,
    **sim_overrides: Any,
) -> FieldFiles:
    """Write a small JWST-like field of mock z = 6-8 galaxies with known truth.

    Parameters
    ----------
    out_dir : folder for ``<field>_<band>_i2d.fits`` and ``<field>_truth.ecsv``.
    n_galaxies : galaxies injected (one view and one random DTM from ``dtm_values`` each).
    shape : (ny, nx) of the mosaic, 0.03"/px (``pixel_scale_arcsec`` of the config).
    bands : NIRCam bands; None: the simulation config's bands. Bands blueward of Lyman-alpha
        at the top of the redshift range (F090W) are rendered as photometry-only bands.
    seed : everything (galaxies, positions, noise) follows from it.
    depth : preset name (``ceers``, ``jades``) or {band: 5-sigma AB mag in 0.1" radius};
        None: the config's depth.
    rotation_deg : rotation of the pixel grid on the sky (the CROTA2 angle, written as a
        PC matrix): north points ``rotation_deg`` from +y towards -x; east is to the left.
    centre : (RA, Dec) of the field centre [deg].
    border_pix : width of the NaN (WHT = 0) border.
    config : simulation config (object, YAML file or None for the defaults);
        ``sim_overrides`` (e.g. ``redshift_range=(6, 7)``, ``stamp_size=48``) go on top.
    noise_variation : relative amplitude of the smooth spatial variation of the noise.
    corner_cut : legs of the NaN triangle cut off one corner, as a fraction of the
        data width (0: none).
    tile_pix, n_straddle : ``n_straddle`` galaxies are placed across the boundaries of
        ``tile_pix`` tiles (the first rows of the truth table, ``on_tile_boundary``).
    overwrite : replace existing files.
    foreground : the sky's mix around the z > 6 galaxies (:mod:`surveydust.simulate.foreground`):
        None follows ``foreground.enabled`` of the config file (off in the shipped one);
        True / False switch it on / off; a mapping (e.g. ``{"density_scale": 2}``) or a
        :class:`surveydust.config.ForegroundConfig` sets it up. Its sources get ids after the
        high-z galaxies', the truth table a ``kind`` column (``high_z``, ``foreground``,
        ``dusty``, ``balmer_break``, ``brown_dwarf``). Off, the files are exactly those of a
        field without foreground.
    """
    sim_overrides.setdefault("stamp_size", FIELD_STAMP_SIZE)
    valid_cfg, cfg = _field_configs(config, bands, seed=seed, n_galaxies=n_galaxies, depth=depth, **sim_overrides)
    fg = _foreground_config(foreground, config)
    layout = FieldLayout(shape=(int(shape[0]), int(shape[1])), rotation_deg=rotation_deg, centre=centre,
                         border_pix=border_pix, corner_cut=corner_cut, noise_variation=noise_variation,
                         tile_pix=tile_pix, n_straddle=n_straddle)
    out_dir = Path(out_dir)
    _check_outputs([*(out_dir / f"{field}_{b}_i2d.fits" for b in cfg.bands), out_dir / f"{field}_truth.ecsv"],
                   overwrite)
    rendered = render_field(cfg, n_galaxies, layout, fg)
    return write_field(rendered, out_dir, field=field, cfg=cfg, valid_cfg=valid_cfg, fg=fg, layout=layout,
                       n_galaxies=n_galaxies)
