"""robprune.corruptions: every corruption's contract (shape, dtype, range, 8-bit levels, determinism per
seed, severity 1 -> 5 ordered in a measured distance), agreement with the reference libraries
make_cifar_c.py calls (PIL, scipy, numpy), and the pieces that emulate a sequential or C library step."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from robprune.corruptions import CORRUPTIONS, NAMES, PARAMS, batch_seed, corrupt
from robprune.corruptions.base import Context, Draws
from robprune.corruptions.blur import _local_copies
from robprune.corruptions.filters import hsv_to_rgb, motion_blur, rgb_to_hsv


@pytest.fixture(scope="module")
def natural() -> torch.Tensor:
    """(24, 3, 32, 32) patches of scikit-learn's bundled photographs, on 8-bit levels (no download)."""
    from sklearn.datasets import load_sample_images

    photos = torch.from_numpy(np.stack(load_sample_images().images)).permute(0, 3, 1, 2).float() / 255
    small = F.interpolate(photos, scale_factor=0.25, mode="area")
    patches = small.unfold(2, 32, 24).unfold(3, 32, 24).permute(0, 2, 3, 1, 4, 5).reshape(-1, 3, 32, 32)
    return torch.floor(patches[::2][:24] * 255) / 255


@pytest.fixture(scope="module")
def digits28() -> torch.Tensor:
    """(16, 1, 28, 28) grey digits (MNIST-sized), on 8-bit levels."""
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().images[:16], dtype=torch.float32).unsqueeze(1) / 16
    return torch.floor(F.interpolate(x, size=28, mode="bilinear").clamp(0, 1) * 255) / 255


def ssim_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """1 − SSIM (Wang et al. 2004: 11x11 Gaussian window σ 1.5, C1 = 0.01², C2 = 0.03²), mean over pixels."""
    taps = torch.exp(-torch.arange(-5, 6.0) ** 2 / (2 * 1.5 ** 2))
    window = (taps[:, None] * taps[None]) / taps.sum() ** 2
    window = window.expand(a.shape[1], 1, 11, 11)

    def blur(t):
        return F.conv2d(t, window, padding=5, groups=a.shape[1])

    ma, mb = blur(a), blur(b)
    va, vb, cov = blur(a * a) - ma ** 2, blur(b * b) - mb ** 2, blur(a * b) - ma * mb
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    ssim = ((2 * ma * mb + c1) * (2 * cov + c2)) / ((ma ** 2 + mb ** 2 + c1) * (va + vb + c2))
    return 1.0 - float(ssim.mean())


@pytest.mark.parametrize("name", NAMES)
def test_contract(name, natural, digits28):
    for images in (natural[:8], digits28[:8]):
        before = images.clone()
        out = corrupt(images, name, 3, seed=7)
        assert out.shape == images.shape and out.dtype == torch.float32 and out.device == images.device
        assert out.min() >= 0 and out.max() <= 1
        assert torch.allclose(out * 255, torch.round(out * 255), atol=1e-4)  # 8-bit levels, as the released files
        assert torch.equal(images, before)  # the input is not written
        assert torch.equal(out, corrupt(images, name, 3, seed=7))  # deterministic per seed
        assert torch.equal(out, corrupt(torch.round(images * 255).to(torch.uint8), name, 3, seed=7))  # uint8 input
        if not (name == "saturate" and images.shape[1] == 1):  # a grey image has no saturation to change
            assert (out - images).abs().mean() > 1e-3  # it corrupts
        other = corrupt(images, name, 3, seed=8)
        assert torch.equal(out, other) != CORRUPTIONS[name].random  # the seed matters exactly for the random ones


# Corruptions whose make_cifar_c.py parameters are not ordered in a distance from the clean image, and
# what their parameters do order instead (checked in test_severity_order_where_not_monotone).
NOT_MONOTONE = {
    "saturate": "severities 1-2 desaturate (×0.3, ×0.1), 3-5 oversaturate (×1.5, ×2 +0.1, ×2.5 +0.2)",
    "glass_blur": "the second pixel-moving pass (severities 4-5) is the step; a larger σ (3 vs 2, 5 vs 4) smooths",
    "spatter": "severities 1-3 are water drops, 4-5 opaque mud: two families, each ordered",
    "elastic_transform": "the random affine shrinks (0.08 -> 0.03 of the size) while the elastic field grows",
}


