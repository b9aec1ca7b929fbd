"""The ``adapt`` command: one hop from the shell to Lightning.

    adapt fit|validate|test --config RECIPE [--a.b=value ...]    LightningCLI (recipes = constructor arguments)
    adapt fit --config RECIPE ... --resume                      continue an interrupted fit from its last.ckpt
    adapt evaluate --checkpoint CKPT --root DATASET [--root ...] [--split S ...] [--out DIR]
                   [--protocol full|resize|slide] [--size H W] [--window H W] [--stride H W]
    adapt evaluate --predictions DIR --root DATASET [--kind K] [--split S] [--id-type label|train] [--out DIR]
    adapt data synth --out DIR [--num N] [--size H W] [--seed S]
    adapt data check folder|gta5|cityscapes ROOT [--split S]     pairs, corrupt files, sizes, label values
    adapt translate --checkpoint T.ckpt --direction source-to-target|target-to-source --input DIR --output DIR
    adapt fda --source ROOT --target ROOT --output T.ckpt [--beta B]   a Fourier (FDA) translator, no training
    adapt tta --checkpoint F.ckpt --root TARGET --output F2.ckpt [--method adabn|tent]   test-time adaptation
    adapt run EXPERIMENT.yaml [--out DIR]                       the stages of a multi-stage experiment
    adapt demo [--out DIR]                                      source-only vs randomized on the synthetic pair
"""

from __future__ import annotations

import argparse
import logging
import re
import sys
import warnings
from pathlib import Path

from pytorch_lightning.callbacks import ModelCheckpoint
from jsonargparse import ArgumentError
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI
from pytorch_lightning.utilities.exceptions import SIGTERMException

from adapt.data.labels import DataError
from adapt.nets.segmenter import ConfigError
from adapt.recipe import check_recipe
from adapt.safety import TrainingStopped



class _DropTips(logging.Filter):
    """Lightning's advertising tips are noise in a command's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡")


def quiet_lightning() -> None:
    """Silence messages that say nothing about the run (tips, third-party deprecations, the TensorBoard hint)."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropTips())
    for message in (".*LightningCLI's args parameter.*", ".*LeafSpec.*is deprecated.*", ".*tensorboardX.*",
                    ".*does not have many workers.*",
                    ".*module\\(s\\) in eval mode at the start of training.*",  # frozen parts: teacher, encoder
                    ".*resuming from a checkpoint that ended before the epoch ended.*"):  # adapt restores the position
        warnings.filterwarnings("ignore", message=message)


class AdaptCLI(LightningCLI):
    """LightningCLI with the class names linked from the data to the task and a checkpoint callback that always
    writes ``last.ckpt`` into the run's log folder (under ``trainer.default_root_dir``)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0})
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")

    resume = False  # set by ``adapt fit ... --resume``

    def instantiate_trainer(self, **kwargs):
        """The Trainer, with atomic checkpoint writes and ``weights_only`` loads (AtomicCheckpointIO), the run's
        safety net (RunGuard: run.json, SIGTERM / Ctrl-C checkpoints, non-finite loss stop); with
        ``trainer.sync_batchnorm`` its BatchNorm layers sync on CPUs too (SyncBatchNormPlugin)."""
        from lightning_fabric.plugins import CheckpointIO

        from adapt.safety import AtomicCheckpointIO, RunGuard

        config = self.config_init[self.subcommand]["trainer"] if self.subcommand else self.config_init["trainer"]
        plugins = config.get("plugins") or []
        plugins = list(plugins if isinstance(plugins, list) else [plugins])
        if config.get("sync_batchnorm"):
            from adapt.nets.sync_batchnorm import SyncBatchNormPlugin

            plugins.append(SyncBatchNormPlugin())
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins
        trainer = super().instantiate_trainer(**kwargs)
        try:
            recipe = self._parser(self.subcommand).dump(self.config[self.subcommand] if self.subcommand
                                                        else self.config, skip_none=False)
        except Exception:  # the record is a courtesy; never stop a run for it
            recipe = None
        trainer.callbacks.append(RunGuard(recipe, ["adapt", *sys.argv[1:]]))
        return trainer

    def _weights_only_by_default(self) -> None:
        """Checkpoints given to ``--ckpt_path`` are read as tensors and plain values (``--weights_only false``
        opts out, for a file you trust); Lightning alone would fall back to full unpickling."""
        if self.config_init[self.subcommand].get("weights_only") is None:
            self.config_init[self.subcommand]["weights_only"] = True

    before_validate = before_test = _weights_only_by_default

    def before_fit(self) -> None:
        """``--resume``: continue the newest ``last.ckpt`` of this run (``--ckpt_path`` names one explicitly)."""
        self._weights_only_by_default()
        if not self.resume:
            return
        from adapt.safety import RunGuard, find_resume_checkpoint

        if self.config_init["fit"].get("ckpt_path"):
            raise ConfigError("give --resume (the run's newest last.ckpt) or --ckpt_path PATH, not both")
        callback = self.trainer.checkpoint_callback
        path = find_resume_checkpoint(self.trainer.default_root_dir, callback.dirpath if callback else None)
        self.config_init["fit"]["ckpt_path"] = str(path)
        for guard in (c for c in self.trainer.callbacks if isinstance(c, RunGuard)):
            guard.resumed_from = str(path)
        print(f"resuming from {path}", flush=True)

    def after_fit(self) -> None:
        last = self.trainer.checkpoint_callback.last_model_path if self.trainer.checkpoint_callback else ""
        if self.trainer.is_global_zero and last:
            print(f"checkpoint: {last}")
        log_dir = self.trainer.log_dir  # a broadcast under DDP: every process must ask
        if self.trainer.is_global_zero and log_dir:
            from adapt.validators import write_selection

            write_selection(Path(log_dir))


def run_lightning(args: list[str]) -> AdaptCLI:
    """Run a LightningCLI verb (``fit``, ``validate``, ``test``) with ``args`` as on the command line.

    Recipes and overrides are checked first (one-line errors naming the key); what jsonargparse still rejects
    (a wrong type, say) comes back as a ConfigError with its message on one line, without the usage screen."""
    resume = args[:1] == ["fit"] and "--resume" in args
    args = [a for a in args if a != "--resume"] if resume else args
    if args and args[0] in ("fit", "validate", "test", "predict"):
        check_recipe(args[1:])
    try:
        return (type("ResumingCLI", (AdaptCLI,), {"resume": True}) if resume else AdaptCLI)(subclass_mode_model=True, subclass_mode_data=True, auto_configure_optimizers=False,
                        save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False},
                        args=args)
    except ArgumentError as err:
        raise ConfigError(_short_argument_error(" ".join(str(err).split()))) from None
    except Exception as err:  # a task or data module refusing its arguments, wrapped by jsonargparse: say only that
        cause = _user_error(err)
        if cause is None:
            raise
        raise cause from None


def _short_argument_error(text: str) -> str:
    """jsonargparse's message for a bad value of a task or data argument, cut to ``model.init_args.KEY: why
    (class)``; other messages unchanged."""
    found = re.search(r'Parser key "(\w+)": Does not validate .*?Problem with given class_path \'([\w.]+)\': '
                      r'Parser key "([\w.]+)": (.*?)(?: - Expected a <class \'NoneType\'>|$)', text)
    return f"{found[1]}.init_args.{found[3]}: {found[4].strip()} ({found[2]})" if found else text


def _user_error(err: BaseException | None) -> ConfigError | DataError | None:
    """The first ConfigError or DataError in ``err``'s chain of causes, if any."""
    seen = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, (ConfigError, DataError)):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _evaluate(argv: list[str]) -> None:
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
    _weights_only_option(parser)
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
        from adapt.score import score_predictions
        score_predictions(args.predictions, args.root[0], kinds[0], splits[0], args.id_type, args.out)
        return
    from adapt.evaluate import evaluate, evaluate_roots
    from adapt.metrics import make_protocol

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


