"""SegmentationTask: train F on labelled source batches (with DR in the data pipeline), evaluate on the target."""

from __future__ import annotations

import inspect
import math
from pathlib import Path
from types import SimpleNamespace
from typing import Literal

import pytorch_lightning as pl
import torch
from pytorch_lightning.utilities import rank_zero_info

from adapt.checkpoints import (SEGMENTER_KIND, LoadedSegmenter, domain_name, load_segmenter, load_translator,
                               require_kind)
from adapt.data.cityscapes import class_palette
from adapt.data.labels import IGNORE_INDEX
from adapt.data.sampling import decorrelate_processes
from adapt.errors import ConfigError
from adapt.inference import make_protocol, predict, report_sample
from adapt.intervals import per_image_record
from adapt.losses import global_batch_mean, pixel_cross_entropy
from adapt.metrics import (Calibration, ClassSubset, ConfusionMatrix, Validators, check_class_subsets,
                           confusion_matrices, image_counts, summarize)
from adapt.nets.segmenter import build_segmenter, load_matching
from adapt.nets.translator import translate_padded
from adapt.optimization import lr_scheduler, parameter_groups
from adapt.plots import example_row, log_picture
from adapt.tasks.mixes import SOURCE_MIXINGS, check_mixing, mix_within, mixed_loss, step_generator

VAL_PICTURES = 4  # validation examples logged as pictures each round (to loggers that take pictures)