@pytest.mark.parametrize("name", [n for n in NAMES if n not in NOT_MONOTONE])
def test_severity_monotone_in_ssim_distance(name, natural):
    distance = [ssim_distance(corrupt(natural, name, s, seed=0), natural) for s in range(1, 6)]
    assert all(b >= a - 1e-6 for a, b in zip(distance, distance[1:])), (name, distance)
    assert distance[-1] > distance[0]


def test_severity_order_where_not_monotone(natural):
    d = {n: [ssim_distance(corrupt(natural, n, s, seed=0), natural) for s in range(1, 6)] for n in NOT_MONOTONE}
    assert d["saturate"][0] < d["saturate"][1] and d["saturate"][2] < d["saturate"][3] < d["saturate"][4]
    assert min(d["glass_blur"][3:]) > max(d["glass_blur"][:3])
    assert d["spatter"][0] < d["spatter"][1] < d["spatter"][2] and d["spatter"][3] < d["spatter"][4]
    elastic = CORRUPTIONS["elastic_transform"].fn
    field = [ssim_distance(elastic(natural, (a, s, 0.0), Draws(0), Context.of(natural)).clamp(0, 1), natural)
             for a, s, _ in PARAMS["elastic_transform"]]
    affine = [ssim_distance(elastic(natural, (0.0, 0.0, t), Draws(0), Context.of(natural)).clamp(0, 1), natural)
              for *_, t in PARAMS["elastic_transform"]]
    assert all(b > a for a, b in zip(field, field[1:])), field      # the displacement field grows
    assert all(b < a for a, b in zip(affine, affine[1:])), affine   # the affine part shrinks


def test_severity_monotone_on_grey_mnist_size(digits28):
    """Grey 28x28 (MNIST): the same order, except pixelate, whose int(28·p) sizes (26, 25, 23, 21, 18)
    alias differently (there the size itself must shrink), and frost from 3 to 4, which only lowers the
    image weight (0.9 -> 0.85) under the same 0.4 of frost: on black digit backgrounds that moves the
    image towards the frost as much as away from the clean image."""
    for name in NAMES:
        if name in NOT_MONOTONE or name == "pixelate":
            continue
        distance = [ssim_distance(corrupt(digits28, name, s, seed=0), digits28) for s in range(1, 6)]
        steps = [(a, b) for i, (a, b) in enumerate(zip(distance, distance[1:])) if not (name == "frost" and i == 2)]
        assert all(b >= a - 1e-6 for a, b in steps), (name, distance)
    sizes = [int(28 * p) for p in PARAMS["pixelate"]]
    assert sizes == sorted(sizes, reverse=True)


def test_bad_arguments():
    x = torch.rand(2, 3, 8, 8)
    with pytest.raises(ValueError, match="unknown corruption 'fogg'.*valid: gaussian_noise"):
        corrupt(x, "fogg", 1)
    with pytest.raises(ValueError, match="severity"):
        corrupt(x, "fog", 6)
    with pytest.raises(ValueError, match=r"\(N, 1 or 3, H, W\)"):
        corrupt(torch.rand(2, 4, 8, 8), "fog", 1)


def test_batch_seeds_differ_and_repeat():
    seeds = {batch_seed(0, n, s, k) for n in NAMES for s in range(1, 6) for k in range(3)}
    assert len(seeds) == len(NAMES) * 15 and batch_seed(0, "fog", 1, 0) == batch_seed(0, "fog", 1, 0)


# ---- agreement with the libraries make_cifar_c.py calls ---------------------------------------------

def _hwc(x: torch.Tensor) -> np.ndarray:
    return np.round(x.permute(0, 2, 3, 1).numpy() * 255).astype(np.uint8)


