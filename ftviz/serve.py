"""``ftviz serve [DIR]`` and ``ftviz.show(run)``: run pages served live, as ``tensorboard --logdir``.

An ASGI app (starlette, served by uvicorn) over a folder of run directories, which it
re-reads on every request and never writes into:

- ``/``: the runs (name, model, dataset, stage states, frames of snapshots, live or not);
  a run whose ``run.json`` cannot be read is listed as damaged;
- ``/runs/{name}/``: the run's animation page. A finished run gets its ``animation.html``
  as it is; any other run a page built from what is analysed so far
  (:mod:`ftviz.render.live`), whose script polls the status below twice a second and
  grows in place (frames, loss curve, cards) while the run is live;
- ``/api/runs``, ``/api/runs/{name}``: JSON status (:func:`run_status`);
- ``/api/runs/{name}/data``: the status plus the page's data (``meta``, ``points``,
  ``generated``, in the page's own codec, and ``train_thumbnails``, the training panel's
  sprite sheet), what a live page fetches when ``revision`` changes.

A name in a URL is served only if it is one of the runs listed in DIR (a folder with a
run.json, not hidden, not a link out of DIR): anything else is a 404.

In a notebook, :func:`show` displays a finished run's page inline (an iframe with the page
as ``srcdoc``) and a live one from this server started in a background thread.

starlette and uvicorn are imported only when a server starts.
"""

from __future__ import annotations

import argparse
import errno
import html
import os
import socket
import sys
import threading
import time
from collections import OrderedDict
from pathlib import Path
from urllib.parse import quote

from ftviz.errors import FtvizError

DEFAULT_DIR = "runs"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 6060
STATES = ("live", "analysing", "finished", "stopped", "damaged")
CACHED_PAGES = 4  # built pages and payloads kept, keyed by run and revision


# ---- the folder of runs ---------------------------------------------------------------------
def check_root(folder: Path | str) -> Path:
    """The folder of runs, checked: it exists, is a folder, and is not itself one run."""
    root = Path(folder).expanduser()
    if not root.is_dir():
        what = "is not a folder" if root.exists() else "does not exist"
        raise FtvizError(f"{root} {what}: give the folder that holds your runs (ftviz serve runs)")
    if (root / "run.json").is_file():
        raise FtvizError(f"{root} is one run: serve the folder that holds it (ftviz serve {root.parent})")
    return root


def run_names(root: Path) -> list[str]:
    """The runs in ``root``, sorted: folders with a ``run.json``, not hidden, resolving inside ``root``."""
    real_root = Path(root).resolve()
    names = []
    try:
        entries = sorted(os.listdir(root))
    except OSError:
        return []
    for name in entries:
        if name.startswith("."):
            continue
        try:
            real = (real_root / name).resolve(strict=True)
        except (OSError, RuntimeError):  # dangling or looping link
            continue
        # A link to a folder outside DIR is not served: URLs reach only what DIR holds.
        if real.parent != real_root and real_root not in real.parents:
            continue
        if real.is_dir() and (real / "run.json").is_file():
            names.append(name)
    return names


def find_run(root: Path, name: str) -> Path | None:
    """The run folder for a name taken from a URL, or None unless ``name`` is one of :func:`run_names`."""
    return Path(root) / name if name in run_names(root) else None


