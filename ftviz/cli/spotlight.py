"""``ftviz spotlight RUN``: serve a run in Renumics Spotlight, or export its table to parquet."""

from __future__ import annotations

import signal
import threading


def register(add) -> None:
    p = add("spotlight", cmd_spotlight, "open a run in Renumics Spotlight (or --export its table)")
    p.add_argument("run", help="run directory (runs/<name>)")
    p.add_argument("--port", type=int, help="port to serve on (default: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="address to serve on (default: 127.0.0.1)")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser tab")
    p.add_argument("--no-ssl", action="store_true",
                   help="allow a non-loopback --host without TLS (Spotlight refuses it otherwise)")
    p.add_argument("--export", metavar="FILE.parquet",
                   help="write the table to FILE.parquet (opens with `spotlight FILE.parquet`) and exit")


def cmd_spotlight(args) -> None:
    from ftviz import spotlight
    from ftviz.rundir import RunDir

    run = RunDir(args.run)
    if args.export:
        path = spotlight.export_table(run, args.export)
        print(f"ftviz: wrote {path}; open it with `spotlight {path} --layout {spotlight.LAYOUT_PATH}`")
        return

    if args.port is not None and not 0 < args.port < 65536:
        from ftviz.errors import FtvizError

        raise FtvizError(f"--port must be between 1 and 65535 (got {args.port})")
    stop = threading.Event()
    # Ctrl-C, SIGTERM and SIGHUP only set `stop`, also while the server is still starting, so
    # the server's child process is always stopped below rather than left to atexit.
    signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in signals}
    try:
        viewer = spotlight.show(
            run, host=args.host, port=args.port, open_browser=not args.no_browser, no_ssl=args.no_ssl
        )
        try:
            print(f"ftviz: Spotlight serving {run.path} at {viewer.url} (Ctrl-C to stop)", flush=True)
            stop.wait()
        finally:
            # Spotlight's similarity-map workers can outlive its server: end them too.
            started = spotlight.server_processes(viewer)
            viewer.close()
            spotlight.end_processes(started)
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    print("ftviz: Spotlight stopped", flush=True)
