"""How far a z > 6 selection can go on NIRCam photometry alone: the best completeness at a purity goal.

On the held-out sky mix of ``benchmarks/photoz.py`` (``--seed``, 20,000 sources, seven bands, CEERS
depth, purity re-weighted to 3% z > 6), each score is cut at every one of 400 thresholds and the
cut with the highest completeness among those that reach the purity goal of issue 23 is printed:
purity >= 0.9 at SNR(F277W) >= 10 and >= 0.8 at SNR >= 5:

- the template fit's P(z > 6) (:func:`surveydust.photoz.fit_photoz`);
- ``select_high_z``'s Delta chi^2 among the sources with P(z > 6) >= 0.3 (the shipped criteria
  with their Delta chi^2 threshold free);
- a gradient-boosted classifier trained on ``--n-train`` sources of the simulator's own sky mix
  (another seed): it knows the simulated populations exactly, so its number is near the ceiling
  of what these fluxes hold about z > 6 in this simulator (not a method to trust on real skies,
  whose populations it has never seen).

Run:  nice -n 15 .venv/bin/python benchmarks/selection_ceiling.py [--n-train 40000] [--seed 0]
(~3 min on 2 cores, most of it simulating the training mix.)
"""

from __future__ import annotations

import argparse

import numpy as np
from photoz import SEVEN, TEST_HIGH_Z, observe, to_sky_odds, weighted_selection


def best_completeness(score: np.ndarray, is_high: np.ndarray, purity_min: float = 0.9) -> tuple[float, float, float]:
    """(completeness, purity, threshold) of the cut ``score >= threshold`` with the highest completeness
    among those whose re-weighted purity is at least ``purity_min``."""
    best = (0.0, float("nan"), float("nan"))
    finite = score[np.isfinite(score)]
    for t in np.unique(np.quantile(finite, np.linspace(0.0, 1.0, 400))):
        completeness, purity = weighted_selection(is_high, score >= t)
        if purity >= purity_min and completeness > best[0]:
            best = (completeness, purity, float(t))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-test", type=int, default=20000)
    parser.add_argument("--n-train", type=int, default=40000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from sklearn.ensemble import HistGradientBoostingClassifier

    from surveydust.photoz import colour_features, fit_photoz, select_high_z
    from surveydust.simulate.foreground import draw_sky_mix

    test = draw_sky_mix(args.n_test, SEVEN, seed=args.seed, high_z_fraction=TEST_HIGH_Z)
    train = draw_sky_mix(args.n_train, SEVEN, seed=args.seed + 1000, high_z_fraction=TEST_HIGH_Z)
    flux, err = observe(test, SEVEN, args.seed)
    tr_flux, tr_err = observe(train, SEVEN, args.seed + 1)
    snr = flux[:, SEVEN.index("F277W")] / err[:, SEVEN.index("F277W")]
    fit = fit_photoz(flux, err, SEVEN)
    delta = select_high_z(flux, err, SEVEN, fit).delta_chi2
    clf = HistGradientBoostingClassifier(max_iter=400, learning_rate=0.05, random_state=args.seed)
    clf.fit(colour_features(tr_flux, tr_err), train.redshift > 6)
    scores = {"template P(z>6)": fit.p_high_z,
              "select_high_z, Delta chi^2 free": np.where(fit.p_high_z >= 0.3, delta, -np.inf),
              f"classifier on {args.n_train} simulated sources": to_sky_odds(
                  clf.predict_proba(colour_features(flux, err))[:, 1])}
    print(f"# seed {args.seed}: {args.n_test} test sources ({int((test.redshift > 6).sum())} at z > 6), seven bands, "
          f"CEERS depth; purity re-weighted to 3% z > 6")
    print(f"{'score':42s} {'SNR(F277W)':>10s} {'completeness':>13s} {'purity':>7s} {'threshold':>10s}  "
          f"(best completeness with purity >= 0.9 at SNR >= 10, >= 0.8 at SNR >= 5)")
    for cut, purity_min in ((10.0, 0.9), (5.0, 0.8)):
        keep = snr >= cut
        for name, score in scores.items():
            c, p, t = best_completeness(score[keep], test.redshift[keep] > 6, purity_min)
            print(f"{name:42s} {'>= ' + format(cut, 'g'):>10s} {c:13.3f} {p:7.3f} {t:10.3g}")


if __name__ == "__main__":
    main()
