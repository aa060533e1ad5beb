"""The output-path rule on the real CLI: a run replaces only its own outputs (with --overwrite),
never writes over or into its inputs or into a store, resolves symlinks first, and ingest
takes the run lock and refuses one mosaic given for two bands. Inputs and user files are
checksummed before and after every refusal."""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import dask
import numpy as np
import pytest
from astropy.io import fits
from astropy.table import Table
from astropy.wcs import WCS
from click.testing import CliRunner

from surveydust.cli import main
from surveydust.stores.base import check_output_path, existing_kind

SHIPPED_ONE_BAND = Path(__file__).resolve().parents[1] / "surveydust" / "data" / "bundles" / "one-band"


def digest(path: Path) -> str:
    """SHA-256 of a file, or of every file (and its relative name) under a folder."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(str(f.relative_to(path) if path.is_dir() else f.name).encode())
        h.update(f.read_bytes())
    return h.hexdigest()


def leftovers(folder: Path) -> list[str]:
    """Hidden temporary, lock, parts and replaced-output entries a run left in ``folder``."""
    return sorted(p.name for p in folder.iterdir()
                  if any(tag in p.name for tag in (".old-", ".partial-", ".lock", ".parts")))


@pytest.fixture
def cli(client, monkeypatch):
    """``surveydust`` in this process (CliRunner) on the session's warm cluster (--cluster address)."""
    monkeypatch.setattr(logging.getLogger("surveydust"), "handlers", [])  # main() adds one per call

    def invoke(*args: object) -> object:
        cluster = ["--cluster", "address"] if args[0] in ("ingest-mosaic", "run-catalogue") else []
        with dask.config.set({"surveydust.cluster.profiles.address.address": client.scheduler.address}):
            return CliRunner().invoke(main, [str(a) for a in args] + cluster)

    return invoke


def refused(result: object, message: str) -> str:
    """Assert one ``Error:`` line naming ``message``, a non-zero exit and no traceback."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code != 0, result.output
    assert "Traceback" not in result.output
    assert [line for line in lines if line.startswith("Error:")] == [lines[-1]], result.output
    assert message in lines[-1], result.output
    return lines[-1]


@pytest.fixture(scope="module")
def field(tmp_path_factory, client):
    """A real 256 x 256 six-band mosaic store with two galaxies, and a user's sources table."""
    from surveydust.simulate import simulate_field
    from surveydust.stores.mosaic import ingest_mosaic

    tmp = tmp_path_factory.mktemp("field")
    files = simulate_field(tmp / "fits", n_galaxies=2, shape=(256, 256), seed=1)
    store = ingest_mosaic(tmp / "field.zarr", {b: str(p) for b, p in files.bands.items()}, client=client,
                          progress=False)
    truth = Table.read(files.truth)
    sources = tmp / "sources.fits"
    Table({"ra": truth["ra"], "dec": truth["dec"]}).write(sources)
    return {"store": store, "sources": sources, "truth": files.truth, "bands": files.bands}


@pytest.fixture(scope="module")
def catalogue(tmp_path_factory, field, client):
    """A catalogue store and its FITS export, made by run_catalogue from the field."""
    from surveydust.infer import run_catalogue

    tmp = tmp_path_factory.mktemp("catalogue")
    run_catalogue(field["store"], tmp / "cat.zarr", sources=field["sources"], export_to=tmp / "cat.fits",
                  client=client, progress=False)
    return tmp / "cat.zarr"


