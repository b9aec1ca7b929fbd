"""SelfTrainingTask: F as a student taught on target images by its own EMA teacher (the DACS / DAFormer line)."""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Literal

import torch

from adapt.errors import ConfigError
from adapt.inference import make_protocol
from adapt.losses import downscale_labels, entropy, feature_distance, pixel_cross_entropy
from adapt.nets.hrda import check_settings
from adapt.nets.segmenter import batch_norms
from adapt.nets.translator import translate_padded
from adapt.tasks.ingredients import (FeatureDistance, Masking, MultiResolution, Teacher, ingredient,
                                     multi_resolution_loss, record)
from adapt.tasks.mixes import TARGET_MIXINGS, Mixed, check_mixing, mix_into_target, mixed_loss, step_generator
from adapt.tasks.mixing import (block_masks, ema_alpha, ema_update, every_pixel_counted, labelling, pixel_weights,
                                pseudo_labels, statistics_kept, strong_transform)
from adapt.tasks.segmentation import SegmentationTask

Norm = Literal["train", "keep_statistics", "frozen"]
LossAverage = Literal["all", "labelled"]


class SelfTrainingTask(SegmentationTask):
    """Self-training with an EMA teacher and pseudo-labels, and the ingredients of the DACS / DAFormer / HRDA / MIC
    line (``adapt.tasks.ingredients``: one typed object each, null when off), each step as the official code
    (lhoyer/MIC 2f932a98) takes it; its pieces are ``adapt.tasks.mixing``.

    Every step, with source batch (x_s, y_s) and target batch x_t (same crop size and batch size):

    1. ``loss_source``: cross-entropy of the student F on (x_s, y_s) (x_s translated by ``translator_checkpoint``'s
       g_st first, if given: CycleGAN or FDA).
    2. ``teacher``: the teacher (an EMA of F; no gradient, autocast off: float32 logits) labels x_t with its argmax.
       ``teacher.mode: train`` (DAFormer): it labels in train mode, BatchNorm normalizing with x_t's statistics
       (recording none), dropout and drop-path off (``norm: frozen``: BatchNorm in eval mode). Every pixel's weight
       = the share of the batch's pixels whose top probability is >= ``pseudo_threshold`` (``teacher.weighting:
       batch``; 1 without ``confidence_weighting``), times the target's ``valid`` map if the data gives one (0 in
       the data's ``pseudo_label_margins``).
    3. ``mixing: classmix``: for each pair, ceil(n / 2) of the whole source batch's n classes (ignore among them)
       pasted from the source image onto the target image with their labels (source pixels weigh 1, target pixels
       their weight); ``cutmix`` / ``mixup`` / ``moex``: ``adapt.tasks.mixes``; null: the target images alone. Then,
       with ``strong_augment``, DACS's augmentation per image: colour jitter when the step's draw exceeds 0.2 (kornia
       0.5.8's: brightness +-0.2 added, contrast and HSV saturation x [0.8, 1.2], hue +-0.2 turn, random order), a
       Gaussian blur when a second draw exceeds 0.5 (sigma [0.15, 1.15], kernel ~0.1 x the side, reflected borders).
    4. ``loss_mixed``: weighted cross-entropy of F on that batch; ``loss = loss_source + lambda_target * loss_mixed
       (+ lambda_entropy * mean entropy of F on x_t, MinEnt)``.
    5. ``feature_distance`` (DAFormer): ``+ weight * fd``, the mean L2 distance between F's deepest encoder features
       of x_s and those of a frozen copy of the ImageNet encoder, over the feature cells its classes cover.
    6. ``masking`` (MIC): x_t augmented as in step 3 but as one batch (its own draws: one jitter order and sigma),
       then hidden in blocks: a grid of round(H / block) x round(W / block) cells, each hidden with probability
       ``ratio``, its pixels set to F's input mean colour (0 once normalized); ``+ weight * loss_masked``, the
       cross-entropy of F on them against the labels and weights of step 2 (margins included).
    7. After optimizer step k: the teacher's parameters <- EMA(teacher, F) with weight ``min(1 - 1/(k + 1),
       ema_alpha)``; its buffers stay (``teacher.mode: eval``: averaged too, taken from process 0 under DDP).
    8. ``multi_resolution`` (HRDA, ``adapt.nets.hrda``): F gains a scale-attention head, and every pass of the
       student in steps 1, 4, 5 and 6 is multi-resolution: the crop (the data's ``crop_size``, HRDA: 1024 x 1024)
       resized by ``context_scale`` is the context, a full-resolution ``detail_crop`` inside it (drawn per pass)
       the detail; each loss is ``(1 - detail_loss_weight)`` x that of the fused logits + ``detail_loss_weight`` x
       that of the detail logits on the detail box (MinEnt and the feature distance use the fused logits and the
       context's features). The teacher's pseudo-labels, validation and every later use of F (``adapt evaluate`` /
       ``predict``) fuse the context with overlapping detail windows (stride half the detail crop) over the whole
       input; validation during fit slides windows of the training crop (stride half of it), HRDA's test setting.

    Every cross-entropy is a mean over all pixels of the global batch (``loss_average``). A step's draws (detail
    boxes, mixing, augmentation, masks) come from one generator keyed to (seed, process, step). Every argument of
    ``SegmentationTask`` applies (``init_from`` starts both F and teacher). The checkpoint's ``segmenter`` is the
    student, which ``adapt evaluate`` scores; the teacher is saved too (``teacher.*``); ingredients as dicts.

    Args:
        teacher: the EMA teacher and its pseudo-labels (``Teacher``: ema_alpha 0.999, pseudo_threshold 0.968,
            confidence_weighting true, mode train, weighting batch).
        mixing: ``classmix``, ``cutmix``, ``mixup`` or ``moex`` of the source into the target batch (HRDA: classmix
            or cutmix); null: the target images alone. Settings (``mixing_alpha``, ...) as in SegmentationTask.
        strong_augment: colour jitter and blur on the mixed (or target) images.
        lambda_target: weight of the mixed (pseudo-labelled) loss.
        lambda_entropy: weight of MinEnt on the target images (0: off; costs one more forward pass of F).
        feature_distance: DAFormer's ImageNet feature distance (``FeatureDistance``: weight 0.005, classes); needs
            ``encoder_weights`` (the frozen reference is the encoder as built, before ``init_from``).
        masking: MIC's masked image consistency (``Masking``: ratio 0.7, block 0.125, weight 1).
        multi_resolution: HRDA's multi-resolution training and inference (``MultiResolution``: context_scale 0.5,
            detail_crop 512 512, detail_loss_weight 0.1).
        norm: F's BatchNorm layers while it trains. ``train``: every student pass normalizes with its batch's
            statistics; the source, mixed (and masked, unless ``masking.record_statistics`` is false) passes record
            running ones. ``keep_statistics``: batch statistics, the running ones kept as F starts (``init_from``:
            say an F adapted by AdaBN, ``adapt tta``). ``frozen``: eval mode: every pass normalizes with the running
            statistics F starts with (and is evaluated with), recording none; scale and shift still learn.
        loss_average: ``all`` (mmseg): each cross-entropy averages over every pixel of the global batch, an ignored
            pixel adding 0 to the sum and 1 to the count; ``labelled``: over the labelled pixels (adapt's old way).
    """

    train_domains = ("source", "target")
    # recipe keys of earlier versions -> their spelling now (adapt.recipe names it in a one-line error)
    renamed_arguments: dict[str, str] = {
        **SegmentationTask.renamed_arguments,
        "ema_alpha": "teacher.ema_alpha", "pseudo_threshold": "teacher.pseudo_threshold",
        "confidence_weighting": "teacher.confidence_weighting",
        "lambda_feature_distance": "feature_distance.weight", "feature_distance_classes": "feature_distance.classes",
        "mask_ratio": "masking.ratio", "mask_block": "masking.block", "lambda_masked": "masking.weight",
        "keep_statistics": "norm: keep_statistics", "freeze_norm": "norm: frozen",
        "hrda": "multi_resolution", "hrda_context_scale": "multi_resolution.context_scale",
        "hrda_detail_crop": "multi_resolution.detail_crop",
        "hrda_detail_loss_weight": "multi_resolution.detail_loss_weight"}

    def __init__(self, *args, teacher: Teacher = Teacher(),
                 mixing: Literal["classmix", "cutmix", "mixup", "moex"] | None = "classmix",
                 strong_augment: bool = True, lambda_target: float = 1.0, lambda_entropy: float = 0.0,
                 feature_distance: FeatureDistance | None = None, masking: Masking | None = None,
                 multi_resolution: MultiResolution | None = None, norm: Norm = "train",
                 loss_average: LossAverage = "all", **kwargs) -> None:
        chosen = (ingredient(Teacher, teacher), ingredient(FeatureDistance, feature_distance),
                  ingredient(Masking, masking), ingredient(MultiResolution, multi_resolution))
        # save_hyperparameters (in super().__init__) reads these names: checkpoints record plain dicts
        teacher, feature_distance, masking, multi_resolution = (record(value) for value in chosen)
        super().__init__(*args, **kwargs)
        self.teacher_settings, self.feature_distance, self.masking, self.multi_resolution = chosen
        hp = self.hparams
        check_mixing(mixing, TARGET_MIXINGS, self.segmenter, hp.mixing_alpha, hp.moex_lambda, hp.moex_layer,
                     bool(hp.compile), multi_resolution is not None)
        for key, value, allowed in (("norm", norm, Norm), ("loss_average", loss_average, LossAverage)):
            if value not in allowed.__args__:
                raise ConfigError(f"model.init_args.{key}: {value!r}; choose {', '.join(allowed.__args__)}")
        if self.feature_distance is not None:
            self.thing_classes = self.feature_distance.class_indices(self.class_names)
            if self.hparams.encoder_weights is None:
                raise ConfigError("model.init_args.feature_distance: the feature distance pulls F towards its "
                                  "pretrained encoder; set encoder_weights (imagenet) or feature_distance: null")
            self.imagenet_encoder = copy.deepcopy(self.segmenter.net.encoder).requires_grad_(False).eval()
        if self.multi_resolution is not None:
            self.segmenter.enable_multi_resolution(self.multi_resolution.context_scale,
                                                   tuple(self.multi_resolution.detail_crop))
            if self.hparams.channels_last:
                self.segmenter.multi_resolution.to(memory_format=torch.channels_last)
        self.teacher = copy.deepcopy(self.segmenter).requires_grad_(False).eval()
        if self.hparams.compile:  # a deep copy would keep calling the student's compiled forward: compile anew
            self.teacher._compiled_call_impl = None
            self.teacher.compile(**({} if self.hparams.compile is True else {"backend": self.hparams.compile}))
        self._ema_step = -1  # the optimizer step the teacher last followed (no update between accumulated batches)

    def setup(self, stage: str) -> None:
        super().setup(stage)  # init_from loads the student
        if stage == "fit":
            self.teacher.load_state_dict(self.segmenter.state_dict())  # a resumed run restores both afterwards
        crop = getattr(self.trainer.datamodule, "crop_size", None) if self._trainer is not None else None
        if self.multi_resolution is not None and crop:  # fail before the first step; validate like HRDA's test
            self._check_crop(crop)
            self.set_eval_protocol(make_protocol("slide", window=crop, stride=[max(c // 2, 1) for c in crop]))

    def _check_crop(self, crop) -> None:
        check_settings(self.multi_resolution.context_scale, self.multi_resolution.detail_crop,
                       self.segmenter.output_stride, tuple(int(c) for c in crop))

    def train(self, mode: bool = True):
        super().train(mode)
        for frozen in ("teacher", "imagenet_encoder"):
            if hasattr(self, frozen):
                getattr(self, frozen).eval()  # the teacher labels in the mode ``labelling`` sets, then rests in eval
        if self.hparams.norm == "frozen":
            for norm in batch_norms(self.segmenter):
                norm.eval()
        return self

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        if self.hparams.norm == "keep_statistics":
            with statistics_kept(self.segmenter):
                return self._step(batch)
        return self._step(batch)

    def _step(self, batch: dict) -> torch.Tensor:
        """The data flow of one step: each ingredient's term when that ingredient is present."""
        hp = self.hparams
        x_s, y_s, x_t = self._inputs(batch)
        generator = step_generator(self.global_rank, self.global_step)
        loss_s, value_s, features_s = self._loss(x_s, y_s, None, generator, self.feature_distance is not None)
        pseudo_t, weight_t, share = self._pseudo_labels(x_t, batch["target"].get("valid"))
        m = self._mixed(x_s, y_s, x_t, pseudo_t, weight_t, generator)
        loss_m = (self._loss(m.image, m.labels, m.weight, generator)[:2] if m.lam is None  # (two label sets: no HRDA)
                  else mixed_loss(self.segmenter, m, hp.moex_layer, self.global_batch_mean, hp.loss_average == "all"))
        terms = {"train/loss_mixed": (hp.lambda_target, loss_m)}
        if hp.lambda_entropy > 0:
            terms["train/entropy"] = (hp.lambda_entropy, self._entropy(x_t, generator))
        if self.feature_distance is not None:
            terms["train/feature_distance"] = (self.feature_distance.weight,
                                               self._feature_distance(x_s, y_s, features_s))
        if self.masking is not None:
            terms["train/loss_masked"] = (self.masking.weight,
                                          self._masked_consistency(x_t, pseudo_t, weight_t, generator))
        loss, value, values = loss_s, value_s, {"train/loss_source": value_s}  # values: global-batch means
        for name, (weight, (loss_term, value_term)) in terms.items():
            loss, value, values[name] = loss + weight * loss_term, value + weight * value_term, value_term
        self.log_dict(values, batch_size=x_s.shape[0])
        self.log("train/loss", value, prog_bar=True, batch_size=x_s.shape[0])
        self.log("train/pseudo_weight", share.mean(), batch_size=x_s.shape[0], sync_dist=True)
        return loss

    def _inputs(self, batch: dict) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(x_s float [B, 3, H, W] (translated to target style with ``translator_checkpoint``), y_s int64 [B, H, W],
        x_t float [B, 3, H, W]), checked to share one shape (and, with HRDA, to fit its crops)."""
        x_s, y_s, x_t = batch["source"]["image"], batch["source"]["mask"], batch["target"]["image"]
        if x_s.shape != x_t.shape:
            raise ConfigError(f"self-training mixes source and target batches of one shape; got {tuple(x_s.shape)} "
                              f"and {tuple(x_t.shape)}: set data.init_args.crop_size (or resize)")
        if self.multi_resolution is not None:
            self._check_crop(x_s.shape[-2:])
        if self.train_translator is not None:
            with torch.no_grad():
                x_s = translate_padded(self.train_translator, x_s)  # x_st: source content, target style
        return x_s, y_s, x_t

    def _loss(self, x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor | None, generator: torch.Generator,
              features: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(loss to backpropagate, value, F's deepest encoder features or None): the student's cross-entropy on
        ``x`` against ``y`` int64 [B, H, W] (pixel weights float [B, H, W] or None), the mean over the global
        batch's pixels (``loss_average``); multi-resolution (HRDA's loss, a detail box drawn by ``generator``)."""
        if self.hparams.loss_average == "all":
            y, weight = every_pixel_counted(y, weight)
        if self.multi_resolution is not None:
            loss, value, passed = multi_resolution_loss(self.segmenter, x, y, weight, generator,
                                                        self.multi_resolution.detail_loss_weight,
                                                        self.global_batch_mean, features)
            return loss, value, passed.features
        logits, found = self.segmenter.forward_features(x) if features else (self.segmenter(x), None)
        return (*self.global_batch_mean(*pixel_cross_entropy(logits, y, weight)), found)

    @torch.no_grad()
    def _pseudo_labels(self, x_t: torch.Tensor, valid: torch.Tensor | None) -> tuple[torch.Tensor, ...]:
        """The teacher's (labels int64 [B, H, W], pixel weights float [B, H, W], the confidence shares float [B]):
        a weight is the share (of the batch or of its image, ``teacher.weighting``; 1 without
        ``confidence_weighting``) times ``valid`` (uint8 [B, H, W], 0 in the pseudo-label margins) where given."""
        settings = self.teacher_settings
        with labelling(self.teacher, settings.mode, self.hparams.norm == "frozen"), \
                torch.autocast(x_t.device.type, enabled=False):
            pseudo_t, share = pseudo_labels(self.teacher(x_t).float().softmax(1), settings.pseudo_threshold,
                                            settings.weighting)
        share = share if settings.confidence_weighting else torch.ones_like(share)
        return pseudo_t, pixel_weights(share, valid, pseudo_t.shape), share

    def _mixed(self, x_s: torch.Tensor, y_s: torch.Tensor, x_t: torch.Tensor, pseudo_t: torch.Tensor,
               weight_t: torch.Tensor, generator: torch.Generator) -> Mixed:
        """The batch the student learns the pseudo-labels from (images, labels, pixel weights; two label sets for
        mixup and MoEx): the source mixed into the target batch (``mixing``) or the target batch, then DACS's strong
        augmentation (``strong_augment``)."""
        hp = self.hparams
        mixed = mix_into_target(hp.mixing, x_s, y_s, x_t, pseudo_t, weight_t, generator, hp.mixing_alpha,
                                hp.moex_lambda)
        if hp.strong_augment:
            mixed = mixed._replace(image=strong_transform(mixed.image, generator, per_image=True))
        return mixed

    def _entropy(self, x_t: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """MinEnt: (loss to backpropagate, value), the mean entropy of the student's (fused) prediction of x_t."""
        if self.multi_resolution is not None:
            hrda = self.segmenter.multi_resolution
            logits_t = hrda.forward_train(self.segmenter, x_t, hrda.sample_box(x_t.shape[-2:], generator)).fused
        else:
            logits_t = self.segmenter(x_t)
        entropy_t = entropy(logits_t)
        return self.global_batch_mean(entropy_t.sum(), torch.tensor(entropy_t.numel(), device=entropy_t.device))

    def _feature_distance(self, x_s: torch.Tensor, y_s: torch.Tensor,
                          features_s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(loss to backpropagate, value): the mean feature distance over the global batch's thing cells; ``x_s``
        is the source crop, whose image (with HRDA: its context) gave F's ``features_s``, ``y_s`` its labels."""
        if self.multi_resolution is not None:
            x_s = self.segmenter.multi_resolution.context_image(x_s)
        with torch.no_grad():
            reference = self.imagenet_encoder(self.segmenter.normalize(x_s))[-1]
        cells = downscale_labels(y_s, features_s.shape[-2:], len(self.class_names))
        total, count = feature_distance(features_s, reference, torch.isin(cells, self.thing_classes.to(cells.device)))
        return self.global_batch_mean(total, count)

    def _masked_consistency(self, x_t: torch.Tensor, pseudo_t: torch.Tensor, weight_t: torch.Tensor,
                            generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """MIC: (loss to backpropagate, value), the weighted cross-entropy of F on x_t strongly augmented with blocks
        hidden (F's mean colour) against the teacher's labels of the whole x_t (``pseudo_t`` int64 [B, H, W],
        ``weight_t`` [B, H, W])."""
        x_aug = strong_transform(x_t, generator, per_image=False)  # (draws first, then the masks)
        block = max(1, round(self.masking.block * x_t.shape[2]))
        kept = block_masks((x_t.shape[0], *x_t.shape[2:]), self.masking.ratio, block, generator).to(x_t.device)
        x_masked = torch.where(kept > 0, x_aug, self.segmenter.mean.to(x_aug.dtype))
        # MIC records statistics as in any student pass; else 70 % mean-colour images stay out of BatchNorm's
        with nullcontext() if self.masking.record_statistics else statistics_kept(self.segmenter):
            return self._loss(x_masked, pseudo_t, weight_t, generator)[:2]

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        """The EMA update, after the optimizer step (``global_step`` already counts it). Under DDP the students are
        identical after the step, except BatchNorm statistics, which each process gathers from its own share: an
        eval-mode teacher, which averages them, then takes its buffers from process 0, so that every process holds
        the same teacher (a train-mode teacher's buffers never change)."""
        if self.global_step == self._ema_step:
            return  # an accumulation batch: no optimizer step yet
        self._ema_step = self.global_step
        buffers = self.teacher_settings.mode == "eval"
        ema_update(self.teacher, self.segmenter, ema_alpha(self.global_step, self.teacher_settings.ema_alpha), buffers)
        if buffers and self.trainer.world_size > 1:
            for buffer in self.teacher.buffers():
                torch.distributed.broadcast(buffer, src=0)
