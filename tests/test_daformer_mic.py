"""DAFormer's feature distance and MIC's masked images in the self-training task, computed again by hand."""

from __future__ import annotations

import pytest
import torch
import yaml
from conftest import adapt_main
from test_self_training import _self_training_recipe
from torch.nn import functional as nnf

from adapt.data.synthetic import CLASS_NAMES
from adapt.errors import ConfigError
from adapt.losses import downscale_labels
from adapt.tasks import SelfTrainingTask
from adapt.tasks.ingredients import FeatureDistance, Masking, Teacher
from adapt.tasks.mixing import block_masks, labelling

NAMES = list(CLASS_NAMES)  # things among them (DAFormer's Cityscapes names): car, person


def _logged(task: SelfTrainingTask) -> dict:
    values = {}
    task.log_dict = lambda logged, **kwargs: values.update(logged)
    task.log = lambda name, value, **kwargs: values.__setitem__(name, value)
    return values


def test_block_masks_hide_the_stated_share_in_whole_blocks():
    masks = block_masks((200, 40, 64), ratio=0.7, block=8, generator=torch.Generator().manual_seed(0))
    assert masks.shape == (200, 1, 40, 64) and set(masks.unique().tolist()) == {0.0, 1.0}
    cells = masks[:, 0, ::8, ::8]  # one pixel per block: MIC's round(40 / 8) x round(64 / 8) grid
    assert cells.shape == (200, 5, 8)
    assert torch.equal(masks[:, 0], cells.repeat_interleave(8, 1).repeat_interleave(8, 2))
    hidden = 1 - cells.mean().item()
    assert abs(hidden - 0.7) < 4 * (0.7 * 0.3 / cells.numel()) ** 0.5  # within 4 binomial standard deviations
    assert torch.equal(masks, block_masks((200, 40, 64), 0.7, 8, torch.Generator().manual_seed(0)))
    # a grid that does not divide the image (60 / 8 = 7.5 -> 8 cells) is stretched by nearest neighbour
    draws = torch.rand(3, 1, 5, 8, generator=torch.Generator().manual_seed(1))
    stretched = block_masks((3, 40, 60), 0.7, 8, torch.Generator().manual_seed(1))
    columns = (torch.arange(60) * 8 / 60).floor().long()  # nearest: source cell floor(x * 8 / 60)
    assert torch.equal(stretched[:, 0], (draws > 0.7).float()[:, 0].repeat_interleave(8, 1)[:, :, columns])


def test_masked_loss_learns_the_teachers_labels_of_the_unmasked_image():
    torch.manual_seed(0)
    task = SelfTrainingTask(arch="fpn", class_names=NAMES, mixing=None, strong_augment=False,
                            teacher=Teacher(confidence_weighting=False), masking=Masking(ratio=0.7, block=0.25)).eval()
    with torch.no_grad():  # a teacher that differs from the student, so its labels are not the student's own
        for parameter in task.teacher.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    seen = []
    task.segmenter.register_forward_hook(lambda module, inputs, output: seen.append(inputs[0]))
    values = _logged(task)
    x_t = torch.rand(2, 3, 64, 64)
    batch = {"source": {"image": torch.rand(2, 3, 64, 64), "mask": torch.randint(0, len(NAMES), (2, 64, 64))},
             "target": {"image": x_t}}
    task.training_step(batch, 0)
    x_masked = seen[-1]  # the student's passes: x_s, x_t (no mixing), then the masked image
    hidden = (x_masked == task.segmenter.mean).all(1)  # MIC: 0 after normalization, F's mean colour before
    assert 0.3 < hidden.float().mean() < 0.95  # (the visible pixels are colour-augmented x_t)
    assert (task.segmenter.normalize(x_masked).permute(1, 0, 2, 3)[:, hidden] == 0).all()
    blocks = hidden[:, ::16, ::16]  # 16 px blocks: a quarter of the 64 px height
    assert torch.equal(hidden, blocks.repeat_interleave(16, 1).repeat_interleave(16, 2))
    with torch.no_grad(), labelling(task.teacher, "train"):  # the teacher labels in train mode (DAFormer)
        student = task.segmenter(x_masked)
        expected = nnf.cross_entropy(student, task.teacher(x_t).argmax(1))
        of_masked = nnf.cross_entropy(student, task.teacher(x_masked).argmax(1))
    torch.testing.assert_close(values["train/loss_masked"], expected, rtol=1e-5, atol=1e-6)
    assert abs(of_masked - expected) > 1e-3  # the labels of the masked image would give another loss