def test_the_rule_on_inputs_links_and_stores(tmp_path) -> None:
    """The one rule, called directly: an input, a path inside an input folder, a store holding an
    input, a path inside a store, a link to an output and a link to nothing."""
    inp = tmp_path / "in.fits"
    inp.write_text("mine")
    folder = tmp_path / "inputs"
    folder.mkdir()
    with pytest.raises(ValueError, match="lies inside .*inputs, an input of this run"):
        check_output_path(folder / "cat.zarr", False, "catalogue", inputs=[folder, None])
    store = tmp_path / "cat.zarr"
    store.mkdir()
    (store / "zarr.json").write_text('{"zarr_format": 3, "attributes": {"store_kind": "catalogue"}}')
    with pytest.raises(ValueError, match="cat.zarr is an input of this run"):
        check_output_path(store, True, "catalogue", inputs=[store])
    (store / "notes.fits").write_text("an input put inside an old store")
    with pytest.raises(FileExistsError, match="holds .*notes.fits, an input of this run"):
        check_output_path(store, True, "catalogue", inputs=[store / "notes.fits"])
    with pytest.raises(ValueError, match="lies inside the surveydust catalogue store"):
        check_output_path(store / "sub" / "x.ecsv", True, "comparison")
    assert not (store / "sub").exists()
    link = tmp_path / "link.zarr"
    link.symlink_to(store)
    assert check_output_path(link, True, "catalogue") == store.resolve()
    dead = tmp_path / "dead.zarr"
    dead.symlink_to(tmp_path / "nothing.zarr")
    with pytest.raises(FileNotFoundError, match="symbolic link to .*nothing.zarr, which does not exist"):
        check_output_path(dead, True, "catalogue")
    assert (inp.read_text(), existing_kind(inp), existing_kind(store)) == ("mine", None, "catalogue")


def test_an_export_never_replaces_an_input_or_a_user_file(tmp_path, field, catalogue, cli) -> None:
    """The issue's case (--sources cat/mysrc.fits --out cat/mysrc.zarr --format fits --overwrite),
    a user file at the export path, and a surveydust export given as the sources: one Error line
    each, before any work, every file unchanged."""
    cat = tmp_path / "cat"
    cat.mkdir()
    mysrc = shutil.copy(field["sources"], cat / "mysrc.fits")
    notes = cat / "notes.ecsv"
    notes.write_text("# my own table\n")
    exported = shutil.copy(catalogue.with_suffix(".fits"), cat / "old.fits")  # a surveydust export
    cases = [(mysrc, "mysrc.zarr", "fits", "mysrc.fits exists and is not a surveydust output"),
             (mysrc, "notes.zarr", "ecsv", "notes.ecsv exists and is not a surveydust output"),
             (exported, "old.zarr", "fits", "old.fits is an input of this run")]
    before = {p: digest(p) for p in (mysrc, notes, exported)}
    for sources, out, fmt, message in cases:
        result = cli("run-catalogue", field["store"], "--sources", sources, "--out", cat / out, "--format", fmt,
                     "--overwrite", "--quiet")
        refused(result, message)
        assert not (cat / out).exists()
    assert {p: digest(p) for p in before} == before
    assert sorted(p.name for p in cat.iterdir()) == ["mysrc.fits", "notes.ecsv", "old.fits"]


def test_own_outputs_are_replaced_through_a_symlink_only_with_overwrite(tmp_path, field, catalogue, cli) -> None:
    """--out a link to an earlier catalogue, --format fits --overwrite: the link's target and its
    export are replaced (the link kept, nothing left behind); without --overwrite, and for a link to
    nothing, one Error line."""
    from surveydust.stores.catalogue import open_catalogue

    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(catalogue, runs / "cat.zarr")
    shutil.copy(catalogue.with_suffix(".fits"), runs / "cat.fits")
    old_id = open_catalogue(runs / "cat.zarr").attrs["store_id"]
    old_export = digest(runs / "cat.fits")
    link = tmp_path / "latest.zarr"
    link.symlink_to(runs / "cat.zarr")
    sources = digest(field["sources"])
    args = ("run-catalogue", field["store"], "--sources", field["sources"], "--out", link, "--format", "fits")

    refused(cli(*args, "--quiet"), "cat.zarr already exists; pass overwrite=True (--overwrite)")
    assert open_catalogue(runs / "cat.zarr").attrs["store_id"] == old_id
    result = cli(*args, "--overwrite", "--quiet")
    assert result.exit_code == 0, result.output
    assert link.is_symlink() and link.resolve() == (runs / "cat.zarr").resolve()
    new = open_catalogue(link)
    assert new.attrs["store_id"] != old_id and new.sizes["source"] == 2
    assert digest(runs / "cat.fits") != old_export and existing_kind(runs / "cat.fits") == "catalogue"
    assert fits.getheader(runs / "cat.fits", 1)["SDUSTOUT"] == "catalogue"
    assert leftovers(runs) == [] and leftovers(tmp_path) == []
    assert digest(field["sources"]) == sources

    dead = tmp_path / "dead.zarr"
    dead.symlink_to(tmp_path / "nothing.zarr")
    refused(cli("run-catalogue", field["store"], "--out", dead, "--overwrite", "--quiet"),
            "is a symbolic link to")
    assert dead.is_symlink() and not (tmp_path / "nothing.zarr").exists()


