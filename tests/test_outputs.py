"""Outputs are replaced only when they are surveydust outputs of the kind being written."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from surveydust.cli import main
from surveydust.stores.base import check_output_path, existing_kind


def _store(path, kind):
    path.mkdir()
    (path / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group",
                                                "attributes": {"store_kind": kind}}))
    return path


def test_overwrite_replaces_only_the_same_kind(tmp_path) -> None:
    cat = _store(tmp_path / "cat.zarr", "catalogue")
    assert check_output_path(cat, True, "catalogue") == cat
    with pytest.raises(FileExistsError, match="is a surveydust mosaic store, not a catalogue store"):
        check_output_path(_store(tmp_path / "field.zarr", "mosaic"), True, "catalogue")
    mine = tmp_path / "my_files"
    mine.mkdir()
    (mine / "notes.txt").write_text("precious")
    with pytest.raises(FileExistsError, match="is not a surveydust output, not a catalogue store"):
        check_output_path(mine, True, "catalogue")
    assert (mine / "notes.txt").read_text() == "precious"
    assert existing_kind(tmp_path / "missing") is None


@pytest.fixture(scope="module")
def tiny_mosaic(tmp_path_factory, client):
    """A real 256 x 256 six-band mosaic store with two galaxies."""
    from surveydust.simulate import simulate_field
    from surveydust.stores.mosaic import ingest_mosaic

    tmp = tmp_path_factory.mktemp("tiny")
    files = simulate_field(tmp / "fits", n_galaxies=2, shape=(256, 256), seed=1)
    return ingest_mosaic(tmp / "field.zarr", {b: str(p) for b, p in files.bands.items()}, client=client,
                         progress=False)


def test_cli_overwrite_refuses_a_folder_of_user_files(tmp_path, tiny_mosaic) -> None:
    """run-catalogue --overwrite onto a user's folder or onto its own input mosaic: one
    Error line, non-zero exit, both left as they were."""
    from surveydust.stores.mosaic import open_mosaic

    mosaic = tiny_mosaic
    mine = tmp_path / "results"
    mine.mkdir()
    (mine / "paper.tex").write_text("draft")
    for out, kind in ((mine, "is not a surveydust output"), (mosaic, "is a surveydust mosaic store")):
        result = CliRunner().invoke(main, ["run-catalogue", str(mosaic), "--out", str(out), "--overwrite"])
        assert result.exit_code != 0
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert lines[-1].startswith("Error:") and kind in lines[-1], result.output
    assert (mine / "paper.tex").read_text() == "draft"
    assert open_mosaic(mosaic).sizes["band"] == 6


def test_a_field_without_sources_writes_an_empty_catalogue(tmp_path, tiny_mosaic, client) -> None:
    from surveydust.infer import run_catalogue
    from surveydust.stores.catalogue import open_catalogue

    cat = run_catalogue(tiny_mosaic, tmp_path / "cat.zarr", client=client, progress=False, threshold=1e6,
                        export_to=tmp_path / "cat.ecsv")
    assert cat.sizes["source"] == 0
    assert open_catalogue(tmp_path / "cat.zarr").sizes["source"] == 0
    assert (tmp_path / "cat.ecsv").is_file() and not list(tmp_path.glob(".cat.zarr.*"))


def test_a_second_run_on_the_same_output_is_refused(tmp_path) -> None:
    from surveydust.runs import OutputLock

    out = tmp_path / "cat.zarr"
    with OutputLock(out), \
            pytest.raises(ValueError, match=r"another surveydust run \(pid \d+ on .*\) is writing cat.zarr"), \
            OutputLock(out):
        pass
    with OutputLock(out):  # released on exit: the next run may start
        pass
    assert not (tmp_path / ".cat.zarr.lock").exists()


def test_a_stale_lock_of_a_dead_process_is_taken_over(tmp_path) -> None:
    import socket
    import subprocess
    import sys

    from surveydust.runs import OutputLock

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True)
    lock = tmp_path / ".cat.zarr.lock"
    lock.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with OutputLock(tmp_path / "cat.zarr") as held:
        assert held.held
    lock.write_text("")  # an empty lock file (killed while writing it) is stale too
    with OutputLock(tmp_path / "cat.zarr"):
        pass


def test_damaged_tile_parts_are_redone_and_an_empty_run_file_does_not_block(tmp_path) -> None:
    import numpy as np

    from surveydust.runs import RUN_FILE, Parts

    out = tmp_path / "cat.zarr"
    parts = Parts(out, "token-a")
    parts.save(0, {"x": np.arange(3.0)})
    parts.save(1, {"x": np.arange(2.0)})
    (parts.path / "part-000001.npz").write_bytes(b"PK\x03\x04 truncated")
    assert parts.done() == {0}
    (parts.path / RUN_FILE).write_text("")  # a run killed while writing run.json
    again = Parts(out, "token-a")
    assert again.done() == set() and (again.path / RUN_FILE).read_text()


def _chunk_files(store, array):
    return sorted(p for p in (store / array / "c").rglob("*") if p.is_file())


def test_a_store_with_a_lost_chunk_is_refused_in_one_line(tmp_path, tiny_mosaic) -> None:
    """A chunk file deleted from a complete store (a half-copied folder, a disk fault) would
    read as NaN: the chunk counts in the completion record catch it before any work."""
    import shutil

    from surveydust.stores.mosaic import open_mosaic

    store = tmp_path / "field.zarr"
    shutil.copytree(tiny_mosaic, store)
    recorded = open_mosaic(store).attrs["chunk_counts"]
    assert recorded["sci"] == len(_chunk_files(store, "sci")) > 1
    _chunk_files(store, "sci")[1].unlink()
    result = CliRunner().invoke(main, ["run-catalogue", str(store), "--out", str(tmp_path / "cat.zarr")])
    assert result.exit_code != 0
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error:"), result.output
    assert f"is damaged: array 'sci' has {recorded['sci'] - 1} of its {recorded['sci']} chunk files" in lines[0]
    assert not (tmp_path / "cat.zarr").exists()


def test_a_corrupt_chunk_is_named_in_one_line(tmp_path, tiny_mosaic) -> None:
    import shutil

    store = tmp_path / "field.zarr"
    shutil.copytree(tiny_mosaic, store)
    chunk = _chunk_files(store, "err")[0]
    chunk.write_bytes(b"\x00garbage" * 64)
    result = CliRunner().invoke(main, ["run-catalogue", str(store), "--out", str(tmp_path / "cat.zarr"),
                                       "--workers", "1"])
    assert result.exit_code != 0
    lines = [line for line in result.output.strip().splitlines() if line.startswith("Error:")]
    assert len(lines) == 1 and "Traceback" not in result.output, result.output
    assert "is damaged: a chunk of 'err' in y 0:256, x 0:256 cannot be read" in lines[0], lines[0]
    assert not (tmp_path / "cat.zarr").exists()


def test_a_partial_store_left_by_a_killed_run_is_removed_by_the_next_write(tmp_path) -> None:
    """SIGKILL (or a lost node) leaves the hidden .partial folder of an atomic write; the next
    write of that output removes it when its process is gone, and leaves a live writer's alone."""
    import socket
    import subprocess
    import sys

    import numpy as np
    import xarray as xr

    from surveydust.stores.catalogue import open_catalogue, write_catalogue

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True,
                          check=True)
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        host = socket.gethostname()
        stale = tmp_path / f".cat.zarr.partial-{host}-{int(dead.stdout)}-0badf00d"
        running = tmp_path / f".cat.zarr.partial-{host}-{live.pid}-5eedf00d"
        for folder in (stale, running):
            folder.mkdir()
            (folder / "zarr.json").write_text("{}")
        ds = xr.Dataset({"x": ("source", np.arange(3.0))}, coords={"source": np.arange(3)})
        write_catalogue(ds, tmp_path / "cat.zarr", overwrite=False)
        assert sorted(tmp_path.glob(".cat.zarr.partial-*")) == [running]  # the stale one and its own are gone
        assert list(open_catalogue(tmp_path / "cat.zarr")["x"].values) == [0.0, 1.0, 2.0]
    finally:
        live.kill()
