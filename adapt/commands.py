"""The ``adapt`` verbs that are not LightningCLI's: evaluate, translate, fda, tta, data (argument parsing; the work
is done in adapt.evaluate, adapt.translate, adapt.test_time, adapt.check and adapt.data.synthetic)."""

from __future__ import annotations

import argparse
import sys

from adapt.errors import ConfigError


def evaluate(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="adapt evaluate", description="Score a segmenter checkpoint, or the "
                                     "label PNGs of any model (--predictions), on labelled datasets.")
    parser.add_argument("--checkpoint", default=None, help="a .ckpt written by `adapt fit`")
    parser.add_argument("--predictions", default=None, metavar="DIR",
                        help="instead of --checkpoint: predicted label PNGs, DIR/NAME.png (Cityscapes: NAME*.png)")
    parser.add_argument("--id-type", dest="id_type", default="label", choices=("label", "train"),
                        help="with --predictions: values are label ids (Cityscapes ids; folder: classes.yaml ids) "
                             "or train indices 0..C-1")
    parser.add_argument("--root", required=True, action="append",
                        help="labelled dataset folder; repeat it to evaluate several sets (OUT/ROOTNAME each, "
                             "a comparison table and OUT/summary.json)")
    parser.add_argument("--split", default=None, action="append",
                        help="split list in ROOT/splits/ (default: all images); once for all roots or once per root")
    parser.add_argument("--kind", default=None, action="append", choices=("folder", "gta5", "cityscapes"),
                        help="dataset layout (default folder; cityscapes: --split train|val); once or once per root")
    parser.add_argument("--out", default=None, help="folder for metrics.json and the PNG reports (default: "
                                                    "RUN/evaluate/ROOTNAME; several roots: RUN/evaluate)")
    parser.add_argument("--protocol", default="full", choices=("full", "resize", "slide"),
                        help="full: whole image (padded to a multiple of 32); resize: input resized to --size, "
                             "logits resized back; slide: --window windows every --stride, logits averaged")
    parser.add_argument("--size", type=int, nargs=2, default=None, metavar=("H", "W"), help="with --protocol resize")
    parser.add_argument("--window", type=int, nargs=2, default=None, metavar=("H", "W"), help="with --protocol slide")
    parser.add_argument("--stride", type=int, nargs=2, default=None, metavar=("H", "W"),
                        help="with --protocol slide (default: half the window)")
    parser.add_argument("--examples", type=int, default=6, help="images in examples.png (0: none)")
    parser.add_argument("--no-plots", dest="plots", action="store_false", help="write metrics.json only")
    parser.add_argument("--batch_size", type=int, default=4)
    parser.add_argument("--num_workers", type=int, default=0)
    parser.add_argument("--accelerator", default="auto")
    parser.add_argument("--translator", default=None,
                        help="a translator .ckpt: evaluate F(g_ts(x_t)), target images mapped to source style")
    weights_only_option(parser)
    args = parser.parse_args(argv)
    if (args.checkpoint is None) == (args.predictions is None):
        raise ConfigError("adapt evaluate: give --checkpoint CKPT (score a model) or --predictions DIR (score label "
                          f"PNGs); {'not both' if args.checkpoint else 'neither was given'}")
    kinds, splits = args.kind or ["folder"], args.split or [None]
    if args.predictions is not None:
        if args.translator is not None:
            raise ConfigError("--translator needs --checkpoint; predictions are scored as they are")
        if args.protocol != "full" or args.size or args.window or args.stride:
            raise ConfigError("--protocol/--size/--window/--stride need --checkpoint; predictions are scored as "
                              "they are, at the labels' resolution")
        if len(args.root) > 1 or len(kinds) > 1 or len(splits) > 1:
            raise ConfigError("--predictions scores one --root (one --split, one --kind)")
        from adapt.workflows.score import score_predictions
        score_predictions(args.predictions, args.root[0], kinds[0], splits[0], args.id_type, args.out)
        return
    from adapt.workflows.evaluate import evaluate, evaluate_roots
    from adapt.inference import make_protocol

    try:
        protocol = make_protocol(args.protocol, args.size, args.window, args.stride)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    if args.examples < 0:
        raise ConfigError(f"--examples: {args.examples}; give 0 or more")
    options = dict(batch_size=args.batch_size, num_workers=args.num_workers, accelerator=args.accelerator,
                   translator=args.translator, protocol=protocol, num_examples=args.examples, plots=args.plots,
                   weights_only=args.weights_only)
    if len(args.root) == 1 and len(kinds) == 1 and len(splits) == 1:
        evaluate(args.checkpoint, args.root[0], splits[0], args.out, kind=kinds[0], **options)
    else:
        evaluate_roots(args.checkpoint, args.root, splits, kinds, args.out, **options)


def weights_only_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights_only", default=True, type=lambda v: v.lower() not in ("false", "0", "no"),
                        metavar="true|false", help="read checkpoints as tensors and plain values only (default "
                        "true); false runs the pickled code a checkpoint may hold: only for files you trust")