def test_nothing_is_written_into_a_store_a_bundle_or_an_input(tmp_path, field, catalogue, cli) -> None:
    """--out inside the input mosaic store, compare into its catalogue, evaluate into a bundle:
    refused; and a store holding another surveydust output (left by an older version) is not
    replaced by ingest --overwrite."""
    store, bundle = field["store"], shutil.copytree(SHIPPED_ONE_BAND, tmp_path / "bundle")
    before = {p: digest(p) for p in (store, catalogue, bundle)}
    refused(cli("run-catalogue", store, "--out", store / "cat.zarr", "--quiet"), "lies inside")
    refused(cli("compare", catalogue, "--out", catalogue / "cmp"), "lies inside")
    refused(cli("evaluate", bundle, store, "--out", bundle / "eval"), "lies inside")
    assert {p: digest(p) for p in before} == before

    old = shutil.copytree(store, tmp_path / "base3.zarr")
    shutil.copytree(catalogue, old / "cat.zarr")  # what the old version let --out base3.zarr/cat.zarr do
    kept = digest(old)
    refused(cli("ingest-mosaic", old, "--band", f"F444W={field['bands']['F444W']}", "--overwrite", "--quiet"),
            "holds another surveydust output (cat.zarr, a catalogue store)")
    assert digest(old) == kept


def test_compare_replaces_only_its_own_files_and_only_with_overwrite(tmp_path, catalogue, cli) -> None:
    cmp = tmp_path / "cmp"
    assert cli("compare", catalogue, "--out", cmp).exit_code == 0
    first = {p.name: digest(p) for p in cmp.iterdir()}
    assert "comparison.ecsv" in first and all(existing_kind(cmp / n) == "comparison" for n in first)
    refused(cli("compare", catalogue, "--out", cmp), "comparison.ecsv already exists; pass overwrite=True")
    assert {p.name: digest(p) for p in cmp.iterdir()} == first
    result = cli("compare", catalogue, "--out", cmp, "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in cmp.iterdir()) == sorted(first)

    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "comparison.ecsv").write_text("# my comparison\n")
    kept = digest(mine)
    refused(cli("compare", catalogue, "--out", mine, "--overwrite"),
            "comparison.ecsv exists and is not a surveydust output")
    assert digest(mine) == kept and [p.name for p in mine.iterdir()] == ["comparison.ecsv"]


def test_the_demo_checks_every_output_before_it_starts(tmp_path, cli) -> None:
    """A user's skill.ecsv where the demo writes its own: refused at once, without and with
    --overwrite; nothing is simulated or written."""
    demo = tmp_path / "demo"
    demo.mkdir()
    (demo / "skill.ecsv").write_text("# my skill table\n")
    kept = digest(demo)
    refused(cli("run-catalogue", "--demo", "--out", demo / "catalogue.zarr", "--quiet"),
            "skill.ecsv already exists")
    refused(cli("run-catalogue", "--demo", "--out", demo / "catalogue.zarr", "--overwrite", "--quiet"),
            "skill.ecsv exists and is not a surveydust output")
    assert digest(demo) == kept and [p.name for p in demo.iterdir()] == ["skill.ecsv"]


def test_evaluate_refuses_a_users_files_before_any_work(tmp_path, field, cli) -> None:
    """A user's table.csv in --out: refused without and with --overwrite, before the store is read."""
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "table.csv").write_text("target,metric\nA_V,MAE\n")
    kept = digest(mine)
    args = ("evaluate", SHIPPED_ONE_BAND, field["store"], "--out", mine, "--no-baseline")
    refused(cli(*args), "table.csv already exists")
    refused(cli(*args, "--overwrite"), "table.csv exists and is not a surveydust output")
    assert digest(mine) == kept and [p.name for p in mine.iterdir()] == ["table.csv"]


