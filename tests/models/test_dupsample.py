"""DUpsample: layout against explicit loops, the fits against a dense reference, the cache, DDP."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp

from segbench.cache import CACHE_ENV
from segbench.data import SyntheticSegmentation
from segbench.models.layers import dupsample as D
from segbench.models.layers import label_basis as B
from segbench.models.layers.dupsample import DUpsample

K = 3


def random_labels(*shape: int, k: int = K, void: float = 0.1, seed: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, k, shape, generator=gen)
    return torch.where(torch.rand(shape, generator=gen) < void, 255, labels)


@pytest.mark.parametrize(("h", "w", "r"), [(2, 3, 2), (3, 2, 4), (1, 5, 3)])
def test_depth_to_space_matches_an_explicit_loop_on_non_square_maps(h, w, r):
    c = 2
    x = torch.randn(2, c * r * r, h, w)
    want = torch.zeros(2, c, h * r, w * r)
    for n in range(2):
        for ch in range(c):
            for y in range(h):
                for xx in range(w):
                    for i in range(r):
                        for j in range(r):
                            want[n, ch, y * r + i, xx * r + j] = x[n, ch * r * r + i * r + j, y, xx]
    got = D.depth_to_space(x, r)
    assert torch.equal(got, want)
    assert torch.equal(B.space_to_depth(got, r), x)


def test_dupsample_forward_is_w_times_x_plus_mu_rearranged():
    r, k, h, w = 2, 4, 2, 3
    layer = DUpsample(k, K, r)
    gen = torch.Generator().manual_seed(0)
    weight, bias = torch.randn(K * r * r, k, generator=gen), torch.randn(K * r * r, generator=gen)
    layer.set_basis(weight, bias)
    x = torch.randn(1, k, h, w, generator=gen)
    out = layer(x)
    assert out.shape == (1, K, h * r, w * r)
    for c in range(K):
        for y in range(h):
            for xx in range(w):
                for i in range(r):
                    for j in range(r):
                        n = c * r * r + i * r + j
                        want = weight[n] @ x[0, :, y, xx] + bias[n]
                        assert torch.isclose(out[0, c, y * r + i, xx * r + j], want, atol=1e-5)
    assert bool(layer.fitted)


def test_label_patches_layout_padding_and_void():
    r = 2
    mask = random_labels(3, 5)  # pads to 4 x 6 with void
    rows = B.label_patches(mask, r, K, 255)
    assert rows.shape == (2 * 3, r * r)
    padded = torch.full((4, 6), 255)
    padded[:3, :5] = mask
    m = 0
    for y in range(2):
        for x in range(3):
            for i in range(r):
                for j in range(r):
                    v = int(padded[y * r + i, x * r + j])
                    assert int(rows[m, i * r + j]) == (K if v == 255 else v)
            m += 1
    with pytest.raises(ValueError, match="outside"):
        B.label_patches(torch.tensor([[0, 7], [1, 2]]), 2, K, 255)


def test_unique_rows_is_exact_also_when_every_hash_collides(monkeypatch):
    gen = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 3, (500, 4), generator=gen, dtype=torch.uint8)
    counts = torch.rand(500, generator=gen, dtype=torch.float64)
    want_rows, inverse = torch.unique(rows, dim=0, return_inverse=True)
    want_counts = torch.zeros(len(want_rows), dtype=torch.float64).index_add_(0, inverse, counts)

    def check(got_rows, got_counts):
        order = torch.unique(got_rows, dim=0, return_inverse=True)[1].argsort()
        assert torch.equal(got_rows[order], want_rows)
        assert torch.allclose(got_counts[order], want_counts)

    check(*B.unique_rows(rows, counts))
    monkeypatch.setattr(B, "_mix64", lambda x: torch.zeros_like(x))  # every row collides
    check(*B.unique_rows(rows, counts))


@pytest.mark.parametrize(("void", "kept"), [("zero", 2), ("drop_patch", 1)])
def test_void_handling(void, kept):
    v = 255
    mask = torch.tensor([[0, 1, v, v, 0, v], [1, 1, v, v, 0, 1]])  # clean, all void, partly void
    patches = B.collect_patches([mask], 2, K, 255, void)
    assert patches.counts.sum() == kept
    if void == "zero":  # the partly void patch keeps its labelled pixels, void is the zero vector
        assert patches.mean().sum() * patches.counts.sum() == 4 + 3


def dense_patches(masks: list[torch.Tensor], r: int, k: int) -> torch.Tensor:
    """Every patch vector of ``masks`` (void patches dropped), by explicit loops."""
    vectors = []
    for m in masks:
        m = B.pad_labels(m, r, 255)
        for y in range(0, m.shape[0], r):
            for x in range(0, m.shape[1], r):
                block = m[y : y + r, x : x + r]
                if (block == 255).all():
                    continue
                v = torch.zeros(k * r * r, dtype=torch.float64)
                for i in range(r):
                    for j in range(r):
                        if block[i, j] != 255:
                            v[int(block[i, j]) * r * r + i * r + j] = 1
                vectors.append(v)
    return torch.stack(vectors)


def subspace_distance(a: torch.Tensor, b: torch.Tensor) -> float:
    """sin of the largest principal angle between the column spaces of a and b."""
    qa, qb = torch.linalg.qr(a.double())[0], torch.linalg.qr(b.double())[0]
    return float(torch.linalg.matrix_norm(qa - qb @ (qb.T @ qa), ord=2))


def smooth_masks(n: int, size: int, seed: int) -> list[torch.Tensor]:
    """Label maps with spatial structure (blocky regions), some void: a decaying spectrum."""
    gen = torch.Generator().manual_seed(seed)
    coarse = torch.randint(0, K, (n, 1, size // 4, size // 4), generator=gen).float()
    masks = torch.nn.functional.interpolate(coarse, scale_factor=4, mode="nearest")[:, 0].long()
    masks[torch.rand(masks.shape, generator=gen) < 0.05] = 255
    return list(masks[:, :-1, :-3])  # non-square, not a multiple of r


@pytest.mark.parametrize("exact", [True, False])
def test_pca_matches_a_dense_reference(exact):
    r, k = 4, 6
    masks = smooth_masks(12, 32, seed=1)
    basis = B.fit_pca(B.collect_patches(masks, r, K, 255), k, exact=exact, iters=6)
    v = dense_patches(masks, r, K)
    mean = v.mean(0)
    cov = (v - mean).T @ (v - mean) / len(v)
    evals, evecs = torch.linalg.eigh(cov)
    top = evecs[:, evals.argsort(descending=True)[:k]]
    assert torch.allclose(basis.mean.double(), mean, atol=1e-6)
    assert torch.allclose(basis.variance.double(), evals.sort(descending=True)[0][:k], rtol=1e-3)
    assert subspace_distance(basis.weight, top) < 1e-3
    assert torch.allclose(basis.weight.T @ basis.weight, torch.eye(k), atol=1e-5)


def test_full_rank_pca_reconstructs_every_patch_exactly():
    r = 2
    masks = smooth_masks(4, 16, seed=2)
    basis = B.fit_pca(B.collect_patches(masks, r, K, 255), K * r * r)
    v = dense_patches(masks, r, K).float()
    recon = (v - basis.mean) @ basis.encoder.T @ basis.weight.T + basis.mean
    assert torch.allclose(recon, v, atol=1e-4)


def test_sgd_fit_approaches_the_pca_optimum():
    r, k = 2, 4
    masks = smooth_masks(8, 32, seed=3)
    patches = B.collect_patches(masks, r, K, 255)
    v = dense_patches(masks, r, K).float()

    def error(b: B.Basis) -> float:
        recon = (v - b.mean) @ b.encoder.T @ b.weight.T + b.mean
        return float((recon - v).square().sum(1).mean())

    pca = error(B.fit_pca(patches, k))
    sgd = error(B.fit_sgd(patches, k, steps=1500, lr=3e-3))
    untrained = error(B.fit_sgd(patches, k, steps=0))
    assert pca <= sgd + 1e-4  # PCA is the optimal linear reconstruction
    assert sgd < pca + 0.1 * (untrained - pca)


def tiny_data(seed: int = 0) -> SyntheticSegmentation:
    return SyntheticSegmentation(
        num_train=6, num_val=2, num_test=2, image_size=(32, 48), seed=seed, num_workers=0
    )


def test_fit_from_datamodule_caches_by_data_and_reuses(tmp_path, monkeypatch):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    first = DUpsample(8, 11, 4)
    first.fit_from_datamodule(tiny_data())
    assert first.basis_source == "fitted"
    files = list((tmp_path / "dupsample").glob("*.pt"))
    assert len(files) == 1
    assert "SyntheticSegmentation" in files[0].name
    assert "r4-K11-k8-pca-zero" in files[0].name

    second = DUpsample(8, 11, 4)
    second.fit_from_datamodule(tiny_data())
    assert second.basis_source == "cache"
    assert torch.equal(first.weight, second.weight)
    assert torch.equal(first.bias, second.bias)

    other = DUpsample(8, 11, 4)
    other.fit_from_datamodule(tiny_data(seed=1))  # other images: another key, another fit
    assert other.basis_source == "fitted"
    assert len(list((tmp_path / "dupsample").glob("*.pt"))) == 2
    assert not torch.equal(first.weight, other.weight)

    second.fit_from_datamodule(tiny_data(seed=1))  # already fitted (e.g. from a checkpoint)
    assert second.basis_source == "checkpoint"
    assert torch.equal(first.weight, second.weight)

    with pytest.raises(RuntimeError, match="failed") as err:
        DUpsample(8, 5, 4).fit_from_datamodule(tiny_data())
    assert "5 classes" in str(err.value.__cause__)


def test_trainable_basis_is_a_parameter_and_fixed_one_a_buffer():
    fixed, trained = DUpsample(8, 11, 4), DUpsample(8, 11, 4, trainable=True)
    assert not list(fixed.parameters())
    assert {n for n, _ in trained.named_parameters()} == {"weight", "bias"}
    assert set(fixed.state_dict()) == set(trained.state_dict()) == {"weight", "bias", "fitted"}


def _ddp_worker(rank: int, world: int, init: str, cache: str, out: str) -> None:
    import torch.distributed as dist

    os.environ[CACHE_ENV] = cache
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        layer = DUpsample(8, 11, 4)
        layer.fit_from_datamodule(tiny_data())
        failed = False
        try:
            DUpsample(8, 5, 4).fit_from_datamodule(tiny_data())
        except RuntimeError:
            failed = True
        torch.save(
            {"weight": layer.weight, "source": layer.basis_source, "failed": failed},
            Path(out) / f"rank{rank}.pt",
        )
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(sys.platform != "linux", reason="gloo DDP on CPU is exercised on Linux")
def test_ddp_rank_zero_fits_and_every_rank_ends_with_the_same_basis(tmp_path):
    cache, out = tmp_path / "cache", tmp_path / "out"
    out.mkdir()
    init = f"file://{tmp_path / 'rendezvous'}"
    mp.spawn(_ddp_worker, args=(2, init, str(cache), str(out)), nprocs=2, join=True)
    r0, r1 = (torch.load(out / f"rank{i}.pt", weights_only=False) for i in range(2))
    assert (r0["source"], r1["source"]) == ("fitted", "broadcast")
    assert torch.equal(r0["weight"], r1["weight"])
    assert len(list((cache / "dupsample").glob("*.pt"))) == 1  # written once, by rank 0
    assert r0["failed"]
    assert r1["failed"]