# ---- status ---------------------------------------------------------------------------------
def run_status(path: Path | str) -> dict:
    """What the index and the JSON API say about one run; never raises for a damaged run.

    Returns
    -------
    dict with
        name, model, dataset : str (model and dataset None when run.json is unreadable);
        stages : {stage: status}, "running" only while its process lives ("interrupted" after);
        snapshots : snapshots recorded (len of run.json's snapshot_steps);
        frames : frames analysed and shown by the page;
        live : training is still running;
        state : "live" | "analysing" (training ended, another stage running) | "finished"
            (train and render done) | "stopped" (anything else: interrupted, failed, not
            rendered) | "damaged" (run.json unreadable; ``error`` says why);
        error : one line or None;
        source : "final" (frames.npy and scores) or "analysis" (per-frame files) or None;
        revision : a token that changes whenever what the page shows changes.
    """
    from ftviz.rundir import RunDir

    path = Path(path)
    status = {"name": path.name, "model": None, "dataset": None, "stages": {}, "snapshots": 0, "frames": 0,
              "live": False, "state": "damaged", "error": None, "source": None, "revision": ""}
    run = RunDir(path)
    try:
        manifest = run.manifest()
        stages = _stage_statuses(run, manifest)
        source, frames = _frames_shown(run, manifest, stages)
    except FtvizError as error:
        status["error"] = str(error).splitlines()[0]
        return status
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as error:  # a hand-edited run.json
        status["error"] = f"{run.manifest_path} is damaged ({type(error).__name__}: {error}); rerun the run"
        return status
    live = stages.get("train") == "running"
    if live:
        state = "live"
    elif "running" in stages.values():
        state = "analysing"
    elif stages.get("train") == "done" and stages.get("render") == "done":
        state = "finished"
    else:
        state = "stopped"
    status.update(
        model=str((manifest.get("model") or {}).get("name", "model")),
        dataset=str((manifest.get("dataset") or {}).get("name", "dataset")),
        stages=stages, snapshots=len(manifest.get("snapshot_steps") or []), frames=frames,
        live=live, state=state, source=source,
    )
    status["revision"] = _revision(run, status)
    return status


def _stage_statuses(run, manifest: dict) -> dict[str, str]:
    from ftviz.rundir import STAGE_NAMES

    recorded = manifest.get("stages") or {}
    statuses = {}
    for name in dict.fromkeys([*STAGE_NAMES, *recorded]):
        status = str((recorded.get(name) or {}).get("status", "pending"))
        if status == "running":  # a dead process's stage reads interrupted
            status = run.stage_status(name)
        statuses[name] = status
    return statuses


def _frames_shown(run, manifest: dict, stages: dict) -> tuple[str | None, int]:
    """Where the page's frames come from, and how many there are."""
    import numpy as np

    from ftviz.render.live import analysed_steps

    if _final_files_ready(run, stages):
        try:
            return "final", int(np.load(run.file("frames.npy"), mmap_mode="r").shape[0])
        except (OSError, ValueError, IndexError):
            return "final", 0
    steps = analysed_steps(run, manifest.get("snapshot_steps") or [])
    return ("analysis" if steps else None), len(steps)


def _final_files_ready(run, stages: dict) -> bool:
    return (stages.get("score") == "done" and stages.get("project") == "done"
            and run.file("frames.npy").is_file())


def _revision(run, status: dict) -> str:
    """Changes when a file the page reads changes (per-frame files are counted, not timed: immutable)."""
    from ftviz.rundir import INTERIM_SUSPICION

    parts = [status["state"], status["source"] or "-", str(status["frames"])]
    for name in ("metrics.parquet", "suspicion.parquet", INTERIM_SUSPICION, "detectors.parquet",
                 "frames.npy", "animation.html", "train_suspicion.parquet", "train_images.npy"):
        try:
            parts.append(str(run.file(name).stat().st_mtime_ns))
        except OSError:
            parts.append("-")
    return ":".join(parts)


