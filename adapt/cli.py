"""The ``adapt`` command: one hop from the shell to Lightning and to the workflows.

    adapt fit|validate|test --config RECIPE [--a.b=value ...]    LightningCLI; RECIPE: a file or a shipped name
    adapt fit --config RECIPE ... --resume                      continue an interrupted fit from its last.ckpt
    adapt fit --config RECIPE ... --cost.country_iso_code FRA   the grid of run.json's cost (--cost null: no tracker)
    adapt fit --config RECIPE ... --collapse_fraction 0.1       warn when a class's predicted target share collapses
    adapt evaluate --checkpoint CKPT --root DATASET [--split S] [--output DIR] [--protocol full|resize|slide] ...
    adapt evaluate --checkpoint CKPT --root [A,B] ...           several sets, one comparison table
    adapt evaluate ... --class_subsets [synthia16,synthia13]    SYNTHIA -> Cityscapes: 16- and 13-class mIoU too
    adapt evaluate --predictions DIR --root DATASET [--kind K] [--id_type label|train]
    adapt compare A|[A0,A1,..] B|[B0,B1,..] [--output F]        mIoUs, A - B (seeds paired), bootstrap intervals
    adapt translate --checkpoint T.ckpt --direction source-to-target --input DIR --output DIR
    adapt fda --source ROOT --target ROOT --output T.ckpt [--beta B]   a Fourier (FDA) translator, no training
    adapt tta --checkpoint F.ckpt --root TARGET --output F2.ckpt [--method adabn|tent]   test-time adaptation
    adapt export --checkpoint F.ckpt --output F.onnx [--translator T.ckpt]   ONNX graph of F or F(T(x)), + F.json
    adapt predict --checkpoint F.ckpt --input DIR|--root DATASET --output DIR [--protocol P] [--confidence true]
    adapt data synth --output DIR [--num_images N] [--size [H,W]] [--seed S]
    adapt data check KIND ROOT [--split S]                      pairs, corrupt files, sizes, label values
                      (KIND: folder gta5 cityscapes synthia acdc darkzurich carla carla_legacy)
    adapt data gap --source S --target T [--output DIR] [--max_images N]   how far apart two domains are, and how
    adapt run EXPERIMENT [--output DIR] [--seeds [N,...]] [--dry_run true] [--a.b=value ...]   a multi-stage experiment
    adapt demo [--output DIR] [--max_epochs N]                  the shipped demo/demo experiment and its gap table
    adapt recipes [--copy NAME|FOLDER|all --output DIR]         list the shipped recipes, or copy some to edit

The verbs besides LightningCLI's are read from the typed signatures of their functions (``adapt.commands``);
``adapt VERB --help`` lists their arguments. The spellings --out, --device, --input_root and --output_root still work
for one release, with a warning (--output, --accelerator, --input).
"""

from __future__ import annotations

import logging
import os
import re
import sys
import warnings
from pathlib import Path

from jsonargparse import ArgumentError
from lightning_fabric.plugins import CheckpointIO
from pytorch_lightning.callbacks import ModelCheckpoint
from pytorch_lightning.cli import LightningArgumentParser, LightningCLI, SaveConfigCallback
from pytorch_lightning.utilities.exceptions import SIGTERMException

from adapt import commands
from adapt.callbacks import AtomicCheckpointIO, RunRecord, find_resume_checkpoint, last_checkpoint_path, run_guard
from adapt.catalogue import recipe_file
from adapt.checkpoints import SEGMENTER_KIND, TRANSLATOR_KIND, load_checkpoint, require_kind
from adapt.commands import failed, run_verb
from adapt.cost import Cost, as_cost
from adapt.distributed import SyncBatchNormPlugin
from adapt.errors import ConfigError, DataError, StageFailed, TrainingStopped
from adapt.recipe import check_recipe
from adapt.signals import Interrupted