def test_pixelate_and_jpeg_equal_pil(natural):
    from PIL import Image

    for severity in (1, 5):
        ours = _hwc(corrupt(natural, "pixelate", severity))
        c = PARAMS["pixelate"][severity - 1]
        ref = [np.asarray(Image.fromarray(im).resize((int(32 * c),) * 2, Image.BOX).resize((32, 32), Image.BOX))
               for im in _hwc(natural)]
        assert np.array_equal(ours, np.stack(ref))
        ours = _hwc(corrupt(natural, "jpeg_compression", severity))
        from robprune.corruptions.noise import _pil_jpeg  # the fallback codec gives the same bytes
        assert np.array_equal(ours, _hwc(torch.stack([_pil_jpeg(im, PARAMS["jpeg_compression"][severity - 1])
                                                      for im in torch.round(natural * 255).to(torch.uint8)]) / 255))
        ref = []
        for im in _hwc(natural):
            buf = io.BytesIO()
            Image.fromarray(im).save(buf, "JPEG", quality=PARAMS["jpeg_compression"][severity - 1])
            ref.append(np.asarray(Image.open(buf)))
        assert np.array_equal(ours, np.stack(ref))


def test_blurs_and_contrast_equal_scipy_numpy(natural):
    """gaussian_blur = skimage gaussian (scipy gaussian_filter, nearest); zoom_blur = clipped scipy zooms;
    contrast = the per-channel formula; all after np.uint8 truncation, within one 8-bit level."""
    from scipy import ndimage

    imgs = natural.permute(0, 2, 3, 1).double().numpy()

    def clipped_zoom(img, z):
        ch = int(np.ceil(32 / z))
        top = (32 - ch) // 2
        img = ndimage.zoom(img[top:top + ch, top:top + ch], (z, z, 1), order=1)
        trim = (img.shape[0] - 32) // 2
        return img[trim:trim + 32, trim:trim + 32]

    sigma, zoom_end, factor = PARAMS["gaussian_blur"][4], PARAMS["zoom_blur"][2], PARAMS["contrast"][4]
    refs = {"gaussian_blur": [ndimage.gaussian_filter(im, (sigma, sigma, 0), mode="nearest") for im in imgs],
            "zoom_blur": [(im + sum(clipped_zoom(im, z) for z in np.arange(1, zoom_end, 0.01)))
                          / (len(np.arange(1, zoom_end, 0.01)) + 1) for im in imgs],
            "contrast": [(im - im.mean((0, 1), keepdims=True)) * factor + im.mean((0, 1), keepdims=True) for im in imgs]}
    severity = {"gaussian_blur": 5, "zoom_blur": 3, "contrast": 5}
    for name, ref in refs.items():
        ref = np.uint8(np.clip(np.stack(ref), 0, 1) * 255).astype(int)
        ours = _hwc(corrupt(natural, name, severity[name])).astype(int)
        assert np.abs(ours - ref).max() <= 1, name
        assert (ours != ref).mean() < 0.01, name


def test_brightness_and_saturate_are_the_hsv_round_trip(natural):
    """The closed forms equal skimage's rgb2hsv -> edit -> hsv2rgb (robprune's port of it)."""
    x = natural.clone()
    x[0, :, :4, :4] = 0.0   # black pixels
    x[1, :, :4, :4] = 0.5   # grey pixels (saturation 0)
    hsv = rgb_to_hsv(x)
    for p in PARAMS["brightness"]:
        ref = hsv_to_rgb(torch.cat([hsv[:, :2], (hsv[:, 2:] + p).clamp(0, 1)], 1))
        assert torch.allclose(CORRUPTIONS["brightness"].fn(x, p, None, None), ref, atol=1e-5)
    for a, b in PARAMS["saturate"]:
        ref = hsv_to_rgb(torch.cat([hsv[:, :1], (hsv[:, 1:2] * a + b).clamp(0, 1), hsv[:, 2:]], 1))
        assert torch.allclose(CORRUPTIONS["saturate"].fn(x, (a, b), None, None), ref, atol=1e-5)