@pytest.mark.slow
def test_evaluate_replaces_only_its_own_files_and_only_with_overwrite(tmp_path, one_band_store, cli) -> None:
    """A folder evaluate wrote: refused without --overwrite, replaced with it (the CSV known by
    the ECSV's mark)."""
    store = one_band_store
    ev = tmp_path / "eval"
    result = cli("evaluate", SHIPPED_ONE_BAND, store, "--out", ev, "--no-baseline")
    assert result.exit_code == 0, result.output
    first = {p.name: digest(p) for p in ev.iterdir()}
    assert {"table.csv", "table.ecsv", "calibration.png"} <= set(first)
    assert all(existing_kind(ev / n) == "evaluation" for n in first)
    refused(cli("evaluate", SHIPPED_ONE_BAND, store, "--out", ev, "--no-baseline"), "already exists")
    assert {p.name: digest(p) for p in ev.iterdir()} == first
    result = cli("evaluate", SHIPPED_ONE_BAND, store, "--out", ev, "--no-baseline", "--overwrite")
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in ev.iterdir()) == sorted(first)


# ---------------------------------------------------------------- ingest: lock and band checks


def write_band(path: Path, data: np.ndarray, filter_name: str | None = None) -> Path:
    """A 2-D nJy image with a TAN WCS (0.03"/px) and an optional FILTER keyword."""
    w = WCS(naxis=2)
    w.wcs.ctype = ["RA---TAN", "DEC--TAN"]
    w.wcs.crval, w.wcs.crpix, w.wcs.cdelt = [53.1, -27.8], [32.5, 32.5], [-0.03 / 3600, 0.03 / 3600]
    header = w.to_header()
    header["BUNIT"] = "nJy"
    if filter_name:
        header["FILTER"] = filter_name
    fits.PrimaryHDU(data.astype(np.float32), header).writeto(path)
    return path


@pytest.fixture
def bands(tmp_path) -> dict[str, Path]:
    rng = np.random.default_rng(5)
    return {b: write_band(tmp_path / f"{b.lower()}.fits", rng.normal(1.0, 0.1, (64, 64)), b)
            for b in ("F356W", "F444W")}


def test_a_second_ingest_on_one_output_is_refused(tmp_path, bands, cli) -> None:
    """Another process (alive) holds the output's lock, as a running ingest does: one Error line."""
    out = tmp_path / "m.zarr"
    holder = subprocess.Popen([sys.executable, "-c", ("import sys; from pathlib import Path; "
                                                      "from surveydust.runs import OutputLock\n"
                                                      f"with OutputLock(Path({str(out)!r})):\n"
                                                      " print('held', flush=True); sys.stdin.read()")],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        refused(cli("ingest-mosaic", out, "--band", f"F444W={bands['F444W']}", "--quiet"),
                f"another surveydust run (pid {holder.pid}")
        assert not out.exists()
    finally:
        holder.communicate("", timeout=30)
    result = cli("ingest-mosaic", out, "--band", f"F444W={bands['F444W']}", "--quiet")
    assert result.exit_code == 0, result.output
    assert leftovers(tmp_path) == []


def test_one_mosaic_for_two_bands_is_refused(tmp_path, bands, cli) -> None:
    """The same file, and a copy of it under another name, given for two bands: one Error line,
    no store, the inputs unchanged."""
    f444w = bands["F444W"]
    copy = shutil.copy(f444w, tmp_path / "copy.fits")
    before = {p: digest(p) for p in (f444w, copy)}
    for other, message in ((f444w, "bands F356W and F444W are given the same file f444w.fits"),
                           (copy, "bands F356W and F444W have the same science data")):
        out = tmp_path / "m.zarr"
        refused(cli("ingest-mosaic", out, "--band", f"F356W={other}", "--band", f"F444W={f444w}", "--quiet"),
                message)
        assert not out.exists() and leftovers(tmp_path) == []
    assert {p: digest(p) for p in before} == before


def test_a_filter_keyword_naming_another_band_is_a_warning(tmp_path, bands, cli) -> None:
    from surveydust.stores.mosaic import open_mosaic

    other = write_band(tmp_path / "labelled_f444w.fits", np.full((64, 64), 2.0), "F444W")
    result = cli("ingest-mosaic", tmp_path / "m.zarr", "--band", f"F356W={other}", "--band",
                 f"F444W={bands['F444W']}", "--quiet")
    assert result.exit_code == 0, result.output
    assert "F356W: the FILTER keyword of labelled_f444w.fits says F444W" in result.output
    assert list(open_mosaic(tmp_path / "m.zarr")["band"].values) == ["F356W", "F444W"]
