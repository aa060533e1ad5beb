"""The Dask dashboard of a real surveydust run, seen in headless Chromium.

A two-worker LocalCluster from ``get_client("local")`` (which prints
``Dask dashboard: <url>``); the printed link's ``/status`` page is opened in
headless Chromium (Debian package ``chromium``, installed with apt-get when
missing; the test skips when that is impossible) *before* the run starts,
because the scheduler records the task stream only once a dashboard page (or
``Client.get_task_stream``) has asked for it. Then ``run_catalogue`` runs on
the demo field while the page is open. Bokeh draws on a canvas, so the task
names are read, through the Chrome DevTools protocol, from the Bokeh document
that the page received over its websocket: the task stream's data source must
hold ``catalogue-tile`` rectangles with keys ``catalogue-tile-<run>-<n>``. A
screenshot of the page is kept in ``tests/artefacts/dashboard.png``
(git-ignored).

Set ``SURVEYDUST_NO_APT=1`` to skip instead of installing Chromium, or
``CHROMIUM=/path/to/chrome`` to use another build.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import psutil
import pytest

from surveydust.bundle import richest_bundle
from surveydust.cluster import get_client
from surveydust.demo import make_demo_field
from surveydust.infer import _predictor, run_catalogue

pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]  # the one-time apt-get install of Chromium included

ARTEFACTS = Path(__file__).resolve().parents[1] / "artefacts"
SCREENSHOT = ARTEFACTS / "dashboard.png"
WINDOW = (1400, 900)
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run", "--no-default-browser-check",
                  "--hide-scrollbars", f"--window-size={WINDOW[0]},{WINDOW[1]}"]
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
TILE_KEY = re.compile(r"^catalogue-tile-[0-9a-f]{8}-\d+$")
LINK = re.compile(r"^Dask dashboard: (\S+)$", re.MULTILINE)
FIELD_PIX = 640
TILE_PIX = 256  # 3 x 3 tiles (the demo's), as in test_infer
N_TILES = 9

# Read, in the page, the task stream's rectangles from the Bokeh document(s) it holds.
TASK_STREAM_JS = """
(() => {
  const B = window.Bokeh;
  if (!B || !B.documents || !B.documents.length) return {ready: false};
  const col = (data, name) => {
    const v = data instanceof Map ? data.get(name) : data[name];
    return v === undefined ? undefined : Array.from(v, String);
  };
  const out = {ready: true, titles: [], names: [], keys: []};
  for (const doc of B.documents) {
    for (const m of doc.all_models) {
      if (m.title && typeof m.title.text === "string") out.titles.push(m.title.text);
      if (!m.data) continue;
      const names = col(m.data, "name"), keys = col(m.data, "key"), workers = col(m.data, "worker");
      if (names && keys && workers) {
        out.names.push(...names);
        out.keys.push(...keys);
      }
    }
  }
  return out;
})()
"""


# ---------------------------------------------------------------- Chromium


def _find_chromium() -> str | None:
    given = os.environ.get("CHROMIUM")
    if given:
        return shutil.which(given)
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def _apt_install_chromium() -> str:
    """Install Debian's ``chromium`` with apt-get; return why not, or ``""`` on success."""
    if os.environ.get("SURVEYDUST_NO_APT"):
        return "SURVEYDUST_NO_APT is set"
    if shutil.which("apt-get") is None:
        return "there is no apt-get on this machine"
    if os.geteuid() != 0:
        return "apt-get needs root and the tests do not run as root"
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "--no-install-recommends", "chromium"]
    last = ""
    for command in (install, ["apt-get", "update", "-q"], install):
        try:
            done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=420, check=False)
        except subprocess.TimeoutExpired:
            return f"`{' '.join(command)}` took more than 420 s"
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or [f"exit status {done.returncode}"]
        if done.returncode == 0 and command is install:
            return ""
    return f"`apt-get install chromium` failed: {last[0]}"


@pytest.fixture(scope="module")
def chromium() -> str:
    """Path of a Chromium binary (installed with apt-get once, if missing)."""
    path = _find_chromium()
    if path is None:
        why = _apt_install_chromium()
        path = _find_chromium()
        if path is None:
            pytest.skip(f"headless Chromium is not available ({why or 'installed, but not on PATH'}); "
                        "install the Debian package `chromium` to run this test")
    return path


class DevTools:
    """A minimal Chrome DevTools protocol client (commands only, events are skipped)."""

    def __init__(self, ws) -> None:
        self.ws = ws
        self.n = 0

    async def call(self, method: str, **params):
        self.n += 1
        await self.ws.write_message(json.dumps({"id": self.n, "method": method, "params": params}))
        while True:
            message = await self.ws.read_message()
            if message is None:
                raise RuntimeError(f"the DevTools connection closed during {method}")
            reply = json.loads(message)
            if reply.get("id") == self.n:
                if "error" in reply:
                    raise RuntimeError(f"DevTools {method}: {reply['error']}")
                return reply["result"]

    async def evaluate(self, expression: str):
        result = await self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"page script failed: {result['exceptionDetails']}")
        return result["result"].get("value")


