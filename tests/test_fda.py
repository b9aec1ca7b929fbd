"""Fourier domain adaptation: the amplitude swap itself, and FDA as a translator wherever T is used."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import adapt_main, tiny_datamodule

from adapt.checkpoints import load_translator
from adapt.nets.fourier import FourierTranslator, fda_transfer, low_frequency_size


def _smooth_images(seed: int, shape=(2, 3, 40, 48)) -> torch.Tensor:
    """float [B, 3, H, W] in about [0.3, 0.7]: far enough from 0 and 1 that the swap needs no clamping."""
    g = torch.Generator().manual_seed(seed)
    return 0.5 + 0.15 * torch.tanh(torch.randn(shape, generator=g, dtype=torch.float64))


def test_fda_with_beta_zero_returns_the_input():
    x, reference = _smooth_images(0), _smooth_images(1)
    assert low_frequency_size(40, 48, 0.0) == 0 and low_frequency_size(40, 48, 0.02) == 0
    assert fda_transfer(x, reference, 0.0) is x
    assert fda_transfer(x, reference, 0.02) is x  # 0.02 * 40 < 1: no frequency to swap


def test_fda_swaps_low_frequency_amplitude_and_keeps_phase():
    x, reference = _smooth_images(0), _smooth_images(1)
    beta = 0.1
    b = low_frequency_size(40, 48, beta)
    assert b == 4
    out = fda_transfer(x, reference, beta)
    assert out.shape == x.shape and out.dtype == x.dtype and 0.2 < out.min() and out.max() < 0.8  # no clamp hit
    f_out, f_x, f_ref = (torch.fft.fft2(t) for t in (out, x, reference))
    rows = [*range(0, b + 1), *range(40 - b, 40)]
    cols = [*range(0, b + 1), *range(48 - b, 48)]
    box = torch.zeros(40, 48, dtype=torch.bool)
    box[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = True
    torch.testing.assert_close(f_out.abs()[..., box], f_ref.abs()[..., box], atol=1e-9, rtol=1e-9)
    torch.testing.assert_close(f_out.abs()[..., ~box], f_x.abs()[..., ~box], atol=1e-9, rtol=1e-9)
    # the phase is the input's everywhere (compare unit phasors: angles wrap at ±pi)
    torch.testing.assert_close(f_out / f_out.abs(), f_x / f_x.abs(), atol=1e-7, rtol=1e-7)
    # the mean colour (the DC term) is the reference's: FDA moves global illumination
    torch.testing.assert_close(out.mean((2, 3)), reference.mean((2, 3)), atol=1e-9, rtol=1e-9)


def test_fourier_translator_draws_references_and_keeps_shapes():
    bank = (torch.rand(3, 3, 16, 24, generator=torch.Generator().manual_seed(0)) * 255).to(torch.uint8)
    translator = FourierTranslator(bank, beta=0.05)
    x = _smooth_images(2, (4, 3, 37, 53)).float()
    out = translator(x)
    assert out.shape == x.shape and out.dtype == torch.float32 and not torch.equal(out, x)
    assert torch.equal(FourierTranslator(bank, beta=0.0)(x), x)
    with pytest.raises(ValueError, match="uint8"):
        FourierTranslator(bank.float(), beta=0.05)


def test_adapt_fda_checkpoint_is_a_translator_for_training_and_evaluation(tiny_pair, segmenter_ckpt, tmp_path,
                                                                         capsys):
    import pytorch_lightning as pl

    from adapt.data import FolderDataset
    from adapt.tasks import SegmentationTask

    ckpt = tmp_path / "fda.ckpt"
    code, stdout, stderr = adapt_main(capsys, "fda", "--source", str(tiny_pair / "source"), "--target",
                                      str(tiny_pair / "target"), "--target_split", "train", "--output", str(ckpt),
                                      "--beta", "0.05", "--count", "4", "--size", "[32, 32]")
    assert code == 0, stderr
    assert "4 source and 4 target references" in stdout and ckpt.is_file()
    again = adapt_main(capsys, "fda", "--source", str(tiny_pair / "source"), "--target", str(tiny_pair / "target"),
                       "--output", str(ckpt))
    assert again[0] == 2 and "exists" in again[2]  # never overwrites
    stored = torch.load(ckpt, weights_only=True)
    g_st, g_ts = load_translator(ckpt, "source-to-target"), load_translator(ckpt, "target-to-source")
    assert torch.equal(g_st.bank, stored["target_bank"]) and torch.equal(g_ts.bank, stored["source_bank"])
    assert g_st.bank.shape == (4, 3, 32, 32) and not any(p.requires_grad for p in g_st.parameters())

    # F trained on FDA-styled source images (the translator_checkpoint path CycleGAN uses)
    dm = tiny_datamodule(tiny_pair)
    task = SegmentationTask(arch="fpn", class_names=dm.class_names, translator_checkpoint=str(ckpt))
    pl.Trainer(max_steps=2, logger=False, enable_checkpointing=False, enable_progress_bar=False,
               enable_model_summary=False, limit_val_batches=0).fit(task, dm)
    assert isinstance(task.train_translator, FourierTranslator)

    # F(T(x_t)) with the target-to-source direction
    code, _, err = adapt_main(capsys, "evaluate", "--checkpoint", str(segmenter_ckpt), "--translator", str(ckpt),
                              "--root", str(tiny_pair / "target"), "--split", "val", "--output", str(tmp_path / "eval"),
                              "--plots", "false")
    assert code == 0, err[-2000:]
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["translator"] == str(ckpt) and metrics["checkpoint"] == str(segmenter_ckpt)
    assert isinstance(metrics["miou"], float) and 0 <= metrics["miou"] <= 100
    defined = [v for v in metrics["per_class_iou"].values() if v is not None]
    assert defined and abs(metrics["miou"] - sum(defined) / len(defined)) < 1e-4  # macro mean of the classes
    assert metrics["num_images"] == len(FolderDataset(tiny_pair / "target", split="val"))
