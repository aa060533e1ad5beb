"""Inference throughput of ``Predictor.predict`` against the bare network, and the cost of the OOD score.

In one process with every core (:func:`surveydust.train.use_all_cores`, called before TensorFlow
loads), on realistic stamps of the shipped six-band bundle (``simulate_galaxies`` of the built-in
simulator in the bundle's bands, with their true redshifts), after an untimed warm-up of each:

1. ``model.predict`` of the bundle's network on prepared inputs (``network_inputs``, batch 1024):
   the baseline;
2. ``Predictor.predict`` on nJy images with the OOD colour photometry of the previous release
   (``before``: a verbatim copy of its float64 ``aperture_photometry`` below, swapped into
   :mod:`surveydust.ood` for the call; two ``np.median`` per band-stamp and ``np.where`` lag sums);
3. ``Predictor.predict`` as it is (``after``: float32 partial sorts and lag products);
4. for reference, the network as ``Predictor`` runs it (``_forward``: ``predict_on_batch`` per 1024
   prepared inputs, outputs and features in one pass, without ``model.predict``'s data pipeline).

Each repeat times all three back to back (their order rotated), so a repeat's ratios share its
machine load; the table gives the median images/s over the repeats and the median of the per-repeat
ratios to the baseline. Then ``colour_values`` alone (the colour part of the OOD score), before and
after, and for every shipped bundle the OOD scores and flagged shares of the two paths on the same
stamps (they must agree to float round-off, with identical flags).

Run:  .venv/bin/python benchmarks/bench_predict.py [--galaxies N] [--images N] [--repeat R]
"""

from __future__ import annotations

import argparse
import contextlib
import time

import numpy as np

from surveydust.train import use_all_cores

# ----------------------------------------------------------------- the previous release's photometry

def _correlation_length_before(pixels: np.ndarray, background: np.ndarray, sigma: np.ndarray) -> np.ndarray:
    quiet = background & (np.abs(pixels) < 3.0 * sigma[..., None, None])
    num = np.zeros(sigma.shape)
    den = np.zeros(sigma.shape)
    for a, b, ok in ((pixels[..., :, 1:], pixels[..., :, :-1], quiet[..., :, 1:] & quiet[..., :, :-1]),
                     (pixels[..., 1:, :], pixels[..., :-1, :], quiet[..., 1:, :] & quiet[..., :-1, :])):
        num += np.sum(np.where(ok, a * b, 0.0), axis=(-2, -1))
        den += np.sum(np.where(ok, 0.5 * (a * a + b * b), 0.0), axis=(-2, -1))
    rho = np.clip(np.divide(num, den, out=np.zeros_like(num), where=den > 0), 1e-6, 0.99)
    return np.where(rho > 0.02, np.sqrt(-1.0 / (4.0 * np.log(rho))), 0.0)


def aperture_photometry_before(images: np.ndarray, crop: int) -> tuple[np.ndarray, np.ndarray]:
    """``surveydust.ood.aperture_photometry`` of the previous release (commit 6f15ee6), verbatim."""
    from surveydust import ood
    from surveydust.instrument import circular_aperture
    from surveydust.preprocess import NORM_APERTURE_PIX, crop_centre

    cut = crop_centre(np.asarray(images, dtype=np.float64), crop)
    aperture = circular_aperture(crop, NORM_APERTURE_PIX)
    background = ~circular_aperture(crop, ood.BACKGROUND_RADIUS_PIX)
    flux = cut[:, :, aperture].sum(axis=-1)
    sky = cut[:, :, background]
    centred = cut - np.median(sky, axis=-1)[..., None, None]
    sigma = 1.4826 * np.median(np.abs(centred[:, :, background]), axis=-1)
    length = _correlation_length_before(centred, background, sigma)
    return flux, sigma * np.interp(length, ood._CORRELATION_GRID_PX, ood._noise_factors(crop))


@contextlib.contextmanager
def before():
    """The previous release's OOD photometry in :mod:`surveydust.ood` for the duration."""
    from surveydust import ood

    now = ood.aperture_photometry
    ood.aperture_photometry = aperture_photometry_before
    try:
        yield
    finally:
        ood.aperture_photometry = now