class _DropTips(logging.Filter):
    """Lightning's advertising tips are noise in a command's output."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("💡")


def quiet_lightning() -> None:
    """Silence messages that say nothing about the run (tips, third-party deprecations, the TensorBoard hint)."""
    logging.getLogger("pytorch_lightning.utilities.rank_zero").addFilter(_DropTips())
    adapt_log = logging.getLogger("adapt")  # adapt's own INFO lines (what an encoder weights file filled, say)
    if not adapt_log.handlers:
        adapt_log.addHandler(logging.StreamHandler())
        adapt_log.setLevel(logging.INFO)
    for message in (".*LightningCLI's args parameter.*", ".*LeafSpec.*is deprecated.*", ".*tensorboardX.*",
                    ".*does not have many workers.*",
                    ".*module\\(s\\) in eval mode at the start of training.*",  # frozen parts: teacher, encoder
                    ".*resuming from a checkpoint that ended before the epoch ended.*"):  # adapt restores the position
        warnings.filterwarnings("ignore", message=message)


def default_loggers(root: str | Path) -> list:
    """The loggers of a run whose recipe names none: a CSVLogger (``metrics.csv``; the run folder
    ``root/lightning_logs/version_N``) and, when the ``tensorboard`` package is installed, a TensorBoardLogger
    writing its event files into the same folder (curves and pictures: ``tensorboard --logdir root``)."""
    from pytorch_lightning.loggers import CSVLogger, TensorBoardLogger

    csv = CSVLogger(root, name="lightning_logs")
    try:
        import tensorboard  # noqa: F401  (Lightning's TensorBoardLogger needs it or tensorboardX)
    except ImportError:
        return [csv]
    return [csv, TensorBoardLogger(root, name="lightning_logs", version=csv.version, default_hp_metric=False)]


class AdaptCLI(LightningCLI):
    """LightningCLI with the class names linked from the data to the task, a checkpoint callback that always
    writes ``last.ckpt`` into the run's log folder (under ``trainer.default_root_dir``), ``--resume``, the
    callbacks of ``adapt.callbacks.run_guard`` on every Trainer, and CSV + TensorBoard loggers unless the recipe
    names its own (``default_loggers``)."""

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # save_top_k 0: adapt's ResumableCheckpoints writes last.ckpt at every epoch end; no version counter, so
        # that ModelCheckpoint's own last.ckpt (with a top-k save) replaces that file instead of writing last-v1
        parser.set_defaults({"checkpoint.save_last": True, "checkpoint.save_top_k": 0,
                             "checkpoint.enable_version_counter": False})
        parser.link_arguments("data.class_names", "model.init_args.class_names", apply_on="instantiate")
        parser.add_argument("--resume", action="store_true",
                            help="fit: continue the run's newest last.ckpt (after SIGTERM, Ctrl-C or a crash)")
        parser.add_argument("--cost", type=Cost | None, default=Cost(),  # adapt.cost; recorded in run.json
                            help="fit: what the run costs, measured by codecarbon (null: wall time only)")
        parser.add_argument("--collapse_fraction", type=float, default=0.1,  # adapt.selection.CheckpointSelection
                            help="fit: warn when a class's predicted share of the target falls below this fraction "
                                 "of its first validation round's share (0: never)")

    def instantiate_trainer(self, **kwargs):
        """The Trainer, with atomic checkpoint writes and ``weights_only`` loads (AtomicCheckpointIO) and the
        run's safety net (``run_guard``); with ``trainer.sync_batchnorm`` its BatchNorm layers sync on CPUs too."""
        config = self.config_init[self.subcommand] if self.subcommand else self.config_init
        plugins = config["trainer"].get("plugins") or []
        plugins = list(plugins if isinstance(plugins, list) else [plugins])
        if config["trainer"].get("sync_batchnorm"):
            plugins.append(SyncBatchNormPlugin())
        if not any(isinstance(p, CheckpointIO) for p in plugins):
            plugins.append(AtomicCheckpointIO())
        kwargs["plugins"] = plugins
        if config["trainer"].get("logger") is None:  # unset: CSV and TensorBoard (``--trainer.logger=false``: none)
            kwargs["logger"] = default_loggers(config["trainer"].get("default_root_dir") or os.getcwd())
        trainer = super().instantiate_trainer(**kwargs)
        saver = next((c for c in trainer.callbacks if isinstance(c, SaveConfigCallback)), None)
        try:  # the resolved recipe, as SaveConfigCallback writes it to config.yaml
            recipe = saver.parser.dump(saver.config, skip_none=False) if saver else None
        except Exception:  # the record is a courtesy; never stop a run for it
            recipe = None
        seed = config.get("seed_everything")
        trainer.callbacks.extend(run_guard(recipe, ["adapt", *sys.argv[1:]],
                                           seed if isinstance(seed, int) and not isinstance(seed, bool) else None,
                                           as_cost(config.get("cost", Cost())), config.get("collapse_fraction", 0.1)))
        return trainer

    def _parse_ckpt_path(self) -> None:
        """``--ckpt_path``: refuse a checkpoint of the other kind (a translator's for a segmentation task, an F's for
        the translation task) with the line every verb gives, before LightningCLI merges its hyperparameters into
        the recipe's task, which would fail with a long jsonargparse message about foreign keys. Overrides a private
        LightningCLI step: no public hook runs between parsing and that merge."""
        command = self.config.get("subcommand")
        path = self.config[command].get("ckpt_path") if command else None
        if path and Path(path).is_file():
            class_path = str(self.config[command].get("model", {}).get("class_path") or "")
            wanted = TRANSLATOR_KIND if class_path.endswith("TranslationTask") else SEGMENTER_KIND
            trusted = self.config[command].get("weights_only") is False  # --weights_only false: the user trusts it
            require_kind(load_checkpoint(path, "--ckpt_path", weights_only=not trusted, mmap=True), (wanted,), "--ckpt_path", path)
        super()._parse_ckpt_path()

    def _weights_only_by_default(self) -> None:
        """Checkpoints given to ``--ckpt_path`` are read as tensors and plain values (``--weights_only false``
        opts out, for a file you trust); Lightning alone would fall back to full unpickling."""
        if self.config_init[self.subcommand].get("resume"):
            raise ConfigError(f"--resume continues a fit; adapt {self.subcommand} takes --ckpt_path PATH")
        if self.config_init[self.subcommand].get("weights_only") is None:
            self.config_init[self.subcommand]["weights_only"] = True

    before_validate = before_test = _weights_only_by_default

    def before_fit(self) -> None:
        """``--resume``: continue the newest ``last.ckpt`` of this run (``--ckpt_path`` names one explicitly)."""
        config = self.config_init["fit"]
        resume, config["resume"] = config.get("resume"), False
        self.config["fit"]["resume"] = False  # config.yaml (saved when the fit starts) re-runs, not resumes
        self._weights_only_by_default()
        if not resume:
            return
        if config.get("ckpt_path"):
            raise ConfigError("give --resume (the run's newest last.ckpt) or --ckpt_path PATH, not both")
        callback = self.trainer.checkpoint_callback
        path = find_resume_checkpoint(self.trainer.default_root_dir, callback.dirpath if callback else None)
        config["ckpt_path"] = str(path)
        for record in (c for c in self.trainer.callbacks if isinstance(c, RunRecord)):
            record.resumed_from = str(path)
        print(f"resuming from {path}", flush=True)

    def after_fit(self) -> None:
        last = last_checkpoint_path(self.trainer)
        if self.trainer.is_global_zero and last.is_file():
            print(f"checkpoint: {last}")