def _weights_only_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--weights_only", default=True, type=lambda v: v.lower() not in ("false", "0", "no"),
                        metavar="true|false", help="read checkpoints as tensors and plain values only (default "
                        "true); false runs the pickled code a checkpoint may hold: only for files you trust")


def _translate(argv: list[str]) -> None:
    from adapt.tasks.translation import DIRECTIONS
    from adapt.translate import translate_folder

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


def _fda(argv: list[str]) -> None:
    from adapt.translate import fda_checkpoint

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


def _tta(argv: list[str]) -> None:
    from adapt.test_time import adapt_checkpoint

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
    _weights_only_option(parser)
    args = parser.parse_args(argv)
    record = adapt_checkpoint(args.checkpoint, args.root, args.output, args.method, args.split, args.kind,
                              args.steps, args.lr, args.batch_size, args.seed, args.device, args.weights_only)
    extra = (f"; entropy {record['entropies'][0]:.3f} -> {record['entropies'][-1]:.3f} nats"
             if "entropies" in record else "")
    print(f"{args.method}: {record['images']} target images{extra}; wrote {args.output}")


def _data(argv: list[str]) -> None:
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
        from adapt.check import check_dataset, format_report
        report = check_dataset(args.kind, args.root, args.split)
        print(format_report(report))
        if report["problems"]:
            sys.exit(1)
        return
    if args.num < 2 or min(args.size) < 32:
        raise ConfigError("--num must be at least 2 and --size at least 32 32")
    source, target = synthetic.write_pair(args.out, num_images=args.num, size=tuple(args.size), seed=args.seed)
    print(f"wrote {source} and {target} ({args.num} images each, {args.size[0]}x{args.size[1]})")


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_lightning()
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    try:
        if argv and argv[0] == "evaluate":
            _evaluate(argv[1:])
        elif argv and argv[0] == "data":
            _data(argv[1:])
        elif argv and argv[0] == "translate":
            _translate(argv[1:])
        elif argv and argv[0] == "fda":
            _fda(argv[1:])
        elif argv and argv[0] == "tta":
            _tta(argv[1:])
        elif argv and argv[0] == "run":
            from adapt.experiment import run_main
            run_main(argv[1:])
        elif argv and argv[0] == "demo":
            from adapt.demo import demo_main
            demo_main(argv[1:])
        else:
            run_lightning(argv)
    except SIGTERMException as err:  # SIGTERM or Ctrl-C: RunGuard wrote a resumable checkpoint
        where = getattr(err, "checkpoint", None)
        print(f"adapt: interrupted; resumable checkpoint: {where}; run the same command with --resume to continue"
              if where else "adapt: interrupted before training started; nothing to resume", file=sys.stderr)
        sys.exit(143)
    except (ConfigError, DataError, TrainingStopped) as err:
        if debug:
            raise
        print(f"adapt: error: {_one_line(err)}", file=sys.stderr)
        sys.exit(1 if isinstance(err, TrainingStopped) else 2)


def _one_line(err: BaseException) -> str:
    """The message of ``err``; for one re-raised from a DataLoader worker, its last line (the worker's own words
    follow a traceback there)."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in str(err):
        last = lines[-1]
        return last.split(": ", 1)[1] if last.startswith(("adapt.", "DataError")) and ": " in last else last
    return " ".join(lines)


if __name__ == "__main__":
    main()
