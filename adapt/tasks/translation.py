"""TranslationTask: the translator T as a CycleGAN between source and target, with CyCADA's semantic consistency.

``g_st`` maps source -> target style, ``g_ts`` target -> source style; ``d_t`` tells real target images from
``g_st(x_s)``, ``d_s`` real source images from ``g_ts(x_t)``. One training step is one generator update and one
discriminator update (manual optimization), so Lightning's ``global_step`` grows by 2 per batch: recipes give
``max_steps`` as twice the number of iterations.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytorch_lightning as pl
import torch
from torch.nn.parallel import DistributedDataParallel

from adapt.checkpoints import TRANSLATOR_KIND, domain_name, load_segmenter, require_kind
from adapt.data.labels import IGNORE_INDEX
from adapt.data.sampling import POOL, decorrelate_processes, derive_seed, global_seed
from adapt.errors import ConfigError
from adapt.files import atomic_write
from adapt.losses import cycle_loss, discriminator_loss, identity_loss, lsgan_loss, semantic_consistency_loss
from adapt.nets.discriminator import ImagePool, PatchDiscriminator
from adapt.nets.translator import ResnetGenerator, translate_padded
from adapt.plots import log_picture


class TranslationTask(pl.LightningModule):
    """CycleGAN (Zhu et al. 2017) between the source and target domains, optionally CyCADA (Hoffman et al. 2018).

    Args:
        ngf: generator width (64 in the paper).
        n_blocks: generator residual blocks (9 in the paper for 256x256, 6 for 128x128).
        ndf: discriminator width (64).
        lambda_cycle: weight of the cycle L1 terms (10).
        lambda_identity: weight of the identity L1 terms, as a fraction of ``lambda_cycle`` (0.5).
        lambda_semantic: weight of CyCADA's semantic consistency (0 = plain CycleGAN); needs
            ``segmenter_checkpoint``.
        segmenter_checkpoint: an F checkpoint (``load_segmenter``); its F stays frozen and gives cross-entropy of
            ``F(g_st(x_s))`` against ``y_s`` and of ``F(g_ts(x_t))`` against ``F(x_t).argmax(1)``.
        lr: Adam learning rate of both generators and both discriminators (2e-4).
        beta1: Adam beta1 (0.5).
        pool_size: fakes kept in each image pool (50).
        decay_start: fraction of the iterations after which the learning rate decays linearly to 0 (CycleGAN:
            constant for ``n_epochs``, then linear decay for ``n_epochs_decay``; 0.5 = equal halves).
        picture_every_n_steps: write a ``x_s | g_st(x_s) | x_t | g_ts(x_t)`` PNG this often (global steps) and at
            the end; 0 = only at the end.
        class_names: the data's class names (the CLI links them); checked against the segmenter checkpoint.
        channels_last: keep the networks' weights and inputs in NHWC memory order (tensor-core GPUs).
        compile: compile the four networks with ``torch.compile`` (True: default backend, or a backend name).

    Under DDP the image pools hold the fakes of all processes and draw the same coin flips everywhere (see
    ``query_pool``), so they are identical on every process and a checkpoint resumes on any device count.
    """

    train_domains = ("source", "target")

    def __init__(self, ngf: int = 64, n_blocks: int = 9, ndf: int = 64, lambda_cycle: float = 10.0,
                 lambda_identity: float = 0.5, lambda_semantic: float = 0.0, segmenter_checkpoint: str | None = None,
                 lr: float = 2e-4, beta1: float = 0.5, pool_size: int = 50, decay_start: float = 0.5,
                 picture_every_n_steps: int = 0, class_names: list[str] | None = None, channels_last: bool = False,
                 compile: bool | str = False) -> None:
        super().__init__()
        if lambda_semantic > 0 and not segmenter_checkpoint:
            raise ConfigError("model.init_args.lambda_semantic > 0 needs model.init_args.segmenter_checkpoint")
        self.save_hyperparameters()
        self.automatic_optimization = False
        self.g_st, self.g_ts = ResnetGenerator(ngf, n_blocks), ResnetGenerator(ngf, n_blocks)
        self.d_s, self.d_t = PatchDiscriminator(ndf), PatchDiscriminator(ndf)
        # pools draw from their own RNGs, the same on every process (see query_pool), seeded in setup()
        self.pool_s, self.pool_t = ImagePool(pool_size, torch.Generator()), ImagePool(pool_size, torch.Generator())
        for net in (self.g_st, self.g_ts, self.d_s, self.d_t):
            if channels_last:
                net.to(memory_format=torch.channels_last)
            if compile:
                net.compile(**({} if compile is True else {"backend": compile}))
        self.segmenter = None  # frozen F, loaded in setup(); kept out of this task's checkpoint
        self._picture_batch: tuple[torch.Tensor, torch.Tensor] | None = None

    def setup(self, stage: str) -> None:
        for i, pool in enumerate((self.pool_s, self.pool_t)):  # a resumed run restores their states afterwards
            pool.generator.manual_seed(derive_seed(POOL, global_seed(), i))
        if stage == "fit" and self.hparams.lambda_semantic > 0 and self.segmenter is None:
            loaded = load_segmenter(self.hparams.segmenter_checkpoint, "model.init_args.segmenter_checkpoint")
            names = self.hparams.class_names
            if names and list(names) != loaded.class_names:
                raise ConfigError(f"model.init_args.segmenter_checkpoint: its classes {loaded.class_names} "
                                  f"differ from the data's {list(names)}")
            self.__dict__["segmenter"] = loaded.segmenter.requires_grad_(False)  # no submodule: not trained or saved

    def on_fit_start(self) -> None:
        wrapper = self.trainer.strategy.model  # torch's DistributedDataParallel under DDP
        if isinstance(wrapper, DistributedDataParallel) and not wrapper.find_unused_parameters:
            raise ConfigError("trainer.strategy: the translator updates generators and discriminators in separate "
                              "backward passes; use strategy: ddp_find_unused_parameters_true")
        decorrelate_processes(self.trainer.global_rank)
        if self.segmenter is not None:
            self.segmenter.to(self.device, self.dtype)  # frozen F follows the precision (64-true)

    def training_step(self, batch: dict, batch_idx: int) -> None:
        x_s, y_s, x_t = batch["source"]["image"], batch["source"]["mask"], batch["target"]["image"]
        hp = self.hparams
        if hp.channels_last:
            x_s, x_t = (x.contiguous(memory_format=torch.channels_last) for x in (x_s, x_t))
        opt_g, opt_d = self.optimizers()

        # generators: fool both discriminators, close both cycles, keep images already in the output domain
        self.toggle_optimizer(opt_g)
        x_st, x_ts = self.g_st(x_s), self.g_ts(x_t)
        loss_gan = lsgan_loss(self.d_t(x_st), True) + lsgan_loss(self.d_s(x_ts), True)
        loss_cycle = cycle_loss(self.g_ts(x_st), x_s) + cycle_loss(self.g_st(x_ts), x_t)
        loss_g = loss_gan + hp.lambda_cycle * loss_cycle
        if hp.lambda_identity > 0:
            loss_identity = identity_loss(self.g_st(x_t), x_t) + identity_loss(self.g_ts(x_s), x_s)
            loss_g = loss_g + hp.lambda_cycle * hp.lambda_identity * loss_identity
            self.log("train/loss_identity", loss_identity, sync_dist=True)
        if hp.lambda_semantic > 0:
            with torch.no_grad():
                pseudo_t = self.segmenter(x_t).argmax(1)
            loss_semantic = (semantic_consistency_loss(self.segmenter(x_st), y_s, IGNORE_INDEX)
                             + semantic_consistency_loss(self.segmenter(x_ts), pseudo_t, IGNORE_INDEX))
            loss_g = loss_g + hp.lambda_semantic * loss_semantic
            self.log("train/loss_semantic", loss_semantic, sync_dist=True)
        opt_g.zero_grad()
        self.manual_backward(loss_g)
        opt_g.step()
        self.untoggle_optimizer(opt_g)

        # discriminators: real images of their domain against pooled, detached fakes
        self.toggle_optimizer(opt_d)
        fake_t, fake_s = self.query_pool(self.pool_t, x_st.detach()), self.query_pool(self.pool_s, x_ts.detach())
        loss_d = (discriminator_loss(self.d_t(x_t), self.d_t(fake_t))
                  + discriminator_loss(self.d_s(x_s), self.d_s(fake_s)))
        opt_d.zero_grad()
        self.manual_backward(loss_d)
        opt_d.step()
        self.untoggle_optimizer(opt_d)

        for scheduler in self.lr_schedulers():
            scheduler.step()
        self.log_dict({"train/loss_g": loss_g, "train/loss_gan": loss_gan, "train/loss_cycle": loss_cycle,
                       "train/loss_d": loss_d}, prog_bar=True, batch_size=x_s.shape[0],
                      sync_dist=True)  # the global batch's losses (means of equal-sized shares), not rank 0's
        if self._picture_batch is None:
            self._picture_batch = (x_s[:4].detach(), x_t[:4].detach())
        every = hp.picture_every_n_steps
        if every and self.global_step % every < 2:  # global_step grows by 2 per batch
            self.write_picture(f"step_{self.global_step:07d}.png")

    def query_pool(self, pool: ImagePool, fakes: torch.Tensor) -> torch.Tensor:
        """``pool.query`` over the global batch: float [B, 3, H, W] -> float [B, 3, H, W], detached.

        Every process gathers all processes' fakes in the order one process holding the global batch would see
        them (``ShardedSampler`` gives process r the global positions r, r + W, ...), queries its pool with them
        (same images, same coin flips, so the pools stay identical) and keeps its own positions of the answer.
        """
        world_size = self.trainer.world_size
        if world_size == 1:
            return pool.query(fakes)
        gathered = self.all_gather(fakes)  # [W, B, 3, H, W]
        answer = pool.query(gathered.transpose(0, 1).reshape(-1, *fakes.shape[1:]))  # global order
        return answer.view(fakes.shape[0], world_size, *fakes.shape[1:])[:, self.trainer.global_rank]

    def configure_optimizers(self):
        hp = self.hparams
        betas = (hp.beta1, 0.999)
        opt_g = torch.optim.Adam([*self.g_st.parameters(), *self.g_ts.parameters()], lr=hp.lr, betas=betas)
        opt_d = torch.optim.Adam([*self.d_s.parameters(), *self.d_t.parameters()], lr=hp.lr, betas=betas)
        iterations = int(self.trainer.estimated_stepping_batches)
        if self.trainer.max_steps > 0:  # max_steps counts optimizer steps: two per iteration
            iterations = min(iterations, self.trainer.max_steps // 2)
        constant = int(hp.decay_start * iterations)

        def factor(iteration: int) -> float:
            return 1.0 - max(0, iteration - constant) / max(iterations - constant, 1)

        return ([opt_g, opt_d], [torch.optim.lr_scheduler.LambdaLR(opt_g, factor),
                                 torch.optim.lr_scheduler.LambdaLR(opt_d, factor)])

    def on_train_end(self) -> None:
        self.write_picture("final.png")

    @torch.no_grad()
    def write_picture(self, name: str) -> Path | None:
        """PNG grid, one row per image: ``x_s | g_st(x_s) | x_t | g_ts(x_t)`` into ``LOG_DIR/pictures/``."""
        folder = Path(self.trainer.log_dir or self.trainer.default_root_dir) / "pictures"  # a collective: all ranks
        if self._picture_batch is None or not self.trainer.is_global_zero:
            return None
        x_s, x_t = self._picture_batch
        training = self.training
        self.eval()
        rows = torch.cat([x_s, translate_padded(self.g_st, x_s), x_t, translate_padded(self.g_ts, x_t)], dim=3)
        self.train(training)
        grid = torch.cat(list(rows), dim=1)  # [3, rows * H, 4 * W]
        image = (grid.clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8)
        tag = "pictures/final" if name == "final.png" else "pictures/translation"  # one TensorBoard slider
        log_picture(self.loggers, tag, image, self.global_step)
        png = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()
        return atomic_write(folder / name, lambda f: f.write(png))

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["kind"] = TRANSLATOR_KIND  # what adapt.checkpoints.load_translator accepts
        checkpoint["image_pools"] = {"s": self.pool_s.state_dict(), "t": self.pool_t.state_dict()}
        data = getattr(self._trainer, "datamodule", None) if self._trainer is not None else None
        if hasattr(data, "source_root") and hasattr(data, "target_root"):  # checked where T is used
            checkpoint["domains"] = {"source": domain_name(data.source_root), "target": domain_name(data.target_root)}

    def on_load_checkpoint(self, checkpoint: dict) -> None:  # --ckpt_path: Lightning restores the whole task
        require_kind(checkpoint, (TRANSLATOR_KIND,), "--ckpt_path", self._trainer and self._trainer.ckpt_path or "it")
        if "image_pools" in checkpoint:
            self.pool_s.load_state_dict(checkpoint["image_pools"]["s"])
            self.pool_t.load_state_dict(checkpoint["image_pools"]["t"])