def run_lightning(args: list[str]) -> AdaptCLI:
    """Run a LightningCLI verb (``fit``, ``validate``, ``test``) with ``args`` as on the command line.

    Recipes and overrides are checked first (one-line errors naming the key); what jsonargparse still rejects
    (a wrong type, say) comes back as a ConfigError with its message on one line, without the usage screen."""
    if args and args[0] in ("fit", "validate", "test"):
        args = [args[0], *_recipe_files(args[1:])]
        # before jsonargparse: one line naming the file and key (a misspelt or renamed init_arg), which its nested
        # union error cannot say; jsonargparse still validates everything (adapt.recipe's docstring)
        check_recipe(args[1:])
    try:
        return AdaptCLI(subclass_mode_model=True, subclass_mode_data=True, auto_configure_optimizers=False,
                   save_config_kwargs={"overwrite": True}, parser_kwargs={"exit_on_error": False}, args=args)
    except ArgumentError as err:
        raise ConfigError(_short_argument_error(" ".join(str(err).split()))) from None
    except Exception as err:  # a task or data module refusing its arguments, wrapped by jsonargparse: say only that
        cause = _user_error(err)
        if cause is None:
            raise
        raise cause from None


def _recipe_files(args: list[str]) -> list[str]:
    """``args`` with each ``--config NAME`` (``-c``, ``--config=``) of a shipped recipe replaced by its file, so
    that LightningCLI reads ``adapt fit --config demo/source_only`` from any folder; paths are kept as they are."""
    result = list(args)
    for i, arg in enumerate(result):
        if arg.startswith("--config="):
            result[i] = f"--config={recipe_file(arg.partition('=')[2])}"
        elif arg in ("--config", "-c") and i + 1 < len(result):
            result[i + 1] = recipe_file(result[i + 1])
    return result


