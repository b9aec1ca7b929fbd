"""SelfTrainingTask: F as a student taught on target images by its own EMA teacher (the DACS / DAFormer line)."""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as nnf

from adapt.data.sampling import MIX, derive_seed, global_seed
from adapt.errors import ConfigError
from adapt.inference import make_protocol
from adapt.losses import downscale_labels, entropy, feature_distance
from adapt.nets.hrda import check_settings
from adapt.nets.segmenter import batch_norms
from adapt.nets.translator import translate_padded
from adapt.tasks.hrda import multi_resolution_loss, pixel_cross_entropy
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
    8. With ``hrda`` (HRDA, ``adapt.nets.hrda``): F gains a scale-attention head, and every pass of the student
       in steps 1, 4, 5 and 6 is multi-resolution: the crop (the data's ``crop_size``, HRDA: 1024 x 1024) resized
       by ``hrda_context_scale`` is the context, a full-resolution ``hrda_detail_crop`` inside it (drawn per batch,
       offsets on multiples of F's output stride, 32 px) the detail; each loss is
       ``(1 - hrda_detail_loss_weight)`` x that of the fused logits + ``hrda_detail_loss_weight`` x that of the
       detail logits on the detail box (HRDA's weighting; MinEnt and the feature distance use the fused logits
       and the context's features). The teacher's
       pseudo-labels, validation and every later use of F (``adapt evaluate`` / ``predict``) fuse the context
       with overlapping detail windows (stride half the detail crop) over the whole input; validation during
       fit slides windows of the training crop (stride half of it), HRDA's test setting.

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
        freeze_norm: F's BatchNorm layers stay in eval mode while it trains: every pass (source, mixed, masked)
            normalizes with the running statistics F starts with, the ones it is evaluated with, and records none
            (their scale and shift still learn). Implies ``keep_statistics``.
        hrda: HRDA's multi-resolution training and inference (step 8; off by default).
        hrda_context_scale: the context's resolution relative to the crop, 1/k (HRDA: 0.5).
        hrda_detail_crop: height and width of the detail crop at full resolution, multiples of F's output stride
            (32) no larger than the crop (HRDA: 512 512).
        hrda_detail_loss_weight: weight of the detail logits' loss, in [0, 1] (HRDA: 0.1).
    """

    train_domains = ("source", "target")

    def __init__(self, *args, ema_alpha: float = 0.999, pseudo_threshold: float = 0.968, mixing: bool = True,
                 confidence_weighting: bool = True, strong_augment: bool = True, lambda_target: float = 1.0,
                 lambda_entropy: float = 0.0, lambda_feature_distance: float = 0.0,
                 feature_distance_classes: list[str] | None = None, mask_ratio: float = 0.0,
                 mask_block: float = 0.125, lambda_masked: float = 1.0, keep_statistics: bool = False,
                 freeze_norm: bool = False,
                 hrda: bool = False, hrda_context_scale: float = 0.5, hrda_detail_crop: tuple[int, int] = (512, 512),
                 hrda_detail_loss_weight: float = 0.1, **kwargs) -> None:
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
        if hrda:
            if not 0 <= hrda_detail_loss_weight <= 1:
                raise ConfigError(f"model.init_args.hrda_detail_loss_weight: {hrda_detail_loss_weight}; give a "
                                  "weight in [0, 1] (HRDA: 0.1)")
            self.segmenter.enable_multi_resolution(hrda_context_scale, tuple(hrda_detail_crop))
            if self.hparams.channels_last:
                self.segmenter.multi_resolution.to(memory_format=torch.channels_last)
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
        crop = getattr(self.trainer.datamodule, "crop_size", None) if self._trainer is not None else None
        if self.hparams.hrda and crop:  # fail before the first step; validate like HRDA's test setting
            self._check_crop(crop)
            self.set_eval_protocol(make_protocol("slide", window=crop, stride=[max(c // 2, 1) for c in crop]))

    def _check_crop(self, crop) -> None:
        check_settings(self.hparams.hrda_context_scale, self.hparams.hrda_detail_crop, self.segmenter.output_stride,
                       tuple(int(c) for c in crop))

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in ("teacher", "imagenet_encoder"):
            if hasattr(self, frozen):
                getattr(self, frozen).eval()  # always predicts with its (EMA / ImageNet) running statistics
        if self.hparams.freeze_norm:
            for norm in batch_norms(self.segmenter):
                norm.eval()
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
        generator = torch.Generator().manual_seed(derive_seed(MIX, global_seed(), self.global_rank, self.global_step))

        x_fd = x_s  # the image whose ImageNet features the feature distance compares to F's
        if hp.hrda:  # (detail boxes drawn first from the generator, before ClassMix)
            self._check_crop(x_s.shape[-2:])
            loss_s, value_s, passed = self._hrda_loss(x_s, y_s, None, generator, hp.lambda_feature_distance > 0)
            features_s, x_fd = passed.features, self.segmenter.multi_resolution.context_image(x_s)
        else:
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
        if hp.mixing:
            masks = classmix_masks(y_s, generator, ignore)
            x_m, y_m = mix(masks, x_s, x_t), mix(masks, y_s, pseudo_t)
            w_m = mix(masks, torch.ones_like(weight_t), weight_t)
        else:
            x_m, y_m, w_m = x_t, pseudo_t, weight_t
        if hp.strong_augment:
            x_m = strong_photometric(x_m, generator)

        if hp.hrda:
            loss_m, value_m, _ = self._hrda_loss(x_m, y_m, w_m, generator)
        else:
            loss_m, value_m = self.global_batch_mean(*pixel_cross_entropy(self.segmenter(x_m), y_m, w_m, ignore))
        loss, value = loss_s + hp.lambda_target * loss_m, value_s + hp.lambda_target * value_m
        values = {"train/loss_source": value_s, "train/loss_mixed": value_m}  # global-batch values
        if hp.lambda_entropy > 0:
            logits_t = self.segmenter(x_t) if not hp.hrda else self.segmenter.multi_resolution.forward_train(
                self.segmenter, x_t, self.segmenter.multi_resolution.sample_box(x_t.shape[-2:], generator)).fused
            entropy_t = entropy(logits_t)
            count = torch.tensor(entropy_t.numel(), device=entropy_t.device)
            loss_e, values["train/entropy"] = self.global_batch_mean(entropy_t.sum(), count)
            loss, value = loss + hp.lambda_entropy * loss_e, value + hp.lambda_entropy * values["train/entropy"]
        if hp.lambda_feature_distance > 0:
            loss_f, values["train/feature_distance"] = self._feature_distance(x_fd, y_s, features_s)
            loss = loss + hp.lambda_feature_distance * loss_f
            value = value + hp.lambda_feature_distance * values["train/feature_distance"]
        if hp.mask_ratio > 0:
            loss_k, values["train/loss_masked"] = self._masked_consistency(x_t, pseudo_t, weight_t, generator)
            loss, value = loss + hp.lambda_masked * loss_k, value + hp.lambda_masked * values["train/loss_masked"]
        self.log_dict(values, batch_size=x_s.shape[0])
        self.log("train/loss", value, prog_bar=True, batch_size=x_s.shape[0])
        self.log("train/pseudo_weight", weight_t.mean(), batch_size=x_s.shape[0], sync_dist=True)
        return loss

    def _hrda_loss(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, generator: torch.Generator,
                   features: bool = False):
        """HRDA's (loss to backpropagate, value, MultiResolutionOutput) of the student on ``x`` against ``y``."""
        return multi_resolution_loss(self.segmenter, x, y, weight, generator, self.hparams.hrda_detail_loss_weight,
                                     self.global_batch_mean, self.hparams.ignore_index, features)

    def _feature_distance(self, x_s: torch.Tensor, y_s: torch.Tensor,
                          features_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to backpropagate, value): the mean feature distance over the global batch's thing cells; ``x_s``
        is the image F's ``features_s`` come from (with ``hrda``: the source crop's context), ``y_s`` its labels
        (at any multiple of the features' resolution)."""
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
            if self.hparams.hrda:
                return self._hrda_loss(x_masked, pseudo_t, weight_t, generator)[:2]
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
