"""PI-resize exactness, agreement with timm, the separable formulation, dtypes and errors."""

from __future__ import annotations

import pytest
import timm
import torch
from timm.layers import resample_abs_pos_embed, resample_patch_embed

from exporter import pi_resize_patch_embed, resample_pos_embed
from exporter.build.resize import pi_resize_patch_embed_full, resize_matrix
from exporter.core.errors import PatchSizeError, UsageError
from exporter.source.resampling import ResizeMethod, default_patch_resize, num_pos_prefix_tokens

from conftest import tiny_model

BICUBIC = ResizeMethod("bicubic", antialias=True)


def identity_error(w_old: torch.Tensor, w_new: torch.Tensor, method: ResizeMethod, samples: int = 64) -> float:
    """max |<x, w_old> - <B x, w_new>| / max |<x, w_old>| in float64 over random normal x."""
    old, new = tuple(w_old.shape[2:]), tuple(w_new.shape[2:])
    b = resize_matrix(old, new, method)
    x = torch.randn(samples, b.shape[1], dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    lhs = x @ w_old.reshape(-1, b.shape[1]).double().T
    rhs = (x @ b.T) @ w_new.reshape(-1, b.shape[0]).double().T
    return float((lhs - rhs).abs().max() / lhs.abs().max())


@pytest.fixture(scope="module")
def kernel() -> torch.Tensor:
    return torch.randn(768, 3, 16, 16, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("new", [20, 32, 48])
def test_upsampling_preserves_inner_products_to_1e7(kernel, new):
    ours = identity_error(kernel, pi_resize_patch_embed(kernel, (new, new)), BICUBIC)
    theirs = identity_error(kernel, resample_patch_embed(kernel, [new, new]), BICUBIC)
    print(f"16->{new}: identity error ours {ours:.2e}, timm {theirs:.2e}")
    assert ours <= 1e-7
    assert ours < theirs  # float64 pseudo-inverse beats timm's float32 one


@pytest.mark.parametrize("new", [8, 20, 32, 48])
@pytest.mark.parametrize("method", [BICUBIC, ResizeMethod("bilinear", False), ResizeMethod("bilinear", True)])
def test_agrees_with_timm_resample_patch_embed(kernel, new, method):
    ours = pi_resize_patch_embed(kernel, (new, new), method.interpolation, method.antialias)
    theirs = resample_patch_embed(kernel, [new, new], interpolation=method.interpolation, antialias=method.antialias)
    assert float((ours - theirs).abs().max() / theirs.abs().max()) <= 1e-4


@pytest.mark.parametrize(("old", "new"), [((16, 16), (32, 32)), ((16, 16), (10, 15)), ((12, 8), (7, 20))])
def test_separable_equals_full_pseudo_inverse(old, new):
    w = torch.randn(4, 3, *old, dtype=torch.float64)
    separable = pi_resize_patch_embed(w, new)
    full = pi_resize_patch_embed_full(w, new, BICUBIC)
    assert separable.shape == (4, 3, *new)
    assert torch.allclose(separable, full, rtol=0, atol=1e-9 * float(full.abs().max()))


def test_resize_matrix_is_torch_2d_interpolate():
    """The Kronecker product of 1-D matrices is exactly torch's 2-D resize of basis images."""
    for method in (BICUBIC, ResizeMethod("bilinear", False)):
        b = resize_matrix((6, 5), (9, 12), method)
        basis = torch.eye(30, dtype=torch.float64).reshape(30, 1, 6, 5)
        direct = (
            torch.nn.functional.interpolate(basis, size=(9, 12), mode=method.interpolation, antialias=method.antialias)
            .reshape(30, -1)
            .T
        )
        assert torch.allclose(b, direct, atol=1e-14)


def test_downsampling_is_the_least_squares_solution():
    w = torch.randn(2, 1, 16, 16, dtype=torch.float64)
    w_new = pi_resize_patch_embed(w, 8)
    b = resize_matrix((16, 16), (8, 8), BICUBIC)
    # Normal equations of min ||B^T w_new - w_old||: B (B^T w_new - w_old) = 0.
    residual = b.T @ w_new.reshape(2, 64).T - w.reshape(2, 256).T
    assert float((b @ residual).abs().max()) < 1e-10


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.float64])
def test_every_dtype_keeps_its_dtype(dtype):
    w = torch.randn(8, 3, 16, 16).to(dtype)
    out = pi_resize_patch_embed(w, (24, 24))
    reference = pi_resize_patch_embed(w.double(), (24, 24))
    assert out.dtype == dtype and out.shape == (8, 3, 24, 24)
    assert torch.allclose(out.double(), reference, rtol=1e-2, atol=1e-2)


