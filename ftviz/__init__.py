"""ftviz: watch what fine-tuning does to a vision model's view of its data."""

__version__ = "0.1.0"


def show(run, **options) -> None:
    """Show a run's animation page in a Jupyter notebook; a live run grows in place.

    ``run``: a run folder (``runs/<name>``) or :class:`ftviz.rundir.RunDir`; ``options``:
    ``height`` (px), ``host``, ``port`` (see :func:`ftviz.serve.show`).
    """
    from ftviz.serve import show as show_run  # starlette and uvicorn load only here

    return show_run(run, **options)
