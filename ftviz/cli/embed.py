"""``ftviz embed``: a run from a folder of Hugging Face Trainer checkpoints (see :mod:`ftviz.ingest`)."""

from __future__ import annotations

from pathlib import Path

from ftviz.cli.run_config import add_set_option, build_config


def register(add) -> None:
    p = add("embed", cmd_embed, "embed the probe set at every checkpoint of a Trainer output folder, "
                                "then score, project and render it like a run ftviz trained")
    p.add_argument("--checkpoints", required=True, metavar="DIR",
                   help="the Trainer's output_dir (checkpoint-<step> subfolders) or one checkpoint folder")
    p.add_argument("--dataset", default="cifar10",
                   help="the dataset the model was fine-tuned on: cifar10 (default), digits, imagefolder, ...")
    p.add_argument("--data-path", default="", metavar="P",
                   help="data.path: a cifar-10-batches-py folder or an image folder (\"\" = the hub)")
    p.add_argument("--probe", choices=("test", "train"), default="test",
                   help="split the probe set comes from (default: test, as in the article)")
    p.add_argument("--probe-size", type=int, default=0, metavar="N",
                   help="stratified subset of N probe images (default 0: the whole split)")
    p.add_argument("--name", help="run name (default: the checkpoint folder's name)")
    p.add_argument("--out-dir", default="runs", help="folder that holds runs (default: runs)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N")
    p.add_argument("--processor", default="", metavar="SOURCE",
                   help="base model (hub id or folder) whose preprocessor_config.json applies when the "
                        "checkpoints have none")
    add_set_option(p, example="data.noise_rate=0.1, train.embed_precision=fp32")
    p.add_argument("--force", action="store_true", help="replace an existing run of the same name")


def embed_config(args):
    """The experiment config for an ingestion: defaults, the flags, then ``--set`` overrides.

    ``data.noise_rate`` defaults to 0 here: the model was trained on the dataset's own labels.
    """
    name = args.name or Path(args.checkpoints).expanduser().resolve().name
    return build_config(args.set, values={
        "name": name,
        "out_dir": args.out_dir,
        "data": {"dataset": args.dataset, "path": args.data_path, "probe": args.probe,
                 "probe_size": args.probe_size, "noise_rate": 0.0},
        "train": {"device": args.device},
    })


def cmd_embed(args) -> None:
    from ftviz.ingest import ingest_checkpoints
    from ftviz.stages import continue_run

    config = embed_config(args)
    run = ingest_checkpoints(args.checkpoints, config, processor=args.processor, force=args.force,
                             progress=not args.quiet)
    continue_run(run, config, progress=not args.quiet)