def test_feature_distance_touches_only_thing_pixels():
    task = SelfTrainingTask(arch="fpn", encoder_name="timm-tf_efficientnet_lite0", encoder_weights="imagenet",
                            class_names=NAMES, feature_distance=FeatureDistance(weight=0.005))
    assert task.thing_classes.tolist() == [NAMES.index("car"), NAMES.index("person")]
    x_s = torch.rand(2, 3, 128, 128)
    y_s = torch.full((2, 128, 128), NAMES.index("road"))
    y_s[0, :64, :64] = NAMES.index("car")  # 2 x 2 feature cells of image 0
    y_s[1, 64:, 32:] = NAMES.index("person")  # 2 x 3 cells of image 1
    y_s[1, :32, :32] = NAMES.index("pole")  # a stuff class outside DAFormer's things
    y_s[0, 96:, 96:] = 255  # ignored
    features = torch.randn(2, 320, 4, 4, requires_grad=True)
    loss, value = task._feature_distance(x_s, y_s, features)
    loss.backward()
    cells = downscale_labels(y_s, (4, 4), len(NAMES))
    things = torch.isin(cells, task.thing_classes)
    assert things.sum() == 4 + 6
    touched = features.grad.abs().sum(1) > 0
    assert torch.equal(touched, things)  # gradient at thing cells only
    with torch.no_grad():
        reference = task.imagenet_encoder(task.segmenter.normalize(x_s))[-1]
    by_hand = (features - reference).norm(dim=1)[things].mean()
    torch.testing.assert_close(value, by_hand.detach())
    with pytest.raises(ConfigError, match=r"feature_distance\.classes: \['bus'\]"):
        SelfTrainingTask(arch="fpn", class_names=NAMES, feature_distance=FeatureDistance(classes=["bus"]))
    with pytest.raises(ConfigError, match="set encoder_weights"):
        SelfTrainingTask(arch="fpn", class_names=NAMES, feature_distance=FeatureDistance())
    assert not hasattr(SelfTrainingTask(arch="fpn", class_names=NAMES), "imagenet_encoder")  # null: no copy kept


def test_downscaled_labels_need_three_quarters_of_a_cell():
    labels = torch.zeros(1, 4, 4, dtype=torch.long)
    labels[0, :2, :2] = torch.tensor([[1, 1], [1, 0]])  # 3 of 4: class 1
    labels[0, :2, 2:] = torch.tensor([[1, 1], [0, 0]])  # 2 of 4: no class
    labels[0, 2:, :2] = torch.tensor([[1, 255], [1, 1]])  # 3 of 4 with one ignored pixel: class 1
    assert downscale_labels(labels, (2, 2), 3).tolist() == [[[1, 255], [1, 0]]]


def test_daformer_mic_self_training_through_the_cli(tmp_path, tiny_pair, capsys):
    recipe = _self_training_recipe(tmp_path, tiny_pair, encoder_name="timm-tf_efficientnet_lite0",
                                   encoder_weights="imagenet", feature_distance={"weight": 0.005},
                                   masking={"ratio": 0.7}, norm="frozen")
    config = yaml.safe_load(recipe.read_text())
    config["data"]["init_args"].update(rare_class_sampling={"temperature": 0.01}, augment="strong")
    config["trainer"].update(max_steps=2, limit_val_batches=1)
    recipe.write_text(yaml.safe_dump(config))
    run_dir = tmp_path / "run"
    code, _, err = adapt_main(capsys, "fit", "--config", str(recipe), f"--trainer.default_root_dir={run_dir}")
    assert code == 0, err[-3000:]
    metrics = next(run_dir.rglob("metrics.csv")).read_text().splitlines()[0].split(",")
    assert {"train/feature_distance", "train/loss_masked", "train/loss_mixed"} <= set(metrics)
    assert (run_dir / "rare_class_stats.json").is_file()
    state = torch.load(next(run_dir.rglob("last.ckpt")), map_location="cpu", weights_only=False)["state_dict"]
    running = [k for k in state if k.startswith("imagenet_encoder.") and k.endswith(("running_mean", "running_var"))]
    assert running and all(torch.equal(state[k], state["segmenter.net.encoder." + k.split(".", 1)[1]])
                           for k in running)  # norm frozen: F's statistics are still the ImageNet ones it began with


