"""``ftviz compare RUN [RUN ...] [--out DIR] [--align-to RUN] [--classifier RUN]``: runs side by side."""

from __future__ import annotations


def cmd_compare(args) -> None:
    from ftviz.compare import compare_runs

    compare_runs(args.runs, out=args.out, align_to=args.align_to, classifier=args.classifier,
                 log=(lambda *_: None) if args.quiet else print)


def register(add) -> None:
    p = add("compare", cmd_compare, "several runs side by side on the same probe samples (HTML + metrics table)")
    p.add_argument("runs", nargs="+", metavar="RUN", help="run directories (runs/<name>) with the same probe set")
    p.add_argument("--out", help="output folder for compare.html/.parquet/.csv (default: compare/ beside the first run)")
    p.add_argument("--align-to", metavar="RUN",
                   help="align every run's frames onto this run's (its path or folder name) at the same progress")
    p.add_argument("--classifier", metavar="RUN",
                   help="the classifier run whose final model judges the diffusion runs' generated samples "
                        "(sample accuracy; default: the first run with weights/final.pt and no generated samples)")
