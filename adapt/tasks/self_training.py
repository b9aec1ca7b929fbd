"""SelfTrainingTask: F as a student taught on target images by its own EMA teacher (the DACS / DAFormer line)."""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as nnf

from adapt.data.sampling import MIX, derive_seed, global_seed
from adapt.errors import ConfigError
from adapt.losses import downscale_labels, entropy, feature_distance
from adapt.nets.translator import translate_padded
from adapt.tasks.mixing import (block_masks, classmix_masks, ema_alpha, ema_update, mix, pseudo_labels,
                                statistics_kept, strong_photometric)
from adapt.tasks.segmentation import SegmentationTask

# DAFormer's thing classes (Cityscapes names): the classes the ImageNet feature distance applies to
CITYSCAPES_THINGS = ("traffic light", "traffic sign", "person", "rider", "car", "truck", "bus", "train",
                     "motorcycle", "bicycle")


class SelfTrainingTask(SegmentationTask):
    """Self-training with an EMA teacher, ClassMix and confidence-weighted pseudo-labels.

    Every step, with source batch (x_s, y_s) and target batch x_t (same crop size and batch size):

    1. ``loss_s``: cross-entropy of the student F on (x_s, y_s) (x_s translated by ``translator_checkpoint``'s
       g_st first, if given: CycleGAN or FDA).
    2. The teacher (an EMA of F, eval mode, no gradient) labels x_t: pseudo-labels = its argmax; each target
       image's weight = the share of its pixels more confident than ``pseudo_threshold`` (1 without
       ``confidence_weighting``).
    3. ClassMix: half the classes of each source image pasted onto its target image, labels mixed the same way
       (source pixels weigh 1, target pixels their image's weight); without ``mixing`` the target image alone.
       Then DACS's colour jitter and blur (``strong_augment``).
    4. ``loss_m``: weighted cross-entropy of F on the mixed batch; ``loss = loss_s + lambda_target * loss_m
       (+ lambda_entropy * mean entropy of F on x_t, MinEnt)``.
    5. With ``lambda_feature_distance`` (DAFormer FD): ``+ lambda_feature_distance * fd``, the mean L2 distance
       between F's deepest encoder features of x_s and those of a frozen copy of the ImageNet encoder, over the
       feature cells that ``feature_distance_classes`` cover (>= 75 % of the cell's pixels).
    6. With ``mask_ratio`` > 0 (MIC): the target images, colour-augmented, with square blocks hidden (each with
       probability ``mask_ratio``); ``+ lambda_masked * loss_masked``, the cross-entropy of F on them against the
       teacher's pseudo-labels of the whole, unmasked images (weighted like step 2).
    7. After the optimizer step: teacher <- EMA(teacher, F) with weight ``min(1 - 1/(step + 1), ema_alpha)``.

    Rare-class sampling of the source images is the data's ``rare_class_temperature``; domain randomization of
    them its ``augment``. Every argument of ``SegmentationTask`` applies (``init_from`` starts the student and the
    teacher from an adapted F; ``warmup_steps`` ramps the learning rate up). The checkpoint's ``segmenter`` is
    the student, which ``adapt evaluate`` scores; the teacher is saved too (``teacher.*``), for resuming.

    Args:
        ema_alpha: the teacher's EMA weight (DAFormer: 0.999); 0 makes the teacher the current student (no EMA).
        pseudo_threshold: confidence above which a pixel counts as sure (DAFormer: 0.968).
        mixing: ClassMix source classes onto target images.
        confidence_weighting: weight pseudo-labels by the share of sure pixels (else weight 1).
        strong_augment: colour jitter and blur on the mixed images.
        lambda_target: weight of the mixed (pseudo-labelled) loss.
        lambda_entropy: weight of MinEnt on the target images (0: off; costs one more forward pass of F).
        lambda_feature_distance: weight of the ImageNet feature distance (0: off; DAFormer: 0.005). Needs
            ``encoder_weights`` (the frozen reference is the encoder as built, before ``init_from``).
        feature_distance_classes: names of the thing classes it applies to; None: DAFormer's Cityscapes things
            among ``class_names``.
        mask_ratio: MIC's share of hidden blocks (0: off; MIC: 0.7). Costs one more forward pass of F.
        mask_block: side of a hidden block as a share of the image height (MIC: 64 px of 512, 0.125).
        lambda_masked: weight of the masked-image loss (MIC: 1).
        keep_statistics: F's BatchNorm running statistics stay those it starts with (``init_from``: say an F whose
            statistics AdaBN took from the unlabelled target images, ``adapt tta``); every training pass
            normalizes with its own batch's statistics and records none. Off: every pass records (source, mixed).
    """

    train_domains = ("source", "target")

    def __init__(self, *args, ema_alpha: float = 0.999, pseudo_threshold: float = 0.968, mixing: bool = True,
                 confidence_weighting: bool = True, strong_augment: bool = True, lambda_target: float = 1.0,
                 lambda_entropy: float = 0.0, lambda_feature_distance: float = 0.0,
                 feature_distance_classes: list[str] | None = None, mask_ratio: float = 0.0,
                 mask_block: float = 0.125, lambda_masked: float = 1.0, keep_statistics: bool = False,
                 **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0 <= ema_alpha < 1 or not 0 <= pseudo_threshold < 1 or not 0 <= mask_ratio < 1:
            raise ConfigError(f"model.init_args.ema_alpha ({ema_alpha}), pseudo_threshold ({pseudo_threshold}) and "
                              f"mask_ratio ({mask_ratio}) must lie in [0, 1)")
        if not 0 < mask_block <= 1:
            raise ConfigError(f"model.init_args.mask_block: {mask_block}; give a share of the image height in (0, 1]")
        self.thing_classes = self._thing_classes(feature_distance_classes)
        if lambda_feature_distance > 0:
            if self.hparams.encoder_weights is None:
                raise ConfigError("model.init_args.lambda_feature_distance: the feature distance pulls F towards "
                                  "its pretrained encoder; set encoder_weights (imagenet) or lambda 0")
            self.imagenet_encoder = copy.deepcopy(self.segmenter.net.encoder).requires_grad_(False).eval()
        self.teacher = copy.deepcopy(self.segmenter).requires_grad_(False).eval()
        if self.hparams.compile:  # a deep copy would keep calling the student's compiled forward: compile anew
            self.teacher._compiled_call_impl = None
            self.teacher.compile(**({} if self.hparams.compile is True else {"backend": self.hparams.compile}))
        self._ema_step = -1  # the optimizer step the teacher last followed (no update between accumulated batches)

    def _thing_classes(self, names: list[str] | None) -> torch.Tensor:
        """int64 [K]: train indices of the feature distance's classes."""
        if names is None:
            names = [n for n in CITYSCAPES_THINGS if n in self.class_names]
        unknown = [n for n in names if n not in self.class_names]
        if unknown:
            raise ConfigError(f"model.init_args.feature_distance_classes: {unknown} are not among the classes "
                              f"{self.class_names}; name thing classes of this class set")
        return torch.tensor(sorted(self.class_names.index(n) for n in names), dtype=torch.long)

    def setup(self, stage: str) -> None:
        super().setup(stage)  # init_from loads the student
        if stage == "fit":
            self.teacher.load_state_dict(self.segmenter.state_dict())  # a resumed run restores both afterwards

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in ("teacher", "imagenet_encoder"):
            if hasattr(self, frozen):
                getattr(self, frozen).eval()  # always predicts with its (EMA / ImageNet) running statistics
        return self

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.hparams.keep_statistics:
            with statistics_kept(self.segmenter):
                return self._step(batch)
        return self._step(batch)

    def _step(self, batch: dict) -> torch.Tensor:
        hp, ignore = self.hparams, self.hparams.ignore_index
        x_s, y_s, x_t = batch["source"]["image"], batch["source"]["mask"], batch["target"]["image"]
        if x_s.shape != x_t.shape:
            raise ConfigError(f"self-training mixes source and target batches of one shape; got {tuple(x_s.shape)} "
                              f"and {tuple(x_t.shape)}: set data.init_args.crop_size (or resize)")
        if self.train_translator is not None:
            with torch.no_grad():
                x_s = translate_padded(self.train_translator, x_s)  # x_st: source content, target style

        if hp.lambda_feature_distance > 0:
            logits_s, features_s = self.segmenter.forward_features(x_s)
        else:
            logits_s = self.segmenter(x_s)
        ce_s = nnf.cross_entropy(logits_s.float(), y_s, ignore_index=ignore, reduction="sum")
        loss_s, value_s = self.global_batch_mean(ce_s, (y_s != ignore).sum())

        with torch.no_grad():
            pseudo_t, weight_t = pseudo_labels(self.teacher(x_t).float().softmax(1), hp.pseudo_threshold)
        if not hp.confidence_weighting:
            weight_t = torch.ones_like(weight_t)
        weight_t = weight_t[:, None, None].expand_as(pseudo_t)
        generator = torch.Generator().manual_seed(derive_seed(MIX, global_seed(), self.global_rank, self.global_step))
        if hp.mixing:
            masks = classmix_masks(y_s, generator, ignore)
            x_m, y_m = mix(masks, x_s, x_t), mix(masks, y_s, pseudo_t)
            w_m = mix(masks, torch.ones_like(weight_t), weight_t)
        else:
            x_m, y_m, w_m = x_t, pseudo_t, weight_t
        if hp.strong_augment:
            x_m = strong_photometric(x_m, generator)

        ce_m = nnf.cross_entropy(self.segmenter(x_m).float(), y_m, ignore_index=ignore, reduction="none")
        loss_m, value_m = self.global_batch_mean((ce_m * w_m).sum(), (y_m != ignore).sum())
        loss, value = loss_s + hp.lambda_target * loss_m, value_s + hp.lambda_target * value_m
        values = {"train/loss_source": value_s, "train/loss_mixed": value_m}  # global-batch values
        if hp.lambda_entropy > 0:
            entropy_t = entropy(self.segmenter(x_t))
            count = torch.tensor(entropy_t.numel(), device=entropy_t.device)
            loss_e, values["train/entropy"] = self.global_batch_mean(entropy_t.sum(), count)
            loss, value = loss + hp.lambda_entropy * loss_e, value + hp.lambda_entropy * values["train/entropy"]
        if hp.lambda_feature_distance > 0:
            loss_f, values["train/feature_distance"] = self._feature_distance(x_s, y_s, features_s)
            loss = loss + hp.lambda_feature_distance * loss_f
            value = value + hp.lambda_feature_distance * values["train/feature_distance"]
        if hp.mask_ratio > 0:
            loss_k, values["train/loss_masked"] = self._masked_consistency(x_t, pseudo_t, weight_t, generator)
            loss, value = loss + hp.lambda_masked * loss_k, value + hp.lambda_masked * values["train/loss_masked"]
        self.log_dict(values, batch_size=x_s.shape[0])
        self.log("train/loss", value, prog_bar=True, batch_size=x_s.shape[0])
        self.log("train/pseudo_weight", weight_t.mean(), batch_size=x_s.shape[0], sync_dist=True)
        return loss

    def _feature_distance(self, x_s: torch.Tensor, y_s: torch.Tensor,
                          features_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to backpropagate, value): the mean feature distance over the global batch's thing cells."""
        with torch.no_grad():
            reference = self.imagenet_encoder(self.segmenter.normalize(x_s))[-1]
        cells = downscale_labels(y_s, features_s.shape[-2:], len(self.class_names),
                                 ignore_index=self.hparams.ignore_index)
        total, count = feature_distance(features_s, reference, torch.isin(cells, self.thing_classes.to(cells.device)))
        return self.global_batch_mean(total, count)

    def _masked_consistency(self, x_t: torch.Tensor, pseudo_t: torch.Tensor, weight_t: torch.Tensor,
                            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """MIC: (loss to backpropagate, value), the weighted cross-entropy of F on colour-augmented x_t with blocks
        hidden against the teacher's labels of the whole x_t (``pseudo_t`` int64 [B, H, W], ``weight_t`` [B, H, W])."""
        x_aug = strong_photometric(x_t, generator)  # (draws first, then the masks)
        block = max(1, round(self.hparams.mask_block * x_t.shape[2]))
        masks = block_masks((x_t.shape[0], *x_t.shape[2:]), self.hparams.mask_ratio, block, generator)
        x_masked = x_aug * masks.to(x_t)
        with statistics_kept(self.segmenter):  # 70 % black images must not become F's BatchNorm statistics
            logits_masked = self.segmenter(x_masked)
        ce = nnf.cross_entropy(logits_masked.float(), pseudo_t, reduction="none")
        return self.global_batch_mean((ce * weight_t).sum(), torch.tensor(ce.numel(), device=ce.device))

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """The EMA update, after the optimizer step (``global_step`` already counts it). Under DDP the students are
        identical after the step, except BatchNorm statistics, which each process gathers from its own share: the
        teacher's buffers are then taken from process 0, so that every process holds the same teacher."""
        if self.global_step == self._ema_step:
            return  # an accumulation batch: no optimizer step yet
        self._ema_step = self.global_step
        ema_update(self.teacher, self.segmenter, ema_alpha(self.global_step - 1, self.hparams.ema_alpha))
        if self.trainer.world_size > 1:
            for buffer in self.teacher.buffers():
                torch.distributed.broadcast(buffer, src=0)