def test_statistics_kept_normalizes_by_batch_and_records_nothing():
    from adapt.nets.segmenter import build_segmenter
    from adapt.tasks.mixing import statistics_kept

    segmenter = build_segmenter("fpn", "timm-tf_efficientnet_lite0", None, num_classes=3, decoder_dropout=0.0).train()
    before = {k: v.clone() for k, v in segmenter.state_dict().items()}
    x = torch.rand(2, 3, 64, 64)
    torch.manual_seed(0)  # the same drop-path draws in both passes
    with statistics_kept(segmenter):
        kept = segmenter(x)
    assert all(torch.equal(v, before[k]) for k, v in segmenter.state_dict().items())  # nothing recorded
    torch.manual_seed(0)
    assert torch.allclose(kept, segmenter(x), atol=1e-5)  # the same batch-statistics output as a train-mode pass
    assert any(not torch.equal(v, before[k]) for k, v in segmenter.state_dict().items())  # which does record


@pytest.mark.parametrize("record", [True, False])
def test_masked_pass_records_batchnorm_statistics_as_mic_unless_switched_off(record):
    task = SelfTrainingTask(arch="fpn", class_names=NAMES, masking=Masking(record_statistics=record)).train()
    batch = {"source": {"image": torch.rand(2, 3, 64, 64), "mask": torch.randint(0, len(NAMES), (2, 64, 64))},
             "target": {"image": torch.rand(2, 3, 64, 64)}}
    _logged(task)
    task.training_step(batch, 0)
    counters = [m.num_batches_tracked.item() for m in task.segmenter.modules()
                if isinstance(m, torch.nn.BatchNorm2d)]
    # the source and the mixed pass, and with MIC's setting the masked one (the teacher's pass records nothing)
    assert counters and set(counters) == {3 if record else 2}


def test_norm_keep_statistics_leaves_batchnorm_statistics_as_they_started():
    task = SelfTrainingTask(arch="fpn", class_names=NAMES, masking=Masking(), norm="keep_statistics").train()
    before = {k: v.clone() for k, v in task.segmenter.state_dict().items() if "running" in k}
    batch = {"source": {"image": torch.rand(2, 3, 64, 64), "mask": torch.randint(0, len(NAMES), (2, 64, 64))},
             "target": {"image": torch.rand(2, 3, 64, 64)}}
    _logged(task)
    task.training_step(batch, 0).backward()
    assert before and all(torch.equal(task.segmenter.state_dict()[k], v) for k, v in before.items())
    assert all(m.track_running_stats for m in task.segmenter.modules() if isinstance(m, torch.nn.BatchNorm2d))


def test_norm_frozen_normalizes_every_pass_with_the_running_statistics_and_records_none():
    task = SelfTrainingTask(arch="fpn", class_names=NAMES, masking=Masking(), norm="frozen")
    norms = [m for m in task.segmenter.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in norms:  # running statistics unlike any batch's, so that normalizing by the batch would show
        m.running_mean.fill_(0.3), m.running_var.fill_(2.0)
    task.train()
    assert norms and not any(m.training for m in norms) and task.segmenter.net.decoder.training
    before = {k: v.clone() for k, v in task.segmenter.state_dict().items() if "running" in k or "batches" in k}
    inputs = []
    hook = norms[0].register_forward_hook(  # copies: the in-place ReLU after it overwrites its output
        lambda m, args, out: inputs.append((args[0].detach().clone(), out.detach().clone())))
    batch = {"source": {"image": torch.rand(2, 3, 64, 64), "mask": torch.randint(0, len(NAMES), (2, 64, 64))},
             "target": {"image": torch.rand(2, 3, 64, 64)}}
    _logged(task)
    task.training_step(batch, 0).backward()
    hook.remove()
    assert len(inputs) == 3  # the source, the mixed and the masked pass of the student
    for x, out in inputs:
        by_hand = nnf.batch_norm(x, norms[0].running_mean, norms[0].running_var, norms[0].weight, norms[0].bias,
                                 False, 0.0, norms[0].eps)
        assert torch.allclose(out, by_hand, atol=1e-5)
    assert all(torch.equal(task.segmenter.state_dict()[k], v) for k, v in before.items())
    assert any(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in norms)  # scale still learns