@pytest.mark.parametrize("delta", [1, 2])
def test_glass_pass_equals_the_sequential_loop(delta):
    """make_cifar_c.py's loop, with numpy's view semantics (x[h, w] ← x[h', w']), against the batched pass
    on the same draws: equal pixel for pixel, also for δ = 2 where sources were already overwritten."""
    x = torch.rand(3, 2, 12, 12)
    ours = _local_copies(x, delta, Draws(5))
    offsets = Draws(5).integers(-delta, delta, (3, len(range(12 - delta, delta, -1)) ** 2, 2)).numpy()
    for n in range(3):
        img = x[n].permute(1, 2, 0).numpy().copy()
        k = 0
        for h in range(12 - delta, delta, -1):
            for w in range(12 - delta, delta, -1):
                dx, dy = offsets[n, k]
                k += 1
                img[h, w], img[h + dy, w + dx] = img[h + dy, w + dx], img[h, w]
        assert np.array_equal(ours[n].permute(1, 2, 0).numpy(), img), n


def test_motion_blur_is_a_one_sided_line():
    """ImageMagick's kernel: tap i at offset round(i·(cos a, sin a)) with weight ∝ exp(−i²/2σ²): a dot
    smears against the direction of the angle, its first tap heaviest."""
    x = torch.zeros(2, 1, 21, 21)
    x[:, :, 10, 10] = 1.0
    out = motion_blur(x, 3, 1.5, torch.tensor([0.0, 90.0]))
    weights = np.exp(-np.arange(7) ** 2 / (2 * 1.5 ** 2))
    weights /= weights.sum()
    row = out[0, 0, 10, 4:11].flip(0).numpy()  # angle 0: output (10, 10 - i) reads the dot at tap i
    col = out[1, 0, 4:11, 10].flip(0).numpy()  # angle 90°: output (10 - i, 10)
    for line in (row, col):
        assert np.abs(line - np.floor(np.round(weights * 65535) / 257) / 255).max() < 1.5 / 255
    assert out[0].sum() == pytest.approx(out[0, 0, 10].sum()) and out[1].sum() == pytest.approx(out[1, 0, :, 10].sum())


def test_other_sizes_scale_spatial_parameters():
    """64x64 (Tiny-ImageNet): blur σ doubles, so a 64-pixel image blurred equals the 32-pixel blur of
    its 2x2 downsample, roughly; 8x8 digits keep the 32-pixel parameters (blurs still visible)."""
    assert Context.of(torch.zeros(1, 3, 64, 64)).scale == 2 and Context.of(torch.zeros(1, 1, 8, 8)).scale == 1
    big = F.interpolate(torch.rand(4, 3, 8, 8), size=64, mode="bilinear")
    small = F.avg_pool2d(big, 2)
    blurred_big = F.avg_pool2d(corrupt(big, "gaussian_blur", 5), 2)
    assert (blurred_big - corrupt(small, "gaussian_blur", 5)).abs().mean() < 0.01
    digit = torch.zeros(1, 1, 8, 8)
    digit[..., 2:6, 3:5] = 1.0
    assert (corrupt(digit, "defocus_blur", 5) - digit).abs().mean() > 0.05


def test_frost_user_textures(tmp_path):
    """A folder of frost images replaces the procedural textures; they are resized by 0.2·size/32."""
    from PIL import Image

    from robprune.corruptions.weather import user_textures

    Image.fromarray(np.full((400, 300, 3), 200, np.uint8)).save(tmp_path / "a.png")
    textures = user_textures(str(tmp_path), 32)
    assert textures.shape == (1, 3, 60, 60) and torch.allclose(textures, torch.full_like(textures, 200 / 255))
    x = torch.zeros(2, 3, 32, 32)
    out = corrupt(x, "frost", 1, seed=0, textures=textures)  # 1·x + 0.2·frost
    assert torch.allclose(out, torch.full_like(out, np.floor(0.2 * 200 + 1e-3) / 255), atol=1e-6)
    (tmp_path / "b").mkdir()
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "b" / "tiny.png")
    from robprune.errors import DataError

    with pytest.raises(DataError, match="after resizing"):
        user_textures(str(tmp_path / "b"), 32)


@pytest.mark.gpu
def test_same_images_on_gpu_as_on_cpu(natural):
    for name in NAMES:
        cpu = corrupt(natural, name, 3, seed=1)
        gpu = corrupt(natural.cuda(), name, 3, seed=1)
        assert gpu.device.type == "cuda"
        assert (gpu.cpu() - cpu).abs().max() <= 1 / 255 + 1e-6, name
