"""AdversarialTask: F trained on labelled source images while a domain discriminator D tells source from target
and F learns to fool it: at the output (AdvEnt) or at the encoder's features (CyCADA's feature level)."""

from __future__ import annotations

import contextlib
from typing import Literal

import torch
from torch.nn.parallel import DistributedDataParallel

from adapt.errors import ConfigError
from adapt.losses import SOURCE_LABEL, discriminator_bce, domain_bce, pixel_cross_entropy, self_information
from adapt.nets.discriminator import FeatureDiscriminator, OutputDiscriminator
from adapt.nets.translator import translate_padded
from adapt.optimization import lr_factor
from adapt.tasks.mixing import statistics_kept
from adapt.tasks.segmentation import SegmentationTask

Level = Literal["output", "feature"]
Norm = Literal["train", "keep_statistics"]


class AdversarialTask(SegmentationTask):
    """Adversarial domain alignment of F (manual optimization, one F step and one D step per batch, as ADVENT's
    ``train_advent`` and Lightning's GAN example).

    ``level: output`` is AdvEnt (Vu et al., CVPR 2019; valeoai/ADVENT): D (``OutputDiscriminator``, five 4x4
    stride-2 convolutions) reads F's weighted self-information map ``I = -p log2 p / log2 C`` per class
    (``adapt.losses.self_information``, from the softmax at the input's resolution). ``level: feature`` is CyCADA's
    feature-level alignment (Hoffman et al. 2018): D (``FeatureDiscriminator``, 1x1 convolutions: an MLP per
    cell) reads F's deepest encoder features [B, D, H/32, W/32] (``Segmenter.forward_features``). Every step,
    with source batch (x_s, y_s) and target batch x_t of one shape:

    1. F's step (D's parameters toggled off: no gradient reaches them): ``loss = CE(F(x_s), y_s) + lambda_adv *
       BCE(D(z_t), source label)``, z_t being D's input from x_t; the cross-entropy is a mean over the labelled
       pixels of the global batch (``global_batch_mean``). Source label 0, target label 1, as ADVENT.
    2. D's step (F's parameters toggled off) on the detached inputs of step 1:
       ``(BCE(D(z_s), 0) + BCE(D(z_t), 1)) / 2``, each half a mean over its domain's cells (ADVENT's halves).
    3. Both learning rates follow F's schedule (``lr_schedule``, ``poly_power``, ``warmup_steps``) per batch, as
       ADVENT decays both by the same poly law; the schedule spans the run's batches.

    Lightning counts both optimizer steps in ``global_step``: it grows by 2 per batch, so ``trainer.max_steps`` is
    twice the number of iterations (epochs count batches as usual). Logged: ``train/loss`` (F's), ``loss_source``,
    ``loss_adv``, ``loss_d`` and ``d_accuracy`` (the share of D's cells on the right side of 0, the mean of the
    source and target shares), all global-batch values. Under DDP F and D are both this task's parameters, wrapped
    and kept identical by DDP; the two backward passes need ``strategy: ddp_find_unused_parameters_true``.

    Not reproduced: AdvEnt's multi-level variant (a second D on a conv4 auxiliary classifier, lambda 0.0002, with
    its segmentation loss at weight 0.1), which needs DeepLabV2's auxiliary head; CyCADA's separate frozen source
    network and its rule of updating F only while D is more than 60 % accurate (here one F shared by both domains,
    trained on the source labels, as CyCADA's ``weights_shared`` option). Every argument of ``SegmentationTask``
    applies (F's optimizer, its parameter groups and schedule; ``init_from``; ``translator_checkpoint``: x_s
    translated by g_st first, CyCADA's pixel level under the feature level). The checkpoint is an F checkpoint
    (``adapt evaluate`` scores F); D and both optimizers are saved too, for ``--ckpt_path``.

    Args:
        level: ``output`` (AdvEnt) or ``feature`` (CyCADA).
        lambda_adv: weight of F's adversarial term (AdvEnt: 0.001, set for DeepLabV2 on GTA5 -> Cityscapes).
        discriminator_lr: D's Adam learning rate (AdvEnt: 1e-4), decayed as F's.
        discriminator_betas: D's Adam betas (AdvEnt: 0.9, 0.99).
        ndf: the output discriminator's first width (AdvEnt: 64; then 128, 256, 512, 1).
        feature_width: the feature discriminator's hidden width (512, CyCADA's for features other than FCN-8s'
            4096-channel fc7; its second layer has half as many).
        feature_dropout: Dropout2d after each hidden layer of the feature discriminator (CyCADA: 0.5).
        norm: F's BatchNorm layers. ``train``: both passes normalize with their batch's statistics and record
            running statistics (ADVENT, whose DeepLabV2 runs in train mode). ``keep_statistics``: batch statistics,
            but the running ones stay those F starts with (an ``init_from`` F whose statistics AdaBN took from the
            target images, say).
    """

    train_domains = ("source", "target")

    def __init__(self, *args, level: Level = "output", lambda_adv: float = 0.001, discriminator_lr: float = 1e-4,
                 discriminator_betas: tuple[float, float] = (0.9, 0.99), ndf: int = 64, feature_width: int = 512,
                 feature_dropout: float = 0.5, norm: Norm = "train", **kwargs) -> None:
        _check_arguments(level, lambda_adv, discriminator_lr, discriminator_betas, ndf, feature_width,
                         feature_dropout, norm)
        super().__init__(*args, **kwargs)  # save_hyperparameters records these arguments too
        self.automatic_optimization = False
        if level == "feature" and self.hparams.freeze_encoder:
            raise ConfigError("model.init_args.freeze_encoder: the feature discriminator reads the encoder's features, "
                              "which a frozen encoder cannot move; set freeze_encoder: false or level: output")
        if level == "output":
            self.discriminator = OutputDiscriminator(len(self.class_names), ndf)
        else:
            channels = self.segmenter.net.encoder.out_channels[-1]
            self.discriminator = FeatureDiscriminator(channels, feature_width, feature_dropout)
        if self.hparams.channels_last:
            self.discriminator.to(memory_format=torch.channels_last)

    def on_fit_start(self) -> None:
        wrapper = self.trainer.strategy.model  # torch's DistributedDataParallel under DDP
        if isinstance(wrapper, DistributedDataParallel) and not wrapper.find_unused_parameters:
            raise ConfigError("trainer.strategy: the adversarial task updates F and its discriminator in separate "
                              "backward passes; use strategy: ddp_find_unused_parameters_true")
        super().on_fit_start()

    def training_step(self, batch: dict, batch_idx: int) -> None:
        hp = self.hparams
        x_s, y_s, x_t = self._inputs(batch)
        opt_f, opt_d = self.optimizers()

        # F: segment the source; make the target's D input read "source" to D (whose weights get no gradient)
        self.toggle_optimizer(opt_f)
        with statistics_kept(self.segmenter) if hp.norm == "keep_statistics" else contextlib.nullcontext():
            logits_s, z_s = self._passes(x_s)
            _, z_t = self._passes(x_t)
        loss_s, value_s = self.global_batch_mean(*pixel_cross_entropy(logits_s, y_s))
        loss_adv = domain_bce(self.discriminator(z_t), SOURCE_LABEL)
        opt_f.zero_grad()
        self.manual_backward(loss_s + hp.lambda_adv * loss_adv)
        opt_f.step()
        self.untoggle_optimizer(opt_f)

        # D: source inputs labelled 0, target inputs 1, both detached from F (one pass over both batches)
        self.toggle_optimizer(opt_d)
        scores_s, scores_t = self.discriminator(torch.cat([z_s.detach(), z_t.detach()])).split(x_s.shape[0])
        loss_d = discriminator_bce(scores_s, scores_t)
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        for scheduler in self.lr_schedulers():
            scheduler.step()
        accuracy = ((scores_s < 0).float().mean() + (scores_t > 0).float().mean()) / 2
        values = {"train/loss_source": value_s, "train/loss_adv": loss_adv.detach(), "train/loss_d": loss_d.detach(),
                  "train/d_accuracy": accuracy}
        # synced means of equal shares: the global batch's values (value_s is one on every process already)
        self.log("train/loss", value_s + hp.lambda_adv * loss_adv.detach(), prog_bar=True, batch_size=x_s.shape[0],
                 sync_dist=True)
        self.log_dict(values, batch_size=x_s.shape[0], sync_dist=True)

    def _inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_s float [B, 3, H, W] (translated to target style with ``translator_checkpoint``), y_s int64 [B, H, W],
        x_t float [B, 3, H, W]), checked to share one shape (D scores both in one pass)."""
        x_s, y_s, x_t = batch["source"]["image"], batch["source"]["mask"], batch["target"]["image"]
        if x_s.shape != x_t.shape:
            raise ConfigError(f"adversarial alignment scores source and target batches of one shape; got "
                              f"{tuple(x_s.shape)} and {tuple(x_t.shape)}: set data.init_args.crop_size (or resize)")
        if self.train_translator is not None:
            with torch.no_grad():
                x_s = translate_padded(self.train_translator, x_s)  # x_st: source content, target style
        return x_s, y_s, x_t

    def _passes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """F on float [B, 3, H, W] in [0, 1] -> (logits float [B, C, H, W], D's input: the self-information map
        float [B, C, H, W] (``output``) or F's deepest encoder features float [B, D, H/32, W/32] (``feature``))."""
        if self.hparams.level == "output":
            logits = self.segmenter(x)
            return logits, self_information(logits)
        return self.segmenter.forward_features(x)

    def configure_optimizers(self):
        hp = self.hparams
        chosen = super().configure_optimizers()  # F's optimizer: its parameter groups, SGD or AdamW
        opt_f = chosen["optimizer"] if isinstance(chosen, dict) else chosen
        theirs = {id(p) for p in self.discriminator.parameters()}
        for group in opt_f.param_groups:  # F's groups hold every parameter outside the encoder: D's leave them
            group["params"] = [p for p in group["params"] if id(p) not in theirs]
            # and the schedule super() attached goes: it counts optimizer steps, of which Lightning counts 2 a batch
            group["lr"] = group.pop("initial_lr", group["lr"])
        opt_d = torch.optim.Adam(self.discriminator.parameters(), lr=hp.discriminator_lr,
                                 betas=tuple(hp.discriminator_betas))
        iterations = int(self.trainer.estimated_stepping_batches)
        if self.trainer.max_steps > 0:  # max_steps counts optimizer steps: two per iteration
            iterations = min(iterations, self.trainer.max_steps // 2)
        iterations = max(iterations, 1)

        def factor(step: int) -> float:
            return lr_factor(step, iterations, hp.warmup_steps, hp.lr_schedule, hp.poly_power)

        return ([opt_f, opt_d], [torch.optim.lr_scheduler.LambdaLR(opt_f, factor),
                                 torch.optim.lr_scheduler.LambdaLR(opt_d, factor)])


def _check_arguments(level: str, lambda_adv: float, discriminator_lr: float, betas, ndf: int, feature_width: int,
                     feature_dropout: float, norm: str) -> None:
    """A one-line ConfigError naming the first argument out of range."""
    for key, value, allowed in (("level", level, Level), ("norm", norm, Norm)):
        if value not in allowed.__args__:
            raise ConfigError(f"model.init_args.{key}: {value!r}; choose {' or '.join(allowed.__args__)}")
    if not lambda_adv >= 0:
        raise ConfigError(f"model.init_args.lambda_adv: {lambda_adv}; give a weight >= 0 (AdvEnt: 0.001)")
    if not discriminator_lr > 0:
        raise ConfigError(f"model.init_args.discriminator_lr: {discriminator_lr}; give a learning rate > 0 (1e-4)")
    if len(betas) != 2 or not all(0 <= b < 1 for b in betas):
        raise ConfigError(f"model.init_args.discriminator_betas: {list(betas)}; give two values in [0, 1) "
                          "(AdvEnt: [0.9, 0.99])")
    for key, value in (("ndf", ndf), ("feature_width", feature_width)):
        if value < 1:
            raise ConfigError(f"model.init_args.{key}: {value}; give a width >= 1")
    if not 0 <= feature_dropout < 1:
        raise ConfigError(f"model.init_args.feature_dropout: {feature_dropout}; give a probability in [0, 1)")
