"""Write an augmented copy of a training store's training split (the paper's section 2.4).

The paper rotates every image by 90, 180 and 270 degrees, flips images, adds
Gaussian noise, optionally adds a histogram-of-oriented-gradients (HOG) image,
and "balances" the training set by raising the proportion of rare (large)
label values. :func:`augment_store` does all of that on a training store and
writes a new training store (same contract, see
:mod:`surveydust.stores.training`) with two extra coordinates:

``source_sample(sample)``
    index of the sample of the input store that the copy was made from;
``transform(sample)``
    the dihedral transform applied, coded as in :data:`surveydust.transforms.TRANSFORMS`.

Which copies are made (for each selected input sample, in this order):

1. the sample itself, unchanged (transform 0, never noised);
2. with ``rotations``: its rotations by 90, 180, 270 degrees (1, 2, 3);
3. with ``flips``: its left-right flip (4), and with ``rotations`` as well the
   flipped-then-rotated copies (5, 6, 7), i.e. all 8 dihedral transforms;
4. with ``balance``: :func:`balance_copies` extra copies, each with a random
   transform drawn from the allowed set ({0}, {0, 4}, {0..3} or {0..7}).

So the output has ``n * k + sum(balance_copies)`` samples, where ``n`` is the
number of selected samples and ``k`` = 1 (no rotations, no flips), 2 (flips
only), 4 (rotations only) or 8 (both). Every copy except the unchanged
originals gets extra Gaussian noise of ``noise * noise_sigma[band]`` per
pixel (when the store records ``noise_sigma``).

The output keeps plan order (by source sample: the base copies by transform,
then the balancing copies by transform); the trainer shuffles. The plan is
made on the client from ``seed``; the noise of output sample ``i`` comes from
``default_rng([seed, NOISE_STREAM, i])``, so a store is identical for a given
seed whatever the number of workers or ``samples_per_task``. The image
transforms themselves (pure array functions) live in :mod:`surveydust.transforms`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import dask
import dask.array as da
import numpy as np
import xarray as xr

from surveydust.cluster import Compute, run_with_progress
from surveydust.config import AugmentConfig
from surveydust.errors import InputError
from surveydust.stores.base import check_output_path
from surveydust.stores.training import open_training_store, write_training_store
from surveydust.transforms import (
    HOG_CELL,
    HOG_ORIENTATIONS,
    TRANSFORMS,
    allowed_transforms,
    apply_transform,
    extra_noise_sigma,
    hog_image,
)

__all__ = [
    "augment_samples",
    "augment_store",
    "balance_copies",
    "plan_augmentation",
]

# independent random streams derived from the seed
_BALANCE_STREAM, _TRANSFORM_STREAM, NOISE_STREAM = 1, 2, 3


# --------------------------------------------------------------------------- balancing


def balance_copies(
    labels: Mapping[str, np.ndarray],
    targets: Sequence[str],
    bins: int,
    max_copies: int,
    rng: np.random.Generator,
) -> np.ndarray:
    """Extra copies per sample (int array, 0..``max_copies``) that flatten label histograms.

    For each target the finite values are histogrammed in ``bins`` equal-width
    bins; a sample's weight for that target is ``max_count / count_of_its_bin``
    (1 for the most common bin). The sample's weight is the largest over the
    targets, and it gets ``clip(round(weight) - 1, 0, max_copies)`` extra
    copies. The rounding is stochastic (the fractional part of the weight is
    the probability of rounding up, drawn from ``rng``) so that the expected
    number of copies is unbiased; the result is deterministic for a given
    ``rng`` state. A sample with a non-finite value of any target gets 0 copies.
    """
    if not targets:
        raise InputError("balance_copies needs at least one target")
    if bins < 1:
        raise InputError(f"bins must be >= 1, got {bins}")
    if max_copies < 0:
        raise InputError(f"max_copies must be >= 0, got {max_copies}")
    missing = [t for t in targets if t not in labels]
    if missing:
        raise InputError(f"no labels for target(s) {missing}")
    values = [np.asarray(labels[t], dtype=np.float64) for t in targets]
    n = values[0].shape[0]
    if any(v.shape != (n,) for v in values):
        raise InputError("labels of all targets must be 1-D arrays of the same length")
    weight = np.ones(n)
    bad = np.zeros(n, dtype=bool)
    for v in values:
        finite = np.isfinite(v)
        bad |= ~finite
        if not finite.any():
            continue
        counts, edges = np.histogram(v[finite], bins=bins)
        which = np.clip(np.searchsorted(edges, v[finite], side="right") - 1, 0, bins - 1)
        w = np.ones(n)
        w[finite] = counts.max() / counts[which]
        weight = np.maximum(weight, w)
    whole = np.floor(weight)
    rounded = whole + (rng.random(n) < weight - whole)
    copies = np.clip(rounded - 1, 0, max_copies).astype(np.int64)
    copies[bad] = 0
    return copies


# --------------------------------------------------------------------------- plan and tasks


def plan_augmentation(
    samples: np.ndarray,
    labels: Mapping[str, np.ndarray],
    *,
    config: AugmentConfig,
    targets: Sequence[str],
    seed: int,
) -> dict[str, np.ndarray]:
    """The full list of output samples: ``source`` (input index), ``transform``, ``noisy``.

    ``samples`` are input-store indices and ``labels[t]`` their target values
    (aligned with ``samples``). Order: by source sample; per source the base
    copies by transform, then its balancing copies by transform.
    """
    samples = np.asarray(samples, dtype=np.int64)
    order = np.argsort(samples, kind="stable")
    samples = samples[order]
    labels = {t: np.asarray(labels[t])[order] for t in targets}
    allowed = allowed_transforms(config.rotations, config.flips)
    n, k = samples.size, allowed.size
    src = [np.repeat(samples, k)]
    tr = [np.tile(allowed, n)]
    extra_flag = [np.zeros(n * k, dtype=bool)]
    pos = [np.repeat(np.arange(n), k)]
    if config.balance and config.max_copies > 0:
        copies = balance_copies(labels, targets, config.balance_bins, config.max_copies,
                                np.random.default_rng([seed, _BALANCE_STREAM]))
        total = int(copies.sum())
        rng = np.random.default_rng([seed, _TRANSFORM_STREAM])
        src.append(np.repeat(samples, copies))
        tr.append(allowed[rng.integers(0, k, size=total)])
        extra_flag.append(np.ones(total, dtype=bool))
        pos.append(np.repeat(np.arange(n), copies))
    source, transform = np.concatenate(src), np.concatenate(tr).astype(np.int8)
    extra, position = np.concatenate(extra_flag), np.concatenate(pos)
    idx = np.lexsort((transform, extra, position))
    source, transform, extra = source[idx], transform[idx], extra[idx]
    return {"source": source, "transform": transform, "noisy": extra | (transform != 0)}


def augment_samples(
    path: str,
    band_index: np.ndarray,
    source: np.ndarray,
    transform: np.ndarray,
    noisy: np.ndarray,
    start: int,
    seed: int,
    noise_sigma: np.ndarray | None,
    hog: bool,
) -> dict[str, np.ndarray]:
    """Make output samples ``start .. start + len(source) - 1`` (one Dask task).

    Reads only the needed source samples (sorted, unique) and bands from the
    store at ``path``; ``noise_sigma`` is the per-band extra-noise sigma
    (already scaled by the configured factor) or None for no noise. Output
    sample ``i`` draws its noise from ``default_rng([seed, NOISE_STREAM, i])``.
    """
    uniq, inverse = np.unique(source, return_inverse=True)
    with xr.open_zarr(path, chunks=None) as ds:
        raw = ds["image"].isel(sample=uniq, band=np.asarray(band_index)).values
    raw = np.asarray(raw, dtype=np.float32)
    out = np.empty((source.size, *raw.shape[1:]), dtype=np.float32)
    sigma = None if noise_sigma is None else np.asarray(noise_sigma, np.float32)[:, None, None]
    for j in range(source.size):
        img = apply_transform(raw[inverse[j]], int(transform[j]))
        if noisy[j] and sigma is not None:
            rng = np.random.default_rng([seed, NOISE_STREAM, start + j])
            img = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
        out[j] = img
    result = {"image": out}
    if hog:
        result["hog"] = hog_image(out)
    return result


def _check_inputs(ds: xr.Dataset, samples: Any, bands: Sequence[str],
                  targets: Sequence[str]) -> tuple[np.ndarray, list[str], np.ndarray]:
    """Validate samples/bands/targets against the store; one-line ValueErrors."""
    arr = np.asarray(samples)
    if arr.ndim != 1:
        raise InputError(f"samples must be a 1-D array of indices, got shape {arr.shape}")
    if arr.size == 0:
        raise InputError("no samples to augment (samples is empty)")
    if arr.dtype == bool or not np.issubdtype(arr.dtype, np.integer):
        raise InputError(f"samples must be integer indices (not a mask), got dtype {arr.dtype}")
    n = ds.sizes["sample"]
    bad = arr[(arr < 0) | (arr >= n)]
    if bad.size:
        raise InputError(f"sample indices out of range 0..{n - 1}: {bad[:5].tolist()}"
                         f"{' ...' if bad.size > 5 else ''}")
    if not bands:
        raise InputError("no bands given")
    store_bands = [str(b) for b in ds["band"].values]
    wanted = [str(b).upper() for b in bands]
    missing = [b for b in wanted if b not in store_bands]
    if missing:
        raise InputError(f"band(s) {missing} not in the store (it has {', '.join(store_bands)})")
    if len(set(wanted)) != len(wanted):
        raise InputError(f"bands listed twice: {wanted}")
    if not targets:
        raise InputError("no targets given")
    missing = [t for t in targets if t not in ds.data_vars or ds[t].dims != ("sample",)]
    if missing:
        raise InputError(f"target(s) {missing} not in the store")
    band_index = np.array([store_bands.index(b) for b in wanted], dtype=np.int64)
    return arr.astype(np.int64), wanted, band_index


def augment_store(
    store: Path | str,
    out: Path | str,
    samples: np.ndarray,
    *,
    config: AugmentConfig,
    bands: Sequence[str],
    targets: Sequence[str],
    seed: int,
    client: Any = None,
    cluster: str | None = None,
    workers: int | None = None,
    overwrite: bool = False,
    progress: bool = True,
) -> Path:
    """Write an augmented training store of input ``samples`` to ``out``; return its path.

    Parameters
    ----------
    store : input training store.
    out : output Zarr store (refused if it exists, unless ``overwrite``).
    samples : integer indices along the input store's ``sample`` dim (the
        training split, chosen by the caller).
    config : rotations/flips/noise/hog/balance settings (:class:`AugmentConfig`).
    bands : bands to keep (``image``, ``snr``, ``noise_sigma``, ``hog``).
    targets : labels to balance (histogrammed over the selected samples).
    seed : seed of the plan (balancing, random transforms) and of the noise.
    client, cluster, workers : an existing Dask client, or a cluster profile
        name and worker count for :func:`surveydust.cluster.open_client`.

    The output holds ``image(sample, band, y, x)`` for ``bands``, all
    per-sample labels and coordinates of the input gathered from the source
    samples, ``snr(sample, band)``, ``noise_sigma(band)`` when present, the
    coordinates ``source_sample`` and ``transform`` (:data:`surveydust.transforms.TRANSFORMS`), and
    with ``config.hog`` a ``hog(sample, band, y, x)`` variable
    (:func:`surveydust.transforms.hog_image`).
    Each Dask task makes ``config.samples_per_task`` output samples (one Zarr
    chunk) and reads its own source samples from the store on the worker.
    """
    out = check_output_path(out, overwrite, "training")
    store = Path(store)
    if store.exists() and out.resolve() == store.resolve():
        raise InputError(f"output {out} is the input store; write the augmented store elsewhere")
    ds = open_training_store(store)
    samples, bands, band_index = _check_inputs(ds, samples, bands, targets)

    meta = xr.open_zarr(store, chunks=None)  # lazily indexed numpy: small reads on this process
    labels = {t: np.asarray(meta[t].values)[samples] for t in targets}
    plan = plan_augmentation(samples, labels, config=config, targets=targets, seed=seed)
    source, n_out = plan["source"], plan["source"].size

    sigma = extra_noise_sigma(meta, bands, config.noise, store) if config.noise > 0 else None

    token = dask.base.tokenize(str(store.resolve()), ds.attrs.get("store_id"), samples.tolist(),
                               bands, config.to_json(), seed)
    n_pix = (ds.sizes["y"], ds.sizes["x"])
    parts: dict[str, list[da.Array]] = {"image": [], "hog": []}
    per_task = config.samples_per_task
    for i, s0 in enumerate(range(0, n_out, per_task)):
        s1 = min(s0 + per_task, n_out)
        task = dask.delayed(augment_samples, pure=True)(
            str(store), band_index, source[s0:s1], plan["transform"][s0:s1], plan["noisy"][s0:s1],
            s0, seed, sigma, config.hog, dask_key_name=f"augment-samples-{token}-{i}")
        shape = (s1 - s0, len(bands), *n_pix)
        for key in ("image", "hog") if config.hog else ("image",):
            parts[key].append(da.from_delayed(task[key], shape=shape, dtype=np.float32))

    result = _output_dataset(meta, ds, plan, bands, band_index, parts)
    result.attrs.update(
        augment_config=config.to_json(), augment_seed=seed, augment_targets=list(targets),
        source_store=str(store.resolve()), source_store_id=ds.attrs.get("store_id", ""),
        source_samples=int(samples.size),
    )
    with Compute(client, cluster, workers, progress).open() as c:
        compute: Callable[[Any], None] = lambda delayed: run_with_progress(c, delayed, progress)
        return write_training_store(result, out, overwrite=overwrite, chunk_samples=per_task,
                                    compute=compute)


_STORE_ATTRS = ("store_kind", "store_id", "surveydust_version", "complete")


def _output_dataset(meta: xr.Dataset, lazy: xr.Dataset, plan: dict[str, np.ndarray],
                    bands: list[str], band_index: np.ndarray,
                    parts: dict[str, list[da.Array]]) -> xr.Dataset:
    """Assemble the output Dataset: task images plus labels gathered on the client."""
    source = plan["source"]
    n_out = source.size
    image_dims = ("sample", "band", "y", "x")
    data: dict[str, Any] = {"image": (image_dims, da.concatenate(parts["image"]))}
    if parts["hog"]:
        data["hog"] = (image_dims, da.concatenate(parts["hog"]))
    coords: dict[str, Any] = {"sample": np.arange(n_out), "band": np.array(bands, dtype=object)}
    for name, var in meta.variables.items():
        if name in ("image", "hog", "sample", "band") or not set(var.dims) <= {"sample", "band"}:
            continue
        values = np.asarray(var.values)
        if "sample" in var.dims:
            values = np.take(values, source, axis=var.dims.index("sample"))
        if "band" in var.dims:
            values = np.take(values, band_index, axis=var.dims.index("band"))
        item = (var.dims, values, dict(var.attrs))
        if name in meta.coords:
            coords[name] = item
        else:
            data[name] = item
    coords["source_sample"] = ("sample", source, {"description": "index of the source sample in the input store"})
    coords["transform"] = ("sample", plan["transform"], {
        "description": "dihedral transform: " + ", ".join(f"{k}={v}" for k, v in TRANSFORMS.items()),
    })
    ds = xr.Dataset(data, coords=coords)
    ds["image"].attrs.update(lazy["image"].attrs)
    ds["image"].attrs["description"] = "flux per pixel (augmented: transform and extra noise)"
    if "hog" in ds:
        ds["hog"].attrs.update(
            units=lazy["image"].attrs.get("units", ""),
            description=f"HOG picture: {HOG_ORIENTATIONS} unsigned orientation bins summed over "
                        f"{HOG_CELL}x{HOG_CELL}-pixel cells, drawn as edge-direction lines",
        )
    ds.attrs.update({k: v for k, v in lazy.attrs.items() if k not in _STORE_ATTRS})
    return ds