# ---- pages ----------------------------------------------------------------------------------
class RunPages:
    """Builds (and briefly keeps) run pages and page data for one folder of runs.

    Parameters
    ----------
    root : the folder of runs, as checked by :func:`check_root`.
    """

    def __init__(self, root: Path):
        self.root = Path(root)
        self._cache: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def statuses(self) -> list[dict]:
        return [self.status(name) for name in run_names(self.root)]

    def status(self, name: str) -> dict:
        status = run_status(self.root / name)
        status["url"] = f"/runs/{quote(name)}/"
        return status

    def page(self, name: str) -> tuple[int, str | Path]:
        """(HTTP status, the page's HTML or the path of a finished run's animation.html)."""
        status = self.status(name)
        if status["state"] == "damaged":
            return 422, message_page(f"{name}: damaged", status["error"])
        page_file = self.root / name / "animation.html"
        if status["state"] == "finished" and page_file.is_file():
            return 200, page_file
        try:
            built = self._cached(name, "page", status["revision"], lambda: self._build_page(name, status))
        except FtvizError as error:
            return 422, message_page(f"{name}: cannot be shown", str(error).splitlines()[0])
        return 200, built

    def data(self, name: str) -> tuple[int, dict]:
        """(HTTP status, the status plus the page data, or with ``meta`` None before the first frame)."""
        from ftviz.render.live import page_payload

        status = self.status(name)
        if status["state"] == "damaged":
            return 422, status
        try:
            payload = self._cached(name, "data", status["revision"], lambda: self._payload(name, status, page_payload))
        except FtvizError as error:
            return 422, {**status, "error": str(error).splitlines()[0]}
        return 200, {**status, **payload}

    def _payload(self, name: str, status: dict, page_payload) -> dict:
        data, config = self._data(name, status, with_images=False)
        if data is None:
            return {"meta": None, "points": None, "generated": {}}
        return page_payload(data, config)

    def _build_page(self, name: str, status: dict) -> str:
        from ftviz.render.live import live_page

        data, config = self._data(name, status, with_images=True)
        if data is None:
            return waiting_page(name, status)
        live = {key: status[key] for key in ("live", "state", "frames", "snapshots", "revision")}
        # Relative to /runs/{name}/, so the page also works behind a proxy that adds a prefix.
        live["api"] = f"../../api/runs/{quote(name)}"
        return live_page(data, config, live=live)

    def _data(self, name: str, status: dict, *, with_images: bool):
        from ftviz.render.data import load_animation_data
        from ftviz.render.live import live_animation_data, render_config
        from ftviz.rundir import RunDir

        run = RunDir(self.root / name)
        manifest = run.manifest()
        if status["source"] == "final":
            data = load_animation_data(run, with_images=with_images)
        else:
            data = live_animation_data(run, manifest, with_images=with_images)
        return data, render_config(manifest)

    def _cached(self, name: str, kind: str, revision: str, build):
        key = (name, kind, revision)
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        value = build()
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > CACHED_PAGES:
                self._cache.popitem(last=False)
        return value