class SegmentationTask(pl.LightningModule):
    """Supervised training of the segmenter F on the source domain; validation and test on a labelled target set.

    Args:
        arch: ``unet``, ``fpn``, ``deeplabv3plus``, ``fcn``, ``segformer``, ``upernet``, ``daformer`` or ``dpt``
            (see ``build_segmenter``).
        encoder_name: smp encoder name.
        encoder_weights: ``imagenet``, None (random), or an encoder weights file: smp's naming, SegFormer's MiT release
            (``mit_b5.pth``), timm's or DINOv2's naming for ``tu-`` encoders (``adapt.nets.pretrained``).
        class_names: class names in train-index order; recipes leave it out and the CLI takes it from the data.
        lr: peak learning rate.
        weight_decay: decoupled weight decay (AdamW) or L2 (SGD).
        optimizer: ``adamw`` or ``sgd`` (momentum 0.9, nesterov).
        lr_schedule: ``poly`` (lr * (1 - step / total) ** poly_power, per step) or ``constant``.
        poly_power: the poly schedule's power (0.9; DAFormer / HRDA / MIC: 1.0).
        translator_checkpoint: a TranslationTask checkpoint; F then trains on ``g_st(x_s)`` (source images
            rendered in target style by the frozen translator, on the fly) instead of ``x_s``.
        segmenter_kwargs: further smp model arguments, by smp's names (``decoder_dropout: 0.0`` for FPN, say).
        channels_last: keep F's weights and inputs in NHWC memory order (faster convolutions on tensor-core GPUs).
        compile: compile F with ``torch.compile``: True for its default backend (inductor; first steps slower, needs
            a C++ compiler on CPUs), or a backend name (``aot_eager``, ...). Checkpoints keep the plain names.
        init_from: an F checkpoint (``load_segmenter``) whose F weights start this fit (fine-tuning: weights only; the
            optimizer, schedule and step start afresh, unlike ``--ckpt_path``, which resumes a run). Classes are
            matched by name (``adapt.nets.segmenter.load_matching``): shared classes keep their classifier rows,
            new ones start fresh, so a new domain may rename, reorder, add or drop classes.
        freeze_encoder: keep the encoder's weights and BatchNorm statistics fixed; only the decoder trains.
        encoder_lr_factor: the encoder learns at ``lr * encoder_lr_factor`` (0.1 is common when fine-tuning).
        head_lr_factor: every parameter that is not the encoder's (decoder and classifier) learns at
            ``lr * head_lr_factor``. DAFormer's recipe: lr 6e-5, head_lr_factor 10.
        warmup_steps: mmcv's linear warmup (DAFormer's): the learning rate rises from ``1e-6 * lr`` at step 0 to
            ``lr_schedule``'s own value at ``warmup_steps`` (``adapt.optimization.lr_factor``).
        encoder_norm_decay: weight decay on the encoder's normalisation layers; false exempts them, as DAFormer /
            HRDA / MIC do (``adapt.optimization.parameter_groups``).
        class_subsets: means over class subsets reported beside the mIoU (``adapt.metrics.CLASS_SUBSETS``):
            ``[synthia16, synthia13]`` logs ``val/miou_16`` and ``val/miou_13`` (SYNTHIA -> Cityscapes), and
            ``adapt evaluate`` of the checkpoint writes them into metrics.json.
        mixing: ``cutmix``, ``mixup`` or ``moex`` of each source image with a partner of its batch, null: off
            (``adapt.tasks.mixes``; ``SelfTrainingTask``'s own ``mixing`` leaves its source term unmixed), with
            ``mixing_alpha`` (lam ~ Beta(alpha, alpha)), ``moex_lambda`` and ``moex_layer`` (``stem`` or ``C2``).
    """

    train_domains = ("source",)  # the training batches it reads: DomainDataModule loads no target images
    # recipe keys of earlier versions -> their spelling now (adapt.recipe names it in a one-line error)
    renamed_arguments: dict[str, str] = {
        "ignore_index": "(labels mark unlabelled pixels with 255, adapt.data.labels.IGNORE_INDEX; drop the key)"}

    def __init__(self, arch: str = "unet", encoder_name: str = "resnet18", encoder_weights: str | None = None,
                 class_names: list[str] | None = None, lr: float = 1e-3, weight_decay: float = 1e-4,
                 optimizer: Literal["adamw", "sgd"] = "adamw", lr_schedule: Literal["poly", "constant"] = "poly",
                 translator_checkpoint: str | None = None,
                 segmenter_kwargs: dict | None = None, channels_last: bool = False,
                 compile: bool | str = False, init_from: str | None = None, freeze_encoder: bool = False,
                 encoder_lr_factor: float = 1.0, head_lr_factor: float = 1.0, warmup_steps: int = 0,
                 class_subsets: list[ClassSubset] | None = None, poly_power: float = 0.9,
                 encoder_norm_decay: bool = True, mixing: Literal["cutmix", "mixup", "moex"] | None = None,
                 mixing_alpha: float = 1.0, moex_lambda: float = 0.9, moex_layer: Literal["stem", "C2"] = "stem"
                 ) -> None:
        super().__init__()
        if not class_names:
            raise ConfigError("model.class_names: empty; give the class names (the CLI takes them from the data)")
        if warmup_steps < 0:
            raise ConfigError(f"model.init_args.warmup_steps: {warmup_steps}; give 0 (no warmup) or more steps")
        if not poly_power > 0:
            raise ConfigError(f"model.init_args.poly_power: {poly_power}; give a power > 0 (0.9, or 1.0 for a linear "
                              "decay)")
        self.save_hyperparameters()
        self.class_names = list(class_names)
        self.class_subsets = check_class_subsets(class_subsets, self.class_names, "model.init_args.class_subsets")
        self.segmenter = build_segmenter(arch, encoder_name, encoder_weights, num_classes=len(class_names),
                                         **(segmenter_kwargs or {}))
        self.segmenter.net.encoder.requires_grad_(not freeze_encoder)
        check_mixing(mixing, SOURCE_MIXINGS, self.segmenter, mixing_alpha, moex_lambda, moex_layer, bool(compile))
        self.source_mixing = mixing  # (SelfTrainingTask's hparams.mixing is its own; this stays None there)
        self.train()  # a frozen encoder goes to eval mode now (Lightning restores submodule modes it captured)
        if channels_last:
            self.segmenter.to_channels_last()
        if compile:
            self.segmenter.compile(**({} if compile is True else {"backend": compile}))
        self.val_cm = ConfusionMatrix(len(class_names), IGNORE_INDEX)
        self.test_cm = ConfusionMatrix(len(class_names), IGNORE_INDEX)
        self.val_calibration = Calibration(ignore_index=IGNORE_INDEX)
        self.val_validators = Validators(len(class_names))  # label-free scores of the validation predictions
        self.test_calibration = Calibration(ignore_index=IGNORE_INDEX)
        self.test_results: dict = {}  # metrics of the last test run, with ``per_image`` counts (adapt.intervals)
        self.test_images: list[dict] = []  # this test run's per-image counts, batch by batch
        self.eval_protocol: dict = make_protocol("full")  # how validation / test images become logits
        self.num_examples = 0  # test samples kept in ``examples`` for a report (set by adapt.workflows.evaluate)
        self.examples: list[dict] = []
        self._val_pictures = 0  # validation samples kept as pictures this round (loggers that take them)
        # frozen translators sit on a plain holder: a net set as a module attribute would become a submodule (trained,
        # saved in F's checkpoint); these are neither, and on_validation_start moves them to F's device and dtype
        self.frozen = SimpleNamespace(train=None, eval=None)

    train_translator = property(lambda self: self.frozen.train, doc="g_st applied to x_s in training_step, or None")
    eval_translator = property(lambda self: self.frozen.eval, doc="g_ts applied to x_t before F in val / test, or None")

    def setup(self, stage: str) -> None:
        if stage == "fit" and self.hparams.init_from:  # a resumed run (--ckpt_path) overwrites these weights later
            self.init_from(self.hparams.init_from)
        if stage == "fit" and self.hparams.translator_checkpoint and self.train_translator is None:
            data = self.trainer.datamodule if self._trainer is not None else None  # .trainer raises when unattached
            source = {"source": domain_name(data.source_root)} if hasattr(data, "source_root") else None
            self.frozen.train = load_translator(self.hparams.translator_checkpoint, "source-to-target", source,
                                                "model.init_args.translator_checkpoint")

    def init_from(self, checkpoint: str | Path) -> dict[str, list[str]]:
        """Load F's weights from another F checkpoint (``load_segmenter``), classes matched by name (``init_from``)."""
        loaded = load_segmenter(checkpoint, "model.init_args.init_from")
        match = load_matching(self.segmenter, loaded.segmenter.state_dict(), loaded.class_names, self.class_names)
        rank_zero_info(f"init_from {loaded.path}: {len(match['shared'])} classes kept, new: "
                       f"{match['new'] or 'none'}, dropped: {match['dropped'] or 'none'}")
        return match

    @classmethod
    def for_evaluation(cls, loaded: LoadedSegmenter) -> "SegmentationTask":
        """A task around an F that ``adapt.checkpoints.load_segmenter`` loaded (of any task built on this one), for
        Lightning's test loop: the checkpoint's own arguments (classes, ignore index, class subsets, memory order)
        and its F itself; no encoder weights fetched, no file read here."""
        names = set(inspect.signature(cls.__init__).parameters) - {"self", "compile", "encoder_weights", "init_from",
                                                                   "mixing"}
        task = cls(**{k: v for k, v in loaded.hyper_parameters.items() if k in names}, encoder_weights=None)
        task.segmenter = loaded.segmenter  # replaces the one built from the same arguments
        if loaded.channels_last:
            task.segmenter.to_channels_last()
        return task

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["kind"] = SEGMENTER_KIND  # what adapt.checkpoints.load_segmenter accepts

    def on_load_checkpoint(self, checkpoint: dict) -> None:  # --ckpt_path: Lightning restores the whole task
        require_kind(checkpoint, (SEGMENTER_KIND,), "--ckpt_path", self._trainer and self._trainer.ckpt_path or "it")

    def train(self, mode: bool = True):
        """Lightning's train/eval switch; a frozen encoder stays in eval mode (its BatchNorm statistics fixed)."""
        super().train(mode)
        if self.hparams.freeze_encoder:
            self.segmenter.net.encoder.eval()
        return self

    def set_eval_translator(self, generator: torch.nn.Module | None) -> None:
        """Evaluate F(T(x_t)): ``generator`` (g_ts, frozen) maps target images to source style before F."""
        self.frozen.eval = generator

    def set_eval_protocol(self, protocol: dict | None) -> None:
        """Evaluate under ``protocol`` (``adapt.inference.make_protocol``: full, resize or slide; None = full)."""
        self.eval_protocol = protocol or make_protocol("full")

    def on_fit_start(self) -> None:
        decorrelate_processes(self.trainer.global_rank)
        self.on_validation_start()

    def on_validation_start(self) -> None:
        for translator in (self.train_translator, self.eval_translator):
            if translator is not None:
                translator.to(self.device, self.dtype)  # frozen nets follow the precision (64-true)

    def on_test_start(self) -> None:
        self.on_validation_start()
        self.examples, self.test_images = [], []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """float [B, 3, H, W] in [0, 1], any H, W -> logits float [B, C, H, W] under ``eval_protocol``."""
        return predict(self.segmenter, x, self.eval_protocol, self.segmenter.output_stride)

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        x_s, y_s = batch["source"]["image"], batch["source"]["mask"]
        if self.train_translator is not None:
            with torch.no_grad():
                x_s = translate_padded(self.train_translator, x_s)  # x_st: source content, target style
        if self.source_mixing is None:
            loss, loss_global = self.global_batch_mean(*pixel_cross_entropy(self.segmenter(x_s), y_s))
        else:  # each image with a partner of its batch, drawn by the step's generator
            mixed = mix_within(self.source_mixing, x_s, y_s, step_generator(self.global_rank, self.global_step),
                               self.hparams.mixing_alpha, self.hparams.moex_lambda)
            loss, loss_global = mixed_loss(self.segmenter, mixed, self.hparams.moex_layer, self.global_batch_mean)
        self.log("train/loss", loss_global, prog_bar=True, batch_size=x_s.shape[0])
        return loss

    def global_batch_mean(self, total: torch.Tensor, count: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``adapt.losses.global_batch_mean`` over this run's processes: (this process's summed loss, its labelled
        pixels) -> (loss to backpropagate, value)."""
        world_size = self.trainer.world_size if self._trainer is not None else 1
        return global_batch_mean(total, count, world_size,
                                 lambda sums: self.trainer.strategy.reduce(sums, reduce_op="sum"))

    def _evaluate_step(self, batch: dict, cm: ConfusionMatrix, calibration: Calibration,
                       keep: int = 0, validators: Validators | None = None) -> torch.Tensor:
        """Update the metrics with one batch; returns the predictions ``pred_t`` int64 [B, H, W]."""
        x_t, y_t = batch["image"], batch["mask"]
        x_ts = translate_padded(self.eval_translator, x_t) if self.eval_translator is not None else None
        logits_t = self(x_t if x_ts is None else x_ts)  # x_ts: target content, source style
        probs_t = logits_t.softmax(1)
        confidence_t, pred_t = probs_t.max(1)
        if validators is not None:
            validators.update(probs_t)  # reads predictions only, never y_t
        cm.update(pred_t, y_t)
        calibration.update(confidence_t, pred_t, y_t)
        for i in range(min(keep, x_t.shape[0])):
            self.examples.append(report_sample(x_t[i], pred_t[i], y_t[i], None if x_ts is None else x_ts[i]))
        return pred_t

    def on_validation_epoch_start(self) -> None:
        self.examples = []
        self._val_pictures = VAL_PICTURES if not self.trainer.sanity_checking and any(  # once per round
            hasattr(getattr(logger, "experiment", None), "add_image") for logger in self.loggers) else 0

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._evaluate_step(batch, self.val_cm, self.val_calibration, self._val_pictures - len(self.examples),
                            validators=self.val_validators)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        pred_t = self._evaluate_step(batch, self.test_cm, self.test_calibration, self.num_examples - len(self.examples))
        matrices = confusion_matrices(pred_t, batch["mask"], self.test_cm.num_classes, self.test_cm.ignore_index)
        self.test_images.append({"names": batch["name"], **{k: v.cpu() for k, v in image_counts(matrices).items()}})

    def _log_metrics(self, stage: str, cm: ConfusionMatrix, calibration: Calibration) -> dict:
        matrix = cm.compute()
        results = dict(summarize(matrix, self.class_names, self.class_subsets), **calibration.compute(),
                       confusion_matrix=matrix.cpu().tolist())
        cm.reset()
        calibration.reset()
        values = {f"{stage}/miou": results["miou"], f"{stage}/pixel_accuracy": results["pixel_accuracy"],
                  f"{stage}/ece": results["ece"]}
        values.update({f"{stage}/{note['metric']}": results[note["metric"]]
                       for note in results.get("class_subsets", {}).values()})  # val/miou_16, val/miou_13
        values.update({f"{stage}/iou/{name}": v for name, v in results["per_class_iou"].items()})
        # already reduced over all processes by the metric: log the same number on every rank, no second sync
        self.log_dict({k: math.nan if v is None else float(v) for k, v in values.items()}, sync_dist=False)
        return results

    def on_validation_epoch_end(self) -> None:
        self._log_metrics("val", self.val_cm, self.val_calibration)
        palette = class_palette(self.class_names)
        for i, example in enumerate(self.examples):  # x_t | prediction | label, for TensorBoard
            log_picture(self.loggers, f"val/example_{i}", example_row(example, palette), self.global_step)
        self.examples = []
        scores = self.val_validators.compute()  # reduced over all processes by the metric
        self.val_validators.reset()
        shares = scores.pop("share")  # predicted class shares (%) on the target: CheckpointSelection keeps them
        self.log_dict({f"val/{name}": value for name, value in scores.items()}, sync_dist=False)
        self.log_dict({f"val/share/{n}": float(v) for n, v in zip(self.class_names, shares)}, sync_dist=False)

    def on_test_epoch_end(self) -> None:
        self.test_results = self._log_metrics("test", self.test_cm, self.test_calibration)
        batches, self.test_images = self.test_images, []
        if self.trainer.world_size > 1:  # each process scored its own images: gather them all (not logged)
            parts = [None] * self.trainer.world_size
            torch.distributed.all_gather_object(parts, batches)
            batches = [batch for part in parts for batch in part]
        self.test_results["per_image"] = per_image_record(batches)

    def configure_optimizers(self):
        hp = self.hparams
        # group 0: decoder and heads; 1: the encoder (empty when frozen); 2 (encoder_norm_decay false): its norms
        groups = [{"params": params, "lr": hp.lr * factor, "weight_decay": decay} for params, factor, decay
                  in parameter_groups(self, self.segmenter.net.encoder, hp.head_lr_factor, hp.encoder_lr_factor,
                                      hp.weight_decay, hp.encoder_norm_decay)]
        if hp.optimizer == "sgd":
            optimizer = torch.optim.SGD(groups, lr=hp.lr, momentum=0.9, nesterov=True, weight_decay=hp.weight_decay)
        else:
            optimizer = torch.optim.AdamW(groups, lr=hp.lr, weight_decay=hp.weight_decay)
        if hp.lr_schedule == "constant" and not hp.warmup_steps:
            return optimizer
        schedule = lr_scheduler(optimizer, max(int(self.trainer.estimated_stepping_batches), 1), hp.warmup_steps,
                                hp.lr_schedule, hp.poly_power)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": schedule, "interval": "step"}}
