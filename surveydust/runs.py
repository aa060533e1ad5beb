"""Resumable runs: a run's work in numbered parts, each kept when its task finishes.

:func:`run_parts` is the one driver of every partition-wise job (catalogue tiles, SED fits
of sources): it locks the output, keeps the parts a killed run with the same inputs
finished, opens the Dask client, submits the rest, saves each part as it finishes and
hands the merged columns to the job's own ``finish``, so a re-run with the same inputs
and settings does only the rest; the output is locked while a run writes it.

While a run goes on, each finished part is ``part-NNNNNN.npz`` in a hidden
``.<name>.parts`` folder next to the output (with ``run.json``, the run's
token); the output itself appears (atomically) only when every part is done,
and the parts are then removed.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import numpy as np

from surveydust.errors import InputError
from surveydust.stores.base import may_be_alive, write_atomically

if TYPE_CHECKING:
    from surveydust.cluster import Compute

logger = logging.getLogger(__name__)
RUN_FILE = "run.json"
T = TypeVar("T")


class OutputLock:
    """An exclusive lock on an output path, held by this process (``.<name>.lock`` beside it).

    A second run on the same output is refused at once with one line naming the
    holder; a lock whose process is gone (same host, PID not alive) is stale
    and taken over.
    """

    def __init__(self, out: Path) -> None:
        self.path = out.with_name(f".{out.name}.lock")
        self.held = False

    def __enter__(self) -> Self:
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder is not None:
                    raise InputError(f"another surveydust run (pid {holder['pid']} on {holder['host']}) is "
                                     f"writing {self.path.name.removeprefix('.').removesuffix('.lock')}; "
                                     f"wait for it, or delete {self.path} if that run is dead") from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise InputError(f"cannot take the lock {self.path}")

    def _holder(self) -> dict[str, Any] | None:
        """The live holder of the lock, or None when the lock is stale or unreadable."""
        try:
            holder = json.loads(self.path.read_text())
            pid, host = int(holder["pid"]), str(holder["host"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return holder if may_be_alive(pid, host) else None

    def __exit__(self, *exc: object) -> None:
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False


class Parts:
    """The folder of finished parts of one run (keyed by the run's inputs and settings).

    Parts are written atomically; a part file that cannot be read (a killed
    write, a damaged disk) is deleted and its part done again.
    """

    def __init__(self, out: Path, token: str) -> None:
        self.path = out.with_name(f".{out.name}.parts")
        run = self.path / RUN_FILE
        if self.path.exists() and self._token(run) != token:
            shutil.rmtree(self.path)  # left by a run with other inputs or settings: start afresh
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomically(run, lambda tmp: tmp.write_text(json.dumps({"token": token})))

    @staticmethod
    def _token(run: Path) -> str | None:
        try:
            return json.loads(run.read_text()).get("token")
        except (OSError, ValueError, AttributeError):
            return None

    def _file(self, index: int) -> Path:
        return self.path / f"part-{index:06d}.npz"

    def done(self) -> set[int]:
        """Indices of the readable finished parts (unreadable ones are deleted)."""
        out = set()
        for p in self.path.glob("part-*.npz"):
            try:
                with np.load(p, allow_pickle=False) as z:
                    for k in z.files:
                        z[k]
            except Exception:  # noqa: BLE001 (zip, pickle and OS errors of a damaged part)
                p.unlink(missing_ok=True)
                continue
            out.add(int(p.stem.split("-")[1]))
        return out

    def save(self, index: int, columns: dict[str, np.ndarray]) -> None:
        write_atomically(self._file(index), lambda tmp: np.savez(tmp, **columns))

    def load_all(self) -> dict[str, np.ndarray]:
        parts = [dict(np.load(p, allow_pickle=False)) for p in sorted(self.path.glob("part-*.npz"))]
        keys = parts[0].keys() if parts else ()
        return {k: np.concatenate([p[k] for p in parts]) for k in keys}

    def remove(self) -> None:
        shutil.rmtree(self.path, ignore_errors=True)


class ResumableRun:
    """One resumable run writing ``out`` (None: a scratch folder, removed at the end).

    On entry the output is locked (:class:`OutputLock`) and its parts folder
    (beside ``out``; ``parts_suffix`` added to its name) opened for ``token``:
    ``done`` holds the parts a killed or failed run with the same token finished.
    :meth:`collect` saves each result as its task finishes; after a clean exit the
    parts are removed (after a failure they stay, for the next run).
    """

    def __init__(self, out: Path | None, token: str, *, scratch_prefix: str = "surveydust-run-",
                 parts_suffix: str = "") -> None:
        self.token = token
        self._scratch = tempfile.TemporaryDirectory(prefix=scratch_prefix) if out is None else None
        self.target = out if out is not None else Path(self._scratch.name) / "output.zarr"
        self._parts_of = Path(f"{self.target}{parts_suffix}")
        self._lock = OutputLock(self.target)
        self.parts: Parts | None = None
        self.done: set[int] = set()

    def __enter__(self) -> Self:
        try:
            self._lock.__enter__()
            self.parts = Parts(self._parts_of, self.token)
            self.done = self.parts.done()
        except BaseException:
            self._cleanup()
            raise
        return self

    def collect(self, futures: Mapping[int, Any], describe: Callable[[int, int, dict[str, np.ndarray]], str] | None
                = None) -> None:
        """Wait for the Dask ``futures`` (part index -> future of a dict of arrays), saving each
        result as its part as soon as it is done; ``describe(n_done, n_total, result)`` is logged."""
        from distributed import as_completed

        index = {future.key: i for i, future in futures.items()}
        for n, future in enumerate(as_completed(list(futures.values())), 1):
            result = future.result()
            self.parts.save(index[future.key], result)
            if describe is not None:
                logger.info("%s", describe(n, len(futures), result))

    def results(self) -> dict[str, np.ndarray]:
        """Every saved part's arrays, concatenated in part order."""
        return self.parts.load_all()

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        if kind is None and self.parts is not None:
            self.parts.remove()
        self._cleanup()

    def _cleanup(self) -> None:
        self._lock.__exit__(None, None, None)
        if self._scratch is not None:
            self._scratch.cleanup()


def run_parts(
    out: Path | None,
    inputs: Any,
    parts: list[int],
    submit: Callable[[Any, list[int], str], Mapping[int, Any]],
    finish: Callable[[dict[str, np.ndarray]], T],
    *,
    announce: Callable[[int, int], str],
    compute: Compute,
    describe: Callable[[], Callable[[int, int, dict[str, np.ndarray]], str]] | None = None,
    scratch_prefix: str = "surveydust-run-",
    parts_suffix: str = "",
) -> T:
    """Run a partition-wise job resumably: the one driver of every per-tile or per-source job.

    Parameters
    ----------
    out : the job's output (checked by the caller; locked here), None for a scratch run.
    inputs : everything the result depends on (tokenised with :func:`dask.base.tokenize`): a
        re-run with equal inputs keeps the parts a failed or killed run finished.
    parts : the indices of all parts.
    submit : ``submit(client, todo, token)`` -> ``{part index: future of a dict of arrays}``
        for the parts still to do (``token`` names the run's tasks).
    finish : ``finish(columns)`` -> the job's result, from every part's arrays concatenated in
        part order; called inside the lock, before the parts are removed (a failure keeps them).
    announce : ``announce(n_parts, n_done_before)`` -> the line logged before the work starts.
    describe : makes the progress line of each finished part (:meth:`ResumableRun.collect`).
    compute : where to compute (:class:`surveydust.cluster.Compute`); the client opens only when
        parts are left to do.
    """
    import dask.base

    token = dask.base.tokenize(inputs)
    with ResumableRun(out, token, scratch_prefix=scratch_prefix, parts_suffix=parts_suffix) as run:
        todo = [i for i in parts if i not in run.done]
        logger.info("%s", announce(len(parts), len(parts) - len(todo)))
        if todo:
            with compute.open() as client:
                run.collect(submit(client, todo, token),
                            describe() if describe is not None and compute.progress else None)
        return finish(run.results())


__all__ = ["RUN_FILE", "OutputLock", "Parts", "ResumableRun", "run_parts"]