def translate(argv: list[str]) -> None:
    from adapt.checkpoints import DIRECTIONS
    from adapt.workflows.translate import translate_folder

    parser = argparse.ArgumentParser(prog="adapt translate", description="Translate a folder dataset with T.")
    parser.add_argument("--checkpoint", required=True, help="a translator .ckpt written by `adapt fit`")
    parser.add_argument("--direction", required=True, choices=sorted(DIRECTIONS))
    parser.add_argument("--input", required=True, help="folder dataset to translate")
    parser.add_argument("--output", required=True, help="new folder: translated images + copied labels")
    parser.add_argument("--batch_size", type=int, default=1)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    count = translate_folder(args.checkpoint, args.direction, args.input, args.output, args.batch_size, args.device)
    print(f"wrote {count} translated images to {args.output}")


def fda(argv: list[str]) -> None:
    from adapt.workflows.fda import fda_checkpoint

    parser = argparse.ArgumentParser(prog="adapt fda", description="Write a Fourier domain adaptation translator "
                                     "checkpoint, usable wherever a translator checkpoint is (no training).")
    parser.add_argument("--source", required=True, help="source-domain images (labels are not read)")
    parser.add_argument("--target", required=True, help="target-domain images (labels are not read)")
    parser.add_argument("--output", required=True, help="the translator .ckpt (a new file)")
    parser.add_argument("--beta", type=float, default=0.01, help="low-frequency share swapped (FDA's beta)")
    parser.add_argument("--count", type=int, default=32, help="reference images kept per domain")
    parser.add_argument("--size", type=int, nargs=2, default=(256, 512), metavar=("H", "W"),
                        help="size the references are stored at (resized to each image when used)")
    for domain in ("source", "target"):
        parser.add_argument(f"--{domain}_kind", default="folder", choices=("folder", "gta5", "cityscapes"))
        parser.add_argument(f"--{domain}_split", default=None)
    parser.add_argument("--seed", type=int, default=0, help="which references are drawn")
    args = parser.parse_args(argv)
    record = fda_checkpoint(args.output, args.source, args.target, args.beta, args.count, tuple(args.size),
                            args.source_kind, args.target_kind, args.source_split, args.target_split, args.seed)
    print(f"fda: beta {args.beta}, {record['source_images']} source and {record['target_images']} target "
          f"references; wrote {args.output}")


def tta(argv: list[str]) -> None:
    from adapt.workflows.tta import adapt_checkpoint

    parser = argparse.ArgumentParser(prog="adapt tta", description="Adapt F to target images at test time, "
                                     "without labels: AdaBN (BatchNorm statistics) or TENT (+ entropy).")
    parser.add_argument("--checkpoint", required=True, help="an F .ckpt written by `adapt fit`")
    parser.add_argument("--root", required=True, help="target images (labels, if any, are not read)")
    parser.add_argument("--output", required=True, help="the adapted F's .ckpt (a new file)")
    parser.add_argument("--method", default="adabn", choices=("adabn", "tent"))
    parser.add_argument("--split", default=None, help="split list of ROOT (default: all images)")
    parser.add_argument("--kind", default="folder", choices=("folder", "gta5", "cityscapes"))
    parser.add_argument("--steps", type=int, default=50, help="TENT: Adam steps on BatchNorm's affine parameters")
    parser.add_argument("--lr", type=float, default=1e-3, help="TENT: learning rate")
    parser.add_argument("--batch_size", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0, help="the order of the target images")
    parser.add_argument("--device", default="cpu")
    weights_only_option(parser)
    args = parser.parse_args(argv)
    record = adapt_checkpoint(args.checkpoint, args.root, args.output, args.method, args.split, args.kind,
                              args.steps, args.lr, args.batch_size, args.seed, args.device, args.weights_only)
    extra = (f"; entropy {record['entropies'][0]:.3f} -> {record['entropies'][-1]:.3f} nats"
             if "entropies" in record else "")
    print(f"{args.method}: {record['images']} target images{extra}; wrote {args.output}")


def data(argv: list[str]) -> None:
    from adapt.data import synthetic

    parser = argparse.ArgumentParser(prog="adapt data", description="Dataset tools.")
    verbs = parser.add_subparsers(dest="verb", required=True)
    synth = verbs.add_parser("synth", help="write the embedded synthetic domain pair as two folder datasets")
    synth.add_argument("--out", required=True, help="output folder (gets source/ and target/)")
    synth.add_argument("--num", type=int, default=400, help="images per domain")
    synth.add_argument("--size", type=int, nargs=2, default=(96, 128), metavar=("H", "W"))
    synth.add_argument("--seed", type=int, default=0)
    check = verbs.add_parser("check", help="check a dataset: pairs, corrupt files, sizes, label values, frequencies")
    check.add_argument("kind", choices=("folder", "gta5", "cityscapes"), help="dataset layout")
    check.add_argument("root", help="dataset folder")
    check.add_argument("--split", default=None,
                       help="folder: a list in ROOT/splits/; gta5: a list file; cityscapes: train|val|test (val)")
    args = parser.parse_args(argv)
    if args.verb == "check":
        from adapt.data.check import check_dataset, format_report
        report = check_dataset(args.kind, args.root, args.split)
        print(format_report(report))
        if report["problems"]:
            sys.exit(1)
        return
    if args.num < 2 or min(args.size) < 32:
        raise ConfigError("--num must be at least 2 and --size at least 32 32")
    source, target = synthetic.write_pair(args.out, num_images=args.num, size=tuple(args.size), seed=args.seed)
    print(f"wrote {source} and {target} ({args.num} images each, {args.size[0]}x{args.size[1]})")
