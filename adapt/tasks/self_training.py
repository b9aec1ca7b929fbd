"""SelfTrainingTask: F as a student taught on target images by its own EMA teacher (the DACS / DAFormer line)."""

from __future__ import annotations

import copy

import torch
from torch.nn import functional as nnf

from adapt.data.sampling import MIX, derive_seed, global_seed
from adapt.errors import ConfigError
from adapt.losses import entropy
from adapt.nets.translator import translate_padded
from adapt.tasks.mixing import classmix_masks, ema_alpha, ema_update, mix, pseudo_labels, strong_photometric
from adapt.tasks.segmentation import SegmentationTask


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
    5. After the optimizer step: teacher <- EMA(teacher, F) with weight ``min(1 - 1/(step + 1), ema_alpha)``.

    Every argument of ``SegmentationTask`` applies (``init_from`` starts the student and the teacher from an F
    checkpoint; ``warmup_steps`` ramps the learning rate up). The checkpoint's ``segmenter`` is the student,
    which ``adapt evaluate`` scores; the teacher is saved too (``teacher.*``), for resuming.

    Args:
        ema_alpha: the teacher's EMA weight (DAFormer: 0.999); 0 makes the teacher the current student (no EMA).
        pseudo_threshold: confidence above which a pixel counts as sure (DAFormer: 0.968).
        mixing: ClassMix source classes onto target images.
        confidence_weighting: weight pseudo-labels by the share of sure pixels (else weight 1).
        strong_augment: colour jitter and blur on the mixed images.
        lambda_target: weight of the mixed (pseudo-labelled) loss.
        lambda_entropy: weight of MinEnt on the target images (0: off; costs one more forward pass of F).
    """

    train_domains = ("source", "target")

    def __init__(self, *args, ema_alpha: float = 0.999, pseudo_threshold: float = 0.968, mixing: bool = True,
                 confidence_weighting: bool = True, strong_augment: bool = True, lambda_target: float = 1.0,
                 lambda_entropy: float = 0.0, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if not 0 <= ema_alpha < 1 or not 0 <= pseudo_threshold < 1:
            raise ConfigError(f"model.init_args.ema_alpha ({ema_alpha}) and pseudo_threshold ({pseudo_threshold}) "
                              "must lie in [0, 1)")
        self.teacher = copy.deepcopy(self.segmenter).requires_grad_(False).eval()
        if self.hparams.compile:  # a deep copy would keep calling the student's compiled forward: compile anew
            self.teacher._compiled_call_impl = None
            self.teacher.compile(**({} if self.hparams.compile is True else {"backend": self.hparams.compile}))
        self._ema_step = -1  # the optimizer step the teacher last followed (no update between accumulated batches)

    def setup(self, stage: str) -> None:
        super().setup(stage)  # init_from loads the student
        if stage == "fit":
            self.teacher.load_state_dict(self.segmenter.state_dict())  # a resumed run restores both afterwards

    def train(self, mode: bool = True):
        super().train(mode)
        if hasattr(self, "teacher"):
            self.teacher.eval()  # the teacher always predicts with its (EMA) running statistics
        return self

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        hp, ignore = self.hparams, self.hparams.ignore_index
        x_s, y_s, x_t = batch["source"]["image"], batch["source"]["mask"], batch["target"]["image"]
        if x_s.shape != x_t.shape:
            raise ConfigError(f"self-training mixes source and target batches of one shape; got {tuple(x_s.shape)} "
                              f"and {tuple(x_t.shape)}: set data.init_args.crop_size (or resize)")
        if self.train_translator is not None:
            with torch.no_grad():
                x_s = translate_padded(self.train_translator, x_s)  # x_st: source content, target style

        ce_s = nnf.cross_entropy(self.segmenter(x_s).float(), y_s, ignore_index=ignore, reduction="sum")
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
        self.log_dict(values, batch_size=x_s.shape[0])
        self.log("train/loss", value, prog_bar=True, batch_size=x_s.shape[0])
        self.log("train/pseudo_weight", weight_t.mean(), batch_size=x_s.shape[0], sync_dist=True)
        return loss

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
