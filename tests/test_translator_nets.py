import math

import pytest
import torch
from torch import nn

from adapt.losses import cycle_loss, discriminator_loss, identity_loss, lsgan_loss, semantic_consistency_loss
from adapt.nets.discriminator import ImagePool, PatchDiscriminator
from adapt.nets.translator import ResnetGenerator, init_weights, translate_padded


@pytest.fixture(scope="module")
def generator():
    torch.manual_seed(0)
    return ResnetGenerator(ngf=8, n_blocks=2).eval()


# --- generator --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("size", [(8, 8), (32, 32), (16, 40)])
def test_generator_keeps_shape_and_unit_range(generator, size):
    x = torch.rand(2, 3, *size)
    with torch.no_grad():
        y = generator(x)
    assert y.shape == x.shape and y.dtype == torch.float32
    assert y.min() >= 0 and y.max() <= 1


@pytest.mark.parametrize("size", [(31, 33), (9, 17), (7, 7), (3, 2)])
def test_translate_padded_on_odd_sizes(generator, size):
    x = torch.rand(1, 3, *size)
    with torch.no_grad():
        y = translate_padded(generator, x)
    assert y.shape == x.shape
    assert y.min() >= 0 and y.max() <= 1


def test_translate_padded_equals_forward_on_multiples(generator):
    x = torch.rand(1, 3, 16, 24)
    with torch.no_grad():
        assert torch.equal(translate_padded(generator, x), generator(x))


def test_generator_multiple_and_gradient_flow():
    gen = ResnetGenerator(ngf=8, n_blocks=1, n_downsampling=3)
    assert gen.multiple == 8
    x = torch.rand(1, 3, 16, 16, requires_grad=True)
    gen(x).mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_generator_layout():
    gen = ResnetGenerator(ngf=8, n_blocks=3, n_downsampling=2)
    convs = [m for m in gen.modules() if isinstance(m, nn.Conv2d)]
    transposed = [m for m in gen.modules() if isinstance(m, nn.ConvTranspose2d)]
    # 7x7 in, 2 down, 2 per residual block, 7x7 out; channels 8 -> 16 -> 32 at the bottleneck.
    assert len(convs) == 1 + 2 + 2 * 3 + 1 and len(transposed) == 2
    assert convs[0].kernel_size == (7, 7) and convs[-1].out_channels == 3
    assert convs[2].out_channels == 32 and transposed[0].output_padding == (1, 1)
    norms = [m for m in gen.modules() if isinstance(m, nn.InstanceNorm2d)]
    assert norms and not any(m.affine for m in norms)
    assert not any(isinstance(m, nn.Dropout) for m in gen.modules())


# --- discriminator ----------------------------------------------------------------------------------------------

def test_discriminator_output_shape_by_hand():
    disc = PatchDiscriminator(ndf=8, n_layers=3)
    # 4x4 convs with padding 1: out = floor((s + 2 - 4) / stride) + 1.
    # stride 2: 64 -> 32 -> 16 -> 8; stride 1: 8 -> 7; final 1-channel conv: 7 -> 6.
    with torch.no_grad():
        scores = disc(torch.rand(2, 3, 64, 64))
    assert scores.shape == (2, 1, 6, 6)
    # No sigmoid: raw scores may leave [0, 1]; the 256x256 classic gives 30x30.
    with torch.no_grad():
        assert disc(torch.rand(1, 3, 256, 256)).shape == (1, 1, 30, 30)


def test_discriminator_layout():
    disc = PatchDiscriminator(ndf=8, n_layers=3)
    convs = [m for m in disc.modules() if isinstance(m, nn.Conv2d)]
    assert [c.stride[0] for c in convs] == [2, 2, 2, 1, 1]
    assert [c.out_channels for c in convs] == [8, 16, 32, 64, 1]
    assert all(c.kernel_size == (4, 4) for c in convs)
    assert sum(isinstance(m, nn.InstanceNorm2d) for m in disc.modules()) == 3
    assert not any(isinstance(m, nn.Sigmoid) for m in disc.modules())


# --- init_weights ------------------------------------------------------------------------------------------------

def test_init_weights_normal_002():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(16, 64, 3), nn.BatchNorm2d(64), nn.ConvTranspose2d(64, 32, 3),
                        nn.InstanceNorm2d(32, affine=True))
    for p in net.parameters():
        nn.init.constant_(p, 5.0)
    assert init_weights(net) is net
    for conv in (net[0], net[2]):
        assert conv.weight.std().item() == pytest.approx(0.02, rel=0.1)
        assert conv.weight.mean().abs().item() < 0.005
        assert torch.all(conv.bias == 0)
    for norm in (net[1], net[3]):
        assert norm.weight.mean().item() == pytest.approx(1.0, abs=0.02)
        assert torch.all(norm.bias == 0)
    gen = ResnetGenerator(ngf=8, n_blocks=1)  # initialized on construction
    weights = torch.cat([m.weight.flatten() for m in gen.modules() if isinstance(m, nn.Conv2d)])
    assert weights.std().item() == pytest.approx(0.02, rel=0.1)


# --- ImagePool ---------------------------------------------------------------------------------------------------

def _batch(start: int, n: int) -> torch.Tensor:
    """n images of shape [1, 2, 2] whose every value is their index (start, start + 1, ...)."""
    return torch.arange(start, start + n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 1, 2, 2).clone()


def _ids(images: torch.Tensor) -> list[int]:
    return [int(v) for v in images[:, 0, 0, 0]]