@contextlib.contextmanager
def headless_chromium(binary: str, profile: Path):
    """Start Chromium with a DevTools port on loopback; yield the page's websocket URL."""
    profile.mkdir(parents=True, exist_ok=True)
    log = open(profile / "chromium.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([binary, *CHROMIUM_FLAGS, "--remote-debugging-address=127.0.0.1",
                             "--remote-debugging-port=0", f"--user-data-dir={profile}", "about:blank"],
                            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 60
        while not (port_file.is_file() and port_file.read_text().strip()):
            if proc.poll() is not None or time.monotonic() > deadline:
                log.flush()
                tail = (profile / "chromium.log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"Chromium did not open its DevTools port (exit {proc.poll()}):\n{tail}")
            time.sleep(0.1)
        port = int(port_file.read_text().split()[0])
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as reply:
            targets = json.load(reply)
        yield next(t["webSocketDebuggerUrl"] for t in targets if t.get("type") == "page")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, 15)  # Chromium and its helper processes, which it started
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(timeout=10)
        log.close()


# ---------------------------------------------------------------- the cluster


@pytest.fixture(scope="module")
def dashboard_cluster():
    """An own two-worker LocalCluster (its task stream starts empty) and the link it printed."""
    printed = io.StringIO()
    with contextlib.redirect_stderr(printed):
        client = get_client("local", workers=2)
    sys.stderr.write(printed.getvalue())
    with client:
        found = LINK.findall(printed.getvalue())
        assert found, f"get_client printed no dashboard link: {printed.getvalue()!r}"
        yield client, found[-1]


def _listening(process: psutil.Process) -> list[tuple[str, int]]:
    connections = getattr(process, "net_connections", process.connections)
    return [c.laddr[:2] for c in connections(kind="inet") if c.status == psutil.CONN_LISTEN]


def test_local_scheduler_and_dashboard_listen_on_loopback_only(dashboard_cluster) -> None:
    client, link = dashboard_cluster
    assert link == client.dashboard_link
    url = urlsplit(link)
    assert url.scheme == "http" and url.hostname == "127.0.0.1" and url.path == "/status", link
    assert client.scheduler.address.startswith("tcp://127.0.0.1:"), client.scheduler.address
    workers = client.scheduler_info(n_workers=-1)["workers"]
    assert len(workers) == 2 and all(a.startswith("tcp://127.0.0.1:") for a in workers), list(workers)

    listeners = client.run_on_scheduler(lambda dask_scheduler: [lsn.listen_address
                                                                for lsn in dask_scheduler.listeners])
    assert listeners and all(a.startswith("tcp://127.0.0.1:") for a in listeners), listeners
    with urllib.request.urlopen(link, timeout=10) as reply:
        assert reply.status == 200

    # every listening socket of this process (scheduler, dashboard, nannies) and of the worker
    # processes is on loopback: nothing binds 0.0.0.0 or a public interface
    processes = [psutil.Process(), *(psutil.Process(pid) for pid in client.run(os.getpid).values())]
    listening = {(p.pid, *addr) for p in processes for addr in _listening(p)}
    scheduler_port = int(client.scheduler.address.rsplit(":", 1)[1])
    assert {(psutil.Process().pid, "127.0.0.1", port) for port in (url.port, scheduler_port)} <= listening
    public = sorted(x for x in listening if x[1] not in ("127.0.0.1", "::1"))
    assert not public, f"sockets listening beyond loopback (pid, host, port): {public}"


# ---------------------------------------------------------------- the browser


def _png_is_a_picture(path: Path) -> np.ndarray:
    import matplotlib.image as mpimg

    assert path.stat().st_size > 20_000, f"{path} is only {path.stat().st_size} bytes"
    image = mpimg.imread(path)
    assert image.shape[:2] == (WINDOW[1], WINDOW[0]), image.shape
    rgb = image[..., :3].reshape(-1, 3)
    assert rgb.std(axis=0).max() > 0.05, "the screenshot is (almost) one colour"
    assert len(np.unique(np.round(rgb * 255).astype(np.uint8), axis=0)) > 50
    return image