def test_non_square_patch_and_same_size_is_identity():
    w = torch.randn(8, 3, 16, 16)
    assert pi_resize_patch_embed(w, (10, 15)).shape == (8, 3, 10, 15)
    assert pi_resize_patch_embed(w, 16) is w


def test_is_differentiable():
    w = torch.randn(4, 3, 32, 32, requires_grad=True)
    pi_resize_patch_embed(w, (8, 8)).sum().backward()
    assert w.grad is not None and w.grad.abs().sum() > 0


@pytest.mark.parametrize("bad", [0, -4, "abc", 2.5])
def test_bad_patch_sizes_raise_typed_errors(bad):
    with pytest.raises(PatchSizeError):
        pi_resize_patch_embed(torch.randn(8, 3, 16, 16), bad)


def test_non_4d_weight_is_refused():
    with pytest.raises(UsageError, match="4-D"):
        pi_resize_patch_embed(torch.randn(8, 16, 16), (8, 8))


def test_bad_interpolation_is_refused():
    with pytest.raises(UsageError, match="bilinear, bicubic"):
        pi_resize_patch_embed(torch.randn(8, 3, 16, 16), 8, interpolation="nearest")


def test_family_defaults():
    assert default_patch_resize("flexivit") == ResizeMethod("bilinear", antialias=False)
    assert default_patch_resize("vit") == ResizeMethod("bicubic", antialias=True)


@pytest.mark.parametrize(
    ("name", "extra", "prefix"),
    [
        ("flexivit_small", {}, 0),  # no_embed_class: no slot for the class token
        ("vit_base_patch16_224", {}, 1),  # class token has a position slot
        ("vit_base_patch16_reg4_gap_256", {}, 0),  # registers, no_embed_class
        ("vit_base_patch16_224", {"reg_tokens": 2}, 3),  # class + registers with slots
    ],
)
def test_pos_embed_prefix_tokens_come_from_the_model(name, extra, prefix):
    model = tiny_model(name, **extra)
    assert num_pos_prefix_tokens(model) == prefix
    grid = model.patch_embed.grid_size
    new = (grid[0] // 2, grid[1] // 2)
    resized = resample_pos_embed(model.pos_embed.data, new, model=model)
    assert resized.shape == (1, prefix + new[0] * new[1], model.embed_dim)
    expected = resample_abs_pos_embed(model.pos_embed.data, list(new), num_prefix_tokens=prefix)
    assert torch.allclose(resized, expected)


def test_seed_readme_usage_with_timm():
    """The seed project's README example, importing from ``exporter`` (pretrained=False here)."""
    state_dict = timm.create_model("vit_base_patch16_224", pretrained=False, **{"depth": 1}).state_dict()
    new_patch_size = (32, 32)
    state_dict["patch_embed.proj.weight"] = pi_resize_patch_embed(
        patch_embed=state_dict["patch_embed.proj.weight"], new_patch_size=new_patch_size
    )
    image_size = 224
    grid_size = image_size // new_patch_size[0]
    state_dict["pos_embed"] = resample_abs_pos_embed(posemb=state_dict["pos_embed"], new_size=[grid_size, grid_size])
    net = timm.create_model("vit_base_patch16_224", img_size=image_size, patch_size=new_patch_size, depth=1)
    net.load_state_dict(state_dict, strict=True)
    assert net(torch.randn(1, 3, 224, 224)).shape == (1, 1000)