# ------------------------------------------------------------------------------------------ the run

def stamps(galaxies: int, n: int, bands: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """``n`` simulated stamps ``(n, band, y, x)`` [nJy] in ``bands`` and their redshifts."""
    from surveydust.config import load_simulation_config
    from surveydust.simulate.run import simulate_galaxies

    cfg = load_simulation_config().model_copy(update={"bands": bands, "seed": 20261203})
    out = simulate_galaxies(0, galaxies, cfg)
    if len(out["image"]) < n:
        raise SystemExit(f"{galaxies} galaxies give {len(out['image'])} stamps, fewer than --images {n}")
    return out["image"][:n], out["redshift"][:n].astype(np.float64)


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--galaxies", type=int, default=50, help="simulated galaxies (44 stamps each)")
    ap.add_argument("--images", type=int, default=2000, help="stamps per timed call")
    ap.add_argument("--repeat", type=int, default=5, help="timed repeats (median reported)")
    args = ap.parse_args()
    threads = use_all_cores()

    from surveydust import ood
    from surveydust.bundle import load_model, shipped_bundles
    from surveydust.preprocess import network_inputs

    predictor = load_model()  # the six-band bundle
    images, z = stamps(args.galaxies, args.images, list(predictor.bands))
    n = len(images)
    xp = network_inputs(images, predictor.crop, z, predictor.colour_inputs)
    runs = {"model.predict (prepared inputs)": lambda: predictor.model.predict(xp, batch_size=1024, verbose=0),
            "Predictor.predict, OOD before": lambda: _with(before, predictor.predict, images, z),
            "Predictor.predict, OOD after": lambda: predictor.predict(images, z),
            "network alone (Predictor._forward)": lambda: predictor._forward(xp, 1024)}
    for run in runs.values():  # warm-up: traces the predict functions for these shapes
        run()
    names = list(runs)
    seconds: dict[str, list[float]] = {k: [] for k in names}
    for r in range(args.repeat):
        for k in names[r % len(names):] + names[:r % len(names)]:
            seconds[k].append(timed(runs[k]))
    base = np.array(seconds[names[0]])
    print(f"{n} stamps of {'+'.join(predictor.bands)} (32x32, {args.galaxies} simulated galaxies), "
          f"{threads} cores, {args.repeat} repeats (median)\n")
    print(f"{'what':<40}{'images/s':>10}{'ratio':>8}")
    for k in names:
        print(f"{k:<40}{np.median(n / np.array(seconds[k])):>10.0f}{np.median(base / seconds[k]):>8.2f}")

    colour = {"before": [], "after": []}
    for r in range(args.repeat):
        for label in (("before", "after") if r % 2 == 0 else ("after", "before")):
            with before() if label == "before" else contextlib.nullcontext():
                colour[label].append(timed(lambda: ood.colour_values(images, predictor.crop)))
    b, a = (np.median(colour[k]) for k in ("before", "after"))
    print(f"\ncolour_values alone: before {n / b:.0f} images/s ({1e3 * b:.0f} ms), after {n / a:.0f} "
          f"({1e3 * a:.0f} ms): {b / a:.1f}x; per call against model.predict: "
          f"{b / np.median(base):.2f} -> {a / np.median(base):.2f}")

    print(f"\n{'bundle':<22}{'flagged before':>15}{'after':>8}{'flags differ':>14}{'max |d ood| / ood':>20}")
    for bands, path in shipped_bundles().items():
        p = load_model(path)
        idx = [list(predictor.bands).index(band) for band in bands]
        old = _with(before, p.predict, images[:, idx], z)["ood"].values
        new = p.predict(images[:, idx], z)["ood"].values
        print(f"{path.name:<22}{np.mean(old > 1):>15.4f}{np.mean(new > 1):>8.4f}"
              f"{int(np.sum((old > 1) != (new > 1))):>14d}{np.max(np.abs(new / old - 1)):>20.1e}")


def _with(context, fn, *args):
    with context():
        return fn(*args)


if __name__ == "__main__":
    main()