async def _watch_run(ws_url: str, status_url: str, start_run, run_done: threading.Event,
                     timeout_s: float) -> tuple[dict, bytes | None, dict[str, float]]:
    """Open the status page, then start the run; screenshot once its first tiles are drawn.

    Returns the task stream as the page holds it after the run, the PNG, and timings.
    """
    from tornado.websocket import websocket_connect

    ws = await websocket_connect(ws_url, max_message_size=64 * 2**20)
    try:
        tools = DevTools(ws)
        await tools.call("Emulation.setDeviceMetricsOverride", width=WINDOW[0], height=WINDOW[1],
                         deviceScaleFactor=1, mobile=False)
        t0 = time.monotonic()
        await tools.call("Page.navigate", url=status_url)
        while not (page := await tools.evaluate(TASK_STREAM_JS) or {}).get("ready"):
            assert time.monotonic() < t0 + 60, f"the Bokeh app at {status_url} did not load"
            await asyncio.sleep(0.25)
        assert "Task Stream" in page["titles"], page["titles"]
        timings = {"page_load_s": time.monotonic() - t0}
        t0 = time.monotonic()
        start_run()
        shot, ended = None, None
        while time.monotonic() < t0 + timeout_s:
            page = await tools.evaluate(TASK_STREAM_JS)
            if shot is None and any(k.startswith("catalogue-tile") for k in page["keys"]):
                # the first tiles are drawn, the others are in flight in the progress bars
                timings["first_tile_s"] = time.monotonic() - t0
                await asyncio.sleep(1.0)  # a repaint
                shot = (await tools.call("Page.captureScreenshot", format="png"))["data"]
            if run_done.is_set():
                ended = ended or time.monotonic()
                if shot is not None or time.monotonic() > ended + 5:  # (a failed run: no tiles)
                    break
            await asyncio.sleep(0.5)
        await asyncio.sleep(1.0)  # the last task-stream update (sent every 100 ms)
        timings["run_s"] = (ended or time.monotonic()) - t0
        page = await tools.evaluate(TASK_STREAM_JS)
        return page, None if shot is None else base64.b64decode(shot), timings
    finally:
        ws.close()


def test_status_page_shows_catalogue_tiles_in_the_task_stream(chromium, dashboard_cluster, tmp_path) -> None:
    client, link = dashboard_cluster
    t0 = time.monotonic()
    # Load the model bundle on each worker (importing Keras and TensorFlow, most of a first tile's
    # time) while this process simulates the field, so that the run's tiles come at a steady pace.
    model = richest_bundle(["F115W", "F150W", "F200W", "F277W", "F356W", "F444W"])  # run_catalogue's default
    warm = [client.submit(_predictor, str(model), key=f"warm-model-{i}", workers=[addr],
                          allow_other_workers=False, pure=False)
            for i, addr in enumerate(client.scheduler_info(n_workers=-1)["workers"])]
    store, _ = make_demo_field(tmp_path / "demo", n_galaxies=30, size=FIELD_PIX, seed=3, client=client,
                               progress=False)
    client.gather(warm)
    del warm
    timings = {"field_and_warm_up_s": time.monotonic() - t0}

    result: dict = {}
    done = threading.Event()

    def run() -> None:
        try:
            result["catalogue"] = run_catalogue(store, client=client, progress=False, tile_pix=TILE_PIX)
        except BaseException as exc:  # noqa: BLE001 (re-raised in the test's thread)
            result["error"] = exc
        finally:
            done.set()

    thread = threading.Thread(target=run, name="run-catalogue", daemon=True)
    url = urlsplit(link)
    status_url = urlunsplit((url.scheme, url.netloc, "/status", "", ""))
    with headless_chromium(chromium, tmp_path / "chromium") as ws_url:
        page, png, seen = asyncio.run(_watch_run(ws_url, status_url, thread.start, done, timeout_s=180))
    timings.update(seen)
    thread.join(timeout=60)
    assert done.is_set(), "run_catalogue did not finish within 180 s"
    if "error" in result:
        raise result["error"]
    assert png is not None, f"no catalogue-tile task on the dashboard; it showed {sorted(set(page['names']))}"

    ARTEFACTS.mkdir(exist_ok=True)
    SCREENSHOT.write_bytes(png)
    _png_is_a_picture(SCREENSHOT)

    # the browser holds this run's tile tasks, under their readable name
    tile_keys = sorted({k for k in page["keys"] if k.startswith("catalogue-tile")},
                       key=lambda k: int(k.rsplit("-", 1)[1]))
    assert tile_keys and all(TILE_KEY.match(k) for k in tile_keys), tile_keys
    names = {n for n, k in zip(page["names"], page["keys"]) if k in tile_keys}
    assert "catalogue-tile" in names, names  # computing; also e.g. "transfer-catalogue-tile"
    assert all(n.endswith("catalogue-tile") for n in names), names
    # and they are the tasks the scheduler ran
    ran = {str(t["key"]) for t in client.get_task_stream(start=0) if str(t["key"]).startswith("catalogue-tile")}
    assert len(ran) == N_TILES and set(tile_keys) <= ran, (sorted(ran), tile_keys)
    assert result["catalogue"].sizes["source"] > 10

    summary = {"url": status_url, "tile_keys_in_browser": tile_keys, "tiles_run": N_TILES,
               "task_names_in_browser": sorted(set(page["names"]) - {"start"}),
               "timings": {k: round(v, 1) for k, v in timings.items()}, "screenshot": str(SCREENSHOT)}
    (ARTEFACTS / "dashboard.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary))
