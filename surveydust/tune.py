"""Distributed Bayesian hyper-parameter search (the paper's section 2.4.2, Table 1).

The client process owns the search: it asks Optuna for a trial, submits the
trial as a Dask task (``tune-trial-<study>-<number>``; one per GPU worker when
workers advertise ``GPU``, else one per worker), and tells Optuna the outcome.
On the worker the trial trains with :func:`surveydust.train.fit_bundle` on the
training split (augmented per batch, or with ``augment.per_batch: false`` a
Zarr store of augmented copies in the study folder, written once by Dask
tasks), reports each epoch's validation loss to the study and stops
early when the pruner says it is doing worse than the other trials.

The study lives in an Optuna journal file (``study.journal``) that the client
and every worker append to under a file lock (the symlink lock that Optuna
documents for NFS). The file is the study: re-running the same command on the
same folder resumes it. A trial left running by a killed run is marked failed
with ``interrupted`` and its parameters are queued again, so the table ends
with exactly the requested number of trials. A trial whose worker dies is
re-run by Dask on another worker (``distributed.scheduler.allowed-failures``)
and then marked failed, so the search never hangs.

Study folder::

    study.json         search space, training settings and store id (checked on resume)
    study.journal      the Optuna study
    data/augmented.zarr  augmented copies shared by all trials (augment.per_batch: false)
    trials.ecsv        one row per trial: parameters, value, epochs, state, worker, start, end
    loss.png, importance.png
    best-model/        bundle of the best complete trial (for ``evaluate`` and inference)
    best-training.yaml its training settings, for ``surveydust train --config``
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import shutil
import tempfile
import uuid
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from surveydust.augment import augment_store
from surveydust.bundle import read_meta
from surveydust.cluster import Compute, gpu_workers, worker_resources
from surveydust.config import (
    SEARCH_PARAMETERS,
    TrainingConfig,
    TuningConfig,
    load_training_config,
    load_tuning_config,
)
from surveydust.errors import InputError
from surveydust.preprocess import Split
from surveydust.stores.base import replace_atomically, write_atomically, write_output_figure, write_output_table
from surveydust.stores.training import open_training_store
from surveydust.train import Part, augments_per_batch, fit_bundle, prepare_training

logger = logging.getLogger(__name__)

STUDY_NAME = "surveydust"
STUDY_FILE, JOURNAL_FILE, TABLE_FILE = "study.json", "study.journal", "trials.ecsv"
BEST_MODEL, BEST_CONFIG = "best-model", "best-training.yaml"
AUGMENTED = Path("data") / "augmented.zarr"
INTERRUPTED = "interrupted"
POLL_S = 2.0  # how often the client looks for new workers while trials run


def tune(
    store: Path | str,
    out: Path | str,
    config: TuningConfig | Path | str | None = None,
    training: TrainingConfig | Path | str | None = None,
    *,
    client: Any = None,
    cluster: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    training_overrides: dict[str, Any] | None = None,
    **overrides: Any,
) -> Any:
    """Run (or resume) a hyper-parameter search on ``store``; return the trial table.

    Parameters
    ----------
    store : training store (Zarr) to tune on.
    out : study folder; an existing study there is resumed.
    config : tuning settings (:class:`TuningConfig`, a YAML file, or None for
        ``configs/tuning.yaml``); ``overrides`` (e.g. ``trials=6``) on top.
    training : the training settings that are not searched (bands, loss,
        augmentation, patience, ...), with ``training_overrides`` on top.
    client, cluster, workers : an existing Dask client, or a cluster profile
        name and worker count for :func:`surveydust.cluster.open_client`.

    Returns an :class:`astropy.table.Table` (also written to ``trials.ecsv``).
    """
    import optuna

    tuning = load_tuning_config(config, **overrides)
    cfg = load_training_config(training, **(training_overrides or {}), max_epochs=tuning.max_epochs)
    out = Path(out)
    split, meta = prepare_training(store, cfg)
    _check_study_folder(out, tuning, cfg, meta["training_store"]["store_id"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(study_name=STUDY_NAME, storage=_storage(out), direction="minimize",
                                load_if_exists=True)
    _requeue_interrupted(study, out)
    study.sampler = _sampler(tuning, cfg.seed, len(study.trials))

    with Compute(client, cluster, workers, progress).open() as c:
        parts = {"train": _training_part(store, out, split, cfg, c, progress),
                 "validation": Part(str(store), split.validation),
                 "calibration": Part(str(store), split.calibration)}
        runner = _TrialRunner(c, study, tuning, cfg, out, meta, parts)
        runner.run()
    return write_report(study, out)


# ---------------------------------------------------------------- study folder


def _storage(out: Path) -> Any:
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend, JournalFileSymlinkLock

    path = str(out / JOURNAL_FILE)
    return JournalStorage(JournalFileBackend(path, lock_obj=JournalFileSymlinkLock(path)))


def _check_study_folder(out: Path, tuning: TuningConfig, cfg: TrainingConfig, store_id: str) -> None:
    """Create the study folder, or check that an existing one holds the same search."""
    fixed = cfg.model_dump(mode="json")
    fixed.pop("max_epochs")
    identity = {"search_space": tuning.model_dump(mode="json")["search_space"], "training": fixed,
                "store_id": store_id}
    path = out / STUDY_FILE
    if path.is_file():
        known = json.loads(path.read_text())
        for key, what in (("search_space", "search space"), ("training", "training settings"),
                          ("store_id", "training store")):
            if known.get(key) != identity[key]:
                raise InputError(f"study folder {out} was made with another {what}; "
                                 "use a new --out, or the same settings to resume it")
        return
    if out.exists() and any(out.iterdir()):
        raise InputError(f"{out} exists and is not a surveydust study folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(path, lambda tmp: tmp.write_text(json.dumps(identity, indent=2)))


def _training_part(store: Path | str, out: Path, split: Split, cfg: TrainingConfig, client: Any,
                   progress: bool) -> Part:
    """The trials' training part: the training galaxies of ``store`` when they are augmented per
    batch, else their augmented copies in the study folder (written once, reused on resume)."""
    if augments_per_batch(cfg):
        return Part(str(store), split.train)
    path = out / AUGMENTED
    try:
        open_training_store(path)
    except (FileNotFoundError, ValueError):  # missing or incomplete: (re)write it
        path.parent.mkdir(exist_ok=True)
        augment_store(store, path, split.train, config=cfg.augment, bands=cfg.bands, targets=cfg.targets,
                      seed=cfg.seed, client=client, overwrite=True, progress=progress)
    return Part(str(path), np.arange(open_training_store(path).sizes["sample"]))


def _sampler(tuning: TuningConfig, seed: int, n_trials_before: int) -> Any:
    """The sampler, seeded from ``seed`` and the study size (a resumed run draws new points)."""
    import optuna

    state = int(np.random.SeedSequence([seed, n_trials_before]).generate_state(1)[0])
    if tuning.sampler == "random":
        return optuna.samplers.RandomSampler(seed=state)
    with warnings.catch_warnings():  # multivariate/group are "experimental" in Optuna since 2.2
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(n_startup_trials=tuning.startup_trials, multivariate=True,
                                          group=True, constant_liar=True, seed=state)


def make_pruner(tuning: TuningConfig) -> Any:
    """The Optuna pruner of ``tuning`` (steps are epochs)."""
    import optuna

    if tuning.pruner == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=tuning.pruner_startup_trials,
                                           n_warmup_steps=tuning.warmup_epochs)
    if tuning.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=max(tuning.warmup_epochs, 1),
                                              max_resource=tuning.max_epochs)
    return optuna.pruners.NopPruner()


def _requeue_interrupted(study: Any, out: Path) -> None:
    """Mark trials left running by a killed run as failed and queue their parameters again."""
    from optuna.trial import TrialState

    for stale in out.glob(".trial-*"):  # bundles of trials that never reported back
        shutil.rmtree(stale, ignore_errors=True)

    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        study._storage.set_trial_user_attr(t._trial_id, INTERRUPTED, True)
        study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        study.enqueue_trial(t.params, user_attrs={"retry_of": t.number}, skip_if_exists=False)
        logger.info("trial %d was left running by an interrupted run: queued again", t.number)


def counted_trials(study: Any) -> list[Any]:
    """Trials that ended on their own (complete, pruned or failed; not interrupted)."""
    from optuna.trial import TrialState

    ended = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
    return [t for t in study.get_trials(deepcopy=False, states=ended) if not t.user_attrs.get(INTERRUPTED)]


# ---------------------------------------------------------------- trials


def suggest_training(trial: Any, tuning: TuningConfig, cfg: TrainingConfig) -> TrainingConfig:
    """Draw ``trial``'s parameters from the search space; return its training settings.

    Each conv (dense) layer draws its own filters (units) from the same range,
    as in the paper's Table 1; parameters not searched keep ``cfg``'s values.
    """
    space = tuning.search_space

    def draw(name: str, key: str | None = None) -> Any:
        r = space[name]
        if SEARCH_PARAMETERS[name][0] is int:
            return trial.suggest_int(key or name, int(r.low), int(r.high), log=r.log)
        return trial.suggest_float(key or name, r.low, r.high, log=r.log)

    def layers(count: str, size: str, current: tuple[int, ...]) -> tuple[int, ...]:
        n = draw(count) if count in space else len(current)
        if size not in space:
            return tuple((current * n)[:n]) if count in space else current
        return tuple(draw(size, f"{size}_{i}") for i in range(n))

    model = {"conv_filters": layers("conv_layers", "conv_filters", cfg.model.conv_filters),
             "dense_units": layers("dense_layers", "dense_units", cfg.model.dense_units)}
    if "dropout" in space:
        model["dropout"] = draw("dropout")
    top = {name: draw(name) for name in ("learning_rate", "batch_size") if name in space}
    return load_training_config(cfg, model=model, **top)


class _TrialRunner:
    """Keeps one trial per (GPU) worker in flight until the study has its trials."""

    def __init__(self, client: Any, study: Any, tuning: TuningConfig, cfg: TrainingConfig, out: Path,
                 meta: dict[str, Any], parts: dict[str, Part]) -> None:
        self.client, self.study, self.tuning, self.cfg, self.out = client, study, tuning, cfg, out
        self.meta, self.parts = meta, parts
        self.running: dict[Any, tuple[Any, str | None]] = {}  # future -> (optuna Trial, worker asked for)

    def run(self) -> None:
        from distributed import wait

        remaining = self.tuning.trials - len(counted_trials(self.study))
        if remaining <= 0:
            logger.info("the study already has %d trials", self.tuning.trials)
            return
        logger.info("running %d trials (%d done before)", remaining, self.tuning.trials - remaining)
        self.client.wait_for_workers(1)
        try:
            while remaining > 0 or self.running:
                while remaining > 0 and len(self.running) < self._capacity():
                    self._submit()
                    remaining -= 1
                with contextlib.suppress(TimeoutError):  # no trial ended: look for new workers
                    wait(list(self.running), timeout=POLL_S, return_when="FIRST_COMPLETED")
                for future in [f for f in self.running if f.done()]:
                    self._finish(future)
        finally:
            for future in self.running:
                future.cancel()

    def _capacity(self) -> int:
        return max(len(gpu_workers(self.client)) or len(worker_resources(self.client)), 1)

    def _idle_worker(self) -> str | None:
        """A worker with no trial (CPU workers: one trial each, not one per thread)."""
        busy = {worker for _, worker in self.running.values()}
        idle = [w for w in self.client.scheduler_info(n_workers=-1)["workers"] if w not in busy]
        return idle[0] if idle else None

    def _submit(self) -> None:
        trial = self.study.ask()
        cfg = suggest_training(trial, self.tuning, self.cfg)
        gpu = bool(gpu_workers(self.client))
        worker = None if gpu else self._idle_worker()
        meta = {**self.meta, "training_config": cfg.model_dump(mode="json"),
                "tuning": {"study": str(self.out.resolve()), "trial": trial.number}}
        future = self.client.submit(
            run_trial, str(self.out), trial._trial_id, cfg, self.tuning, self.parts, meta,
            key=f"tune-trial-{trial.number}-{uuid.uuid4().hex[:8]}", pure=False,
            resources={"GPU": 1} if gpu else None, workers=[worker] if worker else None,
            allow_other_workers=worker is not None)  # Dask refuses it without workers= (no idle one)
        self.running[future] = (trial, worker)
        logger.info("trial %d started: %s", trial.number, _describe(trial.params))

    def _finish(self, future: Any) -> None:
        from optuna.trial import TrialState

        trial, _ = self.running.pop(future)
        try:
            result = future.result()
        except Exception as exc:  # noqa: BLE001 - a failed trial must not stop the search
            trial.set_user_attr("error", f"{type(exc).__name__}: {exc}"[:500])
            self.study.tell(trial, state=TrialState.FAIL)
            logger.warning("trial %d failed: %s: %s", trial.number, type(exc).__name__, exc)
            return
        for key in ("epochs", "worker", "start", "end"):
            trial.set_user_attr(key, result[key])
        if result["state"] == "pruned":
            self.study.tell(trial, state=TrialState.PRUNED)
        else:
            self._keep_if_best(result, trial.number)
            self.study.tell(trial, result["value"])
        logger.info("trial %d %s after %d epochs: val_loss %.4f on %s (%.0f s)", trial.number,
                    result["state"], result["epochs"], result["value"], result["worker"],
                    _seconds(result["start"], result["end"]))

    def _keep_if_best(self, result: dict[str, Any], number: int) -> None:
        bundle = Path(result["bundle"])
        try:
            best = self.study.best_value
        except ValueError:  # no complete trial yet
            best = np.inf
        if result["value"] < best:
            replace_atomically(bundle, self.out / BEST_MODEL)
            best_config = yaml.safe_dump({"training": read_meta(self.out / BEST_MODEL)["training_config"]},
                                         sort_keys=False)
            write_atomically(self.out / BEST_CONFIG, lambda tmp: tmp.write_text(best_config))
            logger.info("trial %d is the best so far: %s", number, self.out / BEST_MODEL)
        else:
            shutil.rmtree(bundle, ignore_errors=True)


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def _seconds(start: str, end: str) -> float:
    return (dt.datetime.fromisoformat(end) - dt.datetime.fromisoformat(start)).total_seconds()


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")


def run_trial(out: str, trial_id: int, cfg: TrainingConfig, tuning: TuningConfig, parts: dict[str, Part],
              meta: dict[str, Any]) -> dict[str, Any]:
    """Train one trial on a Dask worker, reporting each epoch to the study.

    Returns the state (``complete`` or ``pruned``), the best validation loss,
    the epochs run, the worker address, start/end times (UTC, ISO) and, for a
    complete trial, the folder of its bundle.
    """
    import optuna
    from distributed import get_worker

    start = _now()
    study = optuna.load_study(study_name=STUDY_NAME, storage=_storage(Path(out)), pruner=make_pruner(tuning))
    reporter = _reporter(optuna.trial.Trial(study, trial_id))
    bundle = tempfile.mkdtemp(prefix=".trial-", dir=out)
    os.chmod(bundle, 0o755)  # mkdtemp makes it private; it may become best-model/
    state = "complete"
    try:
        fit_bundle(parts, cfg, bundle, meta, callbacks=[reporter], threads=get_worker().state.nthreads)
    except optuna.TrialPruned:
        state = "pruned"
    finally:
        if state != "complete":
            shutil.rmtree(bundle, ignore_errors=True)
    return {"state": state, "value": min(reporter.losses), "epochs": len(reporter.losses),
            "worker": get_worker().address, "start": start, "end": _now(),
            "bundle": bundle if state == "complete" else None}


def _reporter(trial: Any) -> Any:
    """Keras callback: report the validation loss per epoch; raise TrialPruned when told."""
    import keras
    import optuna

    class Reporter(keras.callbacks.Callback):
        def __init__(self) -> None:
            super().__init__()
            self.losses: list[float] = []

        def on_epoch_end(self, epoch: int, logs: dict[str, float] | None = None) -> None:
            loss = float((logs or {})["val_loss"])
            if not np.isfinite(loss):
                raise FloatingPointError(f"validation loss is {loss} at epoch {epoch + 1}")
            self.losses.append(loss)
            trial.report(loss, step=epoch)  # 0-based: warmup_epochs = n_warmup_steps
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned at epoch {epoch + 1}")

    return Reporter()


# ---------------------------------------------------------------- report


def trial_table(study: Any) -> Any:
    """One row per counted trial: number, state, value, epochs, worker, start, end, parameters."""
    from astropy.table import MaskedColumn, Table

    trials = counted_trials(study)
    names = sorted({k for t in trials for k in t.params}, key=_param_order)
    rows = {"trial": [t.number for t in trials], "state": [t.state.name.lower() for t in trials],
            "value": [_best_value(t) for t in trials]}
    for key in ("epochs", "worker", "start", "end"):
        rows[key] = [t.user_attrs.get(key, "" if key != "epochs" else 0) for t in trials]
    table = Table(rows)
    table["value"].description = "best validation loss of the trial (failed: NaN)"
    table["epochs"].description = "epochs trained"
    table["start"].description = table["end"].description = "UTC, on the worker"
    for name in names:
        values = [t.params.get(name) for t in trials]
        kind = float if any(isinstance(v, float) for v in values) else int
        table[name] = MaskedColumn([kind(v) if v is not None else 0 for v in values],
                                   mask=[v is None for v in values])
    return table


def _best_value(trial: Any) -> float:
    """A trial's best validation loss: its value, for a pruned trial its best epoch, NaN if failed."""
    if trial.state.name == "PRUNED" and trial.intermediate_values:
        return min(trial.intermediate_values.values())
    return np.nan if trial.value is None else trial.value