def _page_shell(title: str, body: str, script: str = "") -> str:
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="generator" content="ftviz"><title>{html.escape(title)}</title>
<style>
body {{ font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #1f2430; margin: 24px 32px; }}
h1 {{ font-size: 20px; margin: 0 0 4px; }} .muted {{ color: #6b7280; }}
table {{ border-collapse: collapse; margin-top: 16px; }}
th, td {{ text-align: left; padding: 6px 12px; border-bottom: 1px solid #e5e7eb; vertical-align: top; }}
th {{ font-weight: 600; color: #4b5563; }} td.num {{ text-align: right; font-variant-numeric: tabular-nums; }}
.stage {{ display: inline-block; margin: 0 4px 2px 0; padding: 0 6px; border-radius: 8px; background: #f3f4f6; font-size: 12px; }}
.stage.done {{ background: #e3f1e0; }} .stage.running {{ background: #dbeafe; }}
.stage.failed, .stage.interrupted {{ background: #fde2e1; }} .stage.stale {{ background: #fdf3d8; }}
.state {{ font-weight: 600; }} .state.live {{ color: #1d7a3a; }} .state.damaged {{ color: #b42318; }}
.error {{ color: #b42318; max-width: 60em; }} code {{ background: #f3f4f6; padding: 1px 4px; border-radius: 3px; }}
</style></head>
<body>
{body}
{script}
</body></html>
"""


def index_page(root: Path, statuses: list[dict]) -> str:
    """The list of runs (it refreshes itself every 2 s while open)."""
    heading = f"<h1>ftviz runs</h1><p class=\"muted\">in {html.escape(str(root))}</p>"
    if not statuses:
        body = (f'<main id="runs">{heading}<p id="no-runs">No runs in {html.escape(str(root))} yet. '
                f"Start one with <code>ftviz run EXPERIMENT.toml --set out_dir={html.escape(str(root))}</code>: "
                "it appears here as soon as it starts.</p></main>")
    else:
        rows = "\n".join(_index_row(status) for status in statuses)
        body = (f'<main id="runs">{heading}<table><thead><tr><th>run</th><th>model</th><th>dataset</th>'
                "<th>stages</th><th>frames / snapshots</th><th>state</th></tr></thead>"
                f"<tbody>\n{rows}\n</tbody></table></main>")
    # Re-reads this page and swaps the list: one renderer (here) for the first view and the updates.
    script = """<script>
setInterval(async () => {
  try {
    const text = await (await fetch(location.href, { cache: "no-store" })).text();
    const fresh = new DOMParser().parseFromString(text, "text/html").getElementById("runs");
    if (fresh) document.getElementById("runs").replaceWith(fresh);
  } catch (error) { /* the server stopped: keep the last list */ }
}, 2000);
</script>"""
    return _page_shell("ftviz runs", body, script)


def _index_row(status: dict) -> str:
    name = html.escape(status["name"])
    link = f'<a href="{html.escape(status["url"])}">{name}</a>'
    state = status["state"]
    if state == "damaged":
        return (f'<tr data-run="{name}" data-state="damaged"><td>{link}</td><td colspan="4" class="error">'
                f'{html.escape(status["error"] or "")}</td><td class="state damaged">damaged</td></tr>')
    stages = "".join(f'<span class="stage {html.escape(s)}" title="{html.escape(n)}: {html.escape(s)}">'
                     f"{html.escape(n)}: {html.escape(s)}</span>" for n, s in status["stages"].items())
    return (f'<tr data-run="{name}" data-state="{state}"><td>{link}</td><td>{html.escape(status["model"])}</td>'
            f'<td>{html.escape(status["dataset"])}</td><td>{stages}</td>'
            f'<td class="num">{status["frames"]} / {status["snapshots"]}</td>'
            f'<td class="state {state}">{state}</td></tr>')


def message_page(title: str, message: str) -> str:
    body = (f'<h1>{html.escape(title)}</h1><p id="message" class="error">{html.escape(message)}</p>'
            '<p><a href="../../">all runs</a></p>')
    return _page_shell(title, body)


def waiting_page(name: str, status: dict) -> str:
    """A run with no analysed frame yet: says so, and reloads once the first frame is there."""
    what = ("waiting for its first analysed frame" if status["live"]
            else f"no analysed frame ({status['state']}): nothing to show")
    body = (f'<h1>{html.escape(name)}</h1><p id="message" class="muted">{html.escape(what)} · '
            f'{status["snapshots"]} snapshots recorded</p><p><a href="../../">all runs</a></p>')
    script = f"""<script>
setInterval(async () => {{
  try {{
    const status = await (await fetch("../../api/runs/{quote(name)}", {{ cache: "no-store" }})).json();
    if (status.frames > 0) location.reload();
  }} catch (error) {{ /* the server stopped */ }}
}}, 1000);
</script>""" if status["live"] else ""
    return _page_shell(name, body, script)


# ---- the app --------------------------------------------------------------------------------
def make_app(root: Path | str):
    """The ASGI app (starlette) serving the runs in ``root``."""
    from starlette.applications import Starlette
    from starlette.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
    from starlette.routing import Route

    pages = RunPages(check_root(root))
    not_found = {"error": "no such run"}
    fresh = {"Cache-Control": "no-store"}

    def index(request):
        return HTMLResponse(index_page(pages.root, pages.statuses()), headers=fresh)

    def runs(request):
        return JSONResponse({"root": str(pages.root), "runs": pages.statuses()}, headers=fresh)

    def one_run(request):
        name = request.path_params["name"]
        if find_run(pages.root, name) is None:
            return JSONResponse(not_found, status_code=404)
        return JSONResponse(pages.status(name), headers=fresh)

    def run_data(request):
        name = request.path_params["name"]
        if find_run(pages.root, name) is None:
            return JSONResponse(not_found, status_code=404)
        code, payload = pages.data(name)
        return JSONResponse(payload, status_code=code, headers=fresh)

    def run_page(request):
        name = request.path_params["name"]
        if find_run(pages.root, name) is None:
            return HTMLResponse(message_page("no such run", f"{name!r} is not a run in {pages.root}"), status_code=404)
        if not request.url.path.endswith("/"):  # the page's relative links need the trailing slash
            return RedirectResponse(f"/runs/{quote(name)}/")
        code, page = pages.page(name)
        if isinstance(page, Path):
            return FileResponse(page, media_type="text/html; charset=utf-8", headers=fresh)
        return HTMLResponse(page, status_code=code, headers=fresh)

    def no_icon(request):  # browsers ask for one; a 404 would be an error in the page's console
        return Response(status_code=204)

    routes = [
        Route("/", index),
        Route("/favicon.ico", no_icon),
        Route("/api/runs", runs),
        Route("/api/runs/{name}", one_run),
        Route("/api/runs/{name}/data", run_data),
        Route("/runs/{name}", run_page),
        Route("/runs/{name}/", run_page),
    ]
    return Starlette(routes=routes)


def check_server_libraries() -> None:
    """starlette and uvicorn are importable, or a one-line error saying how to get them."""
    import importlib.util

    missing = [name for name in ("starlette", "uvicorn") if importlib.util.find_spec(name) is None]
    if missing:
        raise FtvizError(f"ftviz serve needs {' and '.join(missing)}: pip install 'ftviz[serve]'")


def listen(host: str, port: int) -> socket.socket:
    """A listening socket on ``host``:``port`` (0: a free port); :class:`FtvizError` if taken."""
    if not 0 <= int(port) <= 65535:
        raise FtvizError(f"--port must be in 0..65535 (0 picks a free one), got {port}")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, int(port)))
        sock.listen(128)
    except OSError as error:
        sock.close()
        if error.errno == errno.EADDRINUSE:
            raise FtvizError(f"port {port} on {host} is taken ({error.strerror}); pass another --port, "
                             "or --port 0 to pick a free one") from None
        raise FtvizError(f"cannot listen on {host}:{port} ({error.strerror or error}); pass another --host") from None
    return sock


def _url(host: str, port: int) -> str:
    return f"http://{'[' + host + ']' if ':' in host else host}:{port}/"


def _uvicorn_server(root: Path):
    import uvicorn

    # lifespan off: the app has no startup work; access log off: one line per poll is noise.
    config = uvicorn.Config(make_app(root), log_level="warning", access_log=False, lifespan="off")
    return uvicorn.Server(config)


def serve(folder: Path | str = DEFAULT_DIR, *, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
          log=print) -> None:
    """Serve the runs in ``folder`` until Ctrl-C (blocking)."""
    root = check_root(folder)
    check_server_libraries()
    sock = listen(host, port)
    server = _uvicorn_server(root)
    log(f"ftviz serve: the runs in {root} at {_url(host, sock.getsockname()[1])} (Ctrl-C to stop)")
    sys.stdout.flush()
    try:
        server.run(sockets=[sock])
    except KeyboardInterrupt:  # uvicorn stops cleanly, then passes Ctrl-C on
        pass
    finally:
        sock.close()


class BackgroundServer:
    """The same server on a daemon thread (notebooks, tests); :meth:`stop` ends it.

    Parameters
    ----------
    root : folder of runs.
    host, port : where to listen; ``port`` 0 picks a free one.
    """

    def __init__(self, root: Path | str, *, host: str = DEFAULT_HOST, port: int = 0, timeout: float = 20.0):
        self.root = check_root(root)
        check_server_libraries()
        self.host = host
        self._socket = listen(host, port)
        self.port = int(self._socket.getsockname()[1])
        self._server = _uvicorn_server(self.root)
        self._thread = threading.Thread(target=self._server.run, kwargs={"sockets": [self._socket]},
                                        name=f"ftviz-serve-{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the ftviz server on {self.url} did not start")
            time.sleep(0.01)

    @property
    def url(self) -> str:
        return _url(self.host, self.port)

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._server.should_exit = True
        self._thread.join(timeout=10)
        self._socket.close()


# ---- notebooks ------------------------------------------------------------------------------
_NOTEBOOK_SERVERS: dict[tuple[str, str], BackgroundServer] = {}


class RunView:
    """A run's page for a notebook cell: an iframe on the server's URL, or with the page inline."""

    def __init__(self, name: str, *, url: str | None = None, page: str | None = None, height: int = 800):
        self.name, self.url, self.page, self.height = name, url, page, int(height)

    def _repr_html_(self) -> str:
        style = f'width="100%" height="{self.height}" style="border:1px solid #e5e7eb"'
        if self.page is not None:
            return f'<iframe {style} title="ftviz {html.escape(self.name)}" srcdoc="{html.escape(self.page)}"></iframe>'
        return f'<iframe {style} title="ftviz {html.escape(self.name)}" src="{html.escape(self.url)}"></iframe>'

    def __repr__(self) -> str:
        return f"ftviz: {self.name} at {self.url}" if self.url else f"ftviz: {self.name} (animation.html inline)"


def show(run, *, height: int = 800, host: str = DEFAULT_HOST, port: int = 0) -> None:
    """Show a run's animation page in the notebook cell (Jupyter, through IPython's display).

    A finished run's ``animation.html`` goes inline (an iframe whose ``srcdoc`` is the page:
    it stays in the notebook, offline). Any other run, live ones above all, is shown from
    ``ftviz serve``'s app, started once per folder in a background thread of the kernel (on
    ``host``:``port``, 0 = a free port), in an iframe that grows with the run as the server's
    page does.

    Parameters
    ----------
    run : a :class:`ftviz.rundir.RunDir` or the path of a run folder.
    height : of the iframe, in px.
    """
    path = Path(getattr(run, "path", run)).expanduser().resolve()
    if not (path / "run.json").is_file():
        raise FtvizError(f"{path} is not an ftviz run (no run.json): give a run folder such as runs/<name>")
    try:
        from IPython.display import display
    except ModuleNotFoundError:
        raise FtvizError("ftviz.show draws in Jupyter and needs IPython: pip install ipython "
                         "(outside a notebook use ftviz serve)") from None
    status = run_status(path)
    if status["state"] == "damaged":
        raise FtvizError(status["error"])
    page_file = path / "animation.html"
    if status["state"] == "finished" and page_file.is_file():
        view = RunView(path.name, page=page_file.read_text(encoding="utf-8"), height=height)
    else:
        server = notebook_server(path.parent, host=host, port=port)
        view = RunView(path.name, url=f"{server.url}runs/{quote(path.name)}/", height=height)
    display(view)


def notebook_server(root: Path, *, host: str = DEFAULT_HOST, port: int = 0) -> BackgroundServer:
    """The background server of ``root`` (one per folder and host, started on first use)."""
    key = (str(Path(root).resolve()), host)
    server = _NOTEBOOK_SERVERS.get(key)
    if server is None or not server.running or (port and server.port != port):
        if server is not None:
            server.stop()
        server = _NOTEBOOK_SERVERS[key] = BackgroundServer(root, host=host, port=port)
    return server


def stop_notebook_servers() -> None:
    """Stop the background servers :func:`show` started (they also end with the kernel)."""
    while _NOTEBOOK_SERVERS:
        _NOTEBOOK_SERVERS.popitem()[1].stop()


# ---- command line ---------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``ftviz serve``'s arguments (shared by the ftviz command and ``python -m ftviz.serve``)."""
    parser.add_argument("dir", nargs="?", default=DEFAULT_DIR, metavar="DIR",
                        help=f"the folder of runs (default: {DEFAULT_DIR})")
    parser.add_argument("--host", default=DEFAULT_HOST,
                        help=f"address to listen on (default: {DEFAULT_HOST}, this machine only)")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT,
                        help=f"port (default: {DEFAULT_PORT}; 0 picks a free one)")


def run(args) -> int | None:
    """``ftviz serve``: serve ``args.dir`` until Ctrl-C; bad input raises :class:`FtvizError`."""
    serve(args.dir, host=args.host, port=args.port)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ftviz serve", description="serve the runs in a folder: live pages and a JSON API")
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return run(args) or 0
    except FtvizError as error:
        print(f"ftviz: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