def _short_argument_error(text: str) -> str:
    """jsonargparse's message for a bad value of a task or data argument, cut to ``model.init_args.KEY: why
    (class)``; other messages unchanged. A regular expression because jsonargparse gives no structured form: its
    ArgumentError carries only the message text (the failing key and class are folded into the union / subclass
    error's wording), so the text is all there is to read; an unmatched message passes through whole."""
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


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    quiet_lightning()
    debug = "--debug" in argv
    if debug:
        argv.remove("--debug")
    if not argv or argv[0] in ("-h", "--help"):
        print("usage:\n" + __doc__.split("\n\n", 1)[1].rstrip())  # every verb; `adapt VERB --help`: its arguments
        return
    try:
        verb = " ".join(argv[:2]) if argv[:1] == ["data"] else argv[0]
        if verb in commands.VERBS:
            if failed(verb, run_verb(verb, argv[len(verb.split()):])):
                sys.exit(1)  # printed already (data check's problems): a script can stop on the status
        elif argv[:1] == ["data"]:
            known = [v.split()[1] for v in commands.VERBS if v.startswith("data ")]
            raise ConfigError(f"adapt data: give {', '.join(known[:-1])} or {known[-1]} (adapt data VERB --help)")
        else:
            run_lightning(argv)
    except SIGTERMException as err:  # SIGTERM or Ctrl-C: ResumableCheckpoints wrote a resumable checkpoint
        where = getattr(err, "checkpoint", None)
        print(f"adapt: interrupted; resumable checkpoint: {where}; run the same command with --resume to continue"
              if where else "adapt: interrupted before training started; nothing to resume", file=sys.stderr)
        sys.exit(143)
    except Interrupted as err:  # work outside Lightning stopped by Ctrl-C (130) or SIGTERM (143); it says what it kept
        print(err, file=sys.stderr)
        sys.exit(err.exit_code)
    except StageFailed as err:  # `adapt run`: a stage's process failed; exit with its own code, not a usage error's
        if debug:
            raise
        print(f"adapt: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except ArgumentError as err:  # a verb's option jsonargparse cannot read
        if debug:
            raise
        print(f"adapt: error: {' '.join(str(err).split())}", file=sys.stderr)
        sys.exit(2)
    except (ConfigError, DataError, TrainingStopped) as err:
        if debug:
            raise
        print(f"adapt: error: {_one_line(err)}", file=sys.stderr)
        sys.exit(1 if isinstance(err, TrainingStopped) else 2)


def _one_line(err: BaseException) -> str:
    """The message of ``err``; for one re-raised from a DataLoader worker, its last line (the worker's own words
    follow a traceback there). Text, because torch keeps no structured form: its worker re-raises the exception's
    type with a new message (the worker's traceback as text), and the original exception object is gone."""
    lines = [line for line in str(err).strip().splitlines() if line.strip()]
    if len(lines) > 1 and "Original Traceback" in str(err):
        last = lines[-1]
        return last.split(": ", 1)[1] if last.startswith(("adapt.", "DataError")) and ": " in last else last
    return " ".join(lines)


if __name__ == "__main__":
    main()