def _param_order(name: str) -> tuple[int, str]:
    base = name.rsplit("_", 1)[0] if name[-1].isdigit() else name
    order = list(SEARCH_PARAMETERS)
    return (order.index(base) if base in order else len(order), name)


def write_report(study: Any, out: Path) -> Any:
    """Write ``trials.ecsv``, ``loss.png`` and ``importance.png``; return the table."""
    table = trial_table(study)
    write_output_table(table, out / TABLE_FILE, "tuning trials")
    plot_losses(table, out / "loss.png")
    plot_importances(study, out / "importance.png")
    logger.info("wrote %s (%d trials: %s)", out / TABLE_FILE, len(table),
                ", ".join(f"{(table['state'] == s).sum()} {s}" for s in ("complete", "pruned", "fail")))
    return table


def plot_losses(table: Any, path: Path) -> Path:
    """Validation loss against trial number, with the running best."""
    from surveydust.figures import subplots

    fig, ax = subplots(figsize=(6, 4))
    for state, marker in (("complete", "o"), ("pruned", "x")):
        rows = table[table["state"] == state]
        ax.plot(rows["trial"], rows["value"], marker, label=f"{state} ({len(rows)})", alpha=0.8)
    done = table[table["state"] == "complete"]
    if len(done):
        ax.step(done["trial"], np.minimum.accumulate(np.asarray(done["value"])), where="post", color="k",
                label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("validation loss")
    ax.legend()
    fig.tight_layout()
    return write_output_figure(fig, path, "tuning figure", dpi=120)


def plot_importances(study: Any, path: Path) -> Path | None:
    """Parameter importances (Optuna's PED-ANOVA over the complete trials); None with fewer than 2."""
    import optuna
    from optuna.trial import TrialState

    from surveydust.figures import subplots

    n_complete = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)))
    if n_complete < 2:
        logger.info("importance.png skipped: fewer than 2 complete trials")
        return None
    with warnings.catch_warnings():  # few trials per parameter value: said on the axis label instead
        warnings.simplefilter("ignore")
        importances = optuna.importance.get_param_importances(
            study, evaluator=optuna.importance.PedAnovaImportanceEvaluator())
    if not importances:
        return None
    fig, ax = subplots(figsize=(6, 0.4 * len(importances) + 1.5))
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel(f"importance (PED-ANOVA, normalised; {n_complete} complete trials)")
    fig.tight_layout()
    return write_output_figure(fig, path, "tuning figure", dpi=120)


__all__ = ["counted_trials", "make_pruner", "run_trial", "suggest_training", "trial_table", "tune",
           "write_report"]