def test_pool_size_zero_passes_through():
    pool = ImagePool(0)
    x = torch.rand(3, 3, 4, 4, requires_grad=True)
    assert pool.query(x) is x and len(pool) == 0


def test_pool_fills_then_mixes_old_and_new():
    pool = ImagePool(4, generator=torch.Generator().manual_seed(0))
    assert _ids(pool.query(_batch(0, 3))) == [0, 1, 2]
    # Fills up to 4 with image 3; image 4 arrives at a full pool.
    out = _ids(pool.query(_batch(3, 2)))
    assert out[0] == 3 and len(pool) == 4
    returned, stored = [], set()
    for step in range(20):
        out = _ids(pool.query(_batch(10 + 4 * step, 4)))
        returned += [(i, 10 + 4 * step + k) for k, i in enumerate(out)]
        stored = set(_ids(torch.stack(pool.images)))
        assert len(pool) == 4
    new = sum(i == fresh for i, fresh in returned)
    old = len(returned) - new
    assert 20 < new < 60 and 20 < old < 60  # about half each of the 80 draws
    assert all(i <= fresh for i, fresh in returned)  # an old image is always one seen before
    assert max(stored) >= 10  # replaced by newer images


def test_pool_returns_detached_clones():
    pool = ImagePool(2)
    fake = torch.rand(2, 3, 4, 4, requires_grad=True) * 1
    out = pool.query(fake)
    assert not out.requires_grad and out.grad_fn is None
    assert all(not image.requires_grad for image in pool.images)
    before = pool.images[0].clone()
    fake.data.add_(1)  # the stored images are copies, not views of the generator's output
    assert torch.equal(pool.images[0], before)


def test_pool_is_deterministic_with_a_seeded_generator():
    def run(seed):
        pool = ImagePool(3, generator=torch.Generator().manual_seed(seed))
        return [_ids(pool.query(_batch(5 * i, 5))) for i in range(6)]

    assert run(1) == run(1)
    assert run(1) != run(2)


def test_pool_state_dict_round_trip():
    pool = ImagePool(3, generator=torch.Generator().manual_seed(0))
    pool.query(_batch(0, 5))
    state = pool.state_dict()
    assert state["size"] == 3 and len(state["images"]) == 3
    restored = ImagePool(3, generator=torch.Generator().manual_seed(7))
    restored.load_state_dict(state)  # images and the RNG state: the restored pool continues as the original does
    assert all(torch.equal(a, b) for a, b in zip(restored.images, pool.images))
    batch = _batch(100, 6)
    assert torch.equal(pool.query(batch), restored.query(batch))
    with pytest.raises(ValueError, match="more than size"):
        ImagePool(2).load_state_dict(state)


# --- losses ------------------------------------------------------------------------------------------------------

def test_lsgan_loss_by_hand():
    scores = torch.tensor([[0.5, 1.5]])
    # real: ((0.5 - 1)^2 + (1.5 - 1)^2) / 2 = (0.25 + 0.25) / 2 = 0.25
    assert lsgan_loss(scores, True).item() == pytest.approx(0.25)
    # fake: (0.5^2 + 1.5^2) / 2 = (0.25 + 2.25) / 2 = 1.25
    assert lsgan_loss(scores, False).item() == pytest.approx(1.25)


def test_discriminator_loss_by_hand():
    real = torch.tensor([[0.5, 1.5]])       # lsgan(real, True) = 0.25
    fake = torch.tensor([[0.0, 1.0, 2.0]])  # lsgan(fake, False) = (0 + 1 + 4) / 3 = 5/3
    assert discriminator_loss(real, fake).item() == pytest.approx(0.5 * (0.25 + 5 / 3))


def test_cycle_and_identity_losses_by_hand():
    a = torch.tensor([[0.0, 0.5], [1.0, 0.25]])
    b = torch.tensor([[0.5, 0.5], [0.0, 0.75]])
    # |0 - .5| + |.5 - .5| + |1 - 0| + |.25 - .75| = .5 + 0 + 1 + .5 = 2; mean = 0.5 on [0, 1],
    # 1.0 on CycleGAN's [-1, 1] scale (2x - 1 doubles every difference)
    assert cycle_loss(a, b).item() == pytest.approx(1.0)
    assert identity_loss(a, b).item() == pytest.approx(1.0)


def test_semantic_consistency_loss_with_ignore_by_hand():
    # B=1, C=2, H=1, W=3; the last pixel is ignored.
    logits = torch.tensor([[[[2.0, 0.0, 1.0]], [[0.0, 1.0, -5.0]]]])
    labels = torch.tensor([[[0, 1, 255]]])
    # pixel 0, label 0: -log(e^2 / (e^2 + e^0)) = log(1 + e^-2); pixel 1, label 1: log(1 + e^-1)
    expected = (math.log(1 + math.exp(-2)) + math.log(1 + math.exp(-1))) / 2
    assert semantic_consistency_loss(logits, labels).item() == pytest.approx(expected)
    # Changing the ignored pixel's logits changes nothing.
    logits[0, :, 0, 2] = torch.tensor([9.0, -9.0])
    assert semantic_consistency_loss(logits, labels).item() == pytest.approx(expected)


def test_semantic_consistency_loss_all_ignored_is_zero_with_graph():
    logits = torch.randn(1, 3, 2, 2, requires_grad=True)
    loss = semantic_consistency_loss(logits, torch.full((1, 2, 2), 255))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logits.grad == 0)
