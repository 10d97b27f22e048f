"""Projections, the NS-Net basis, the semantic mapper and SupCon against independent references."""

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nsnet.heads.detectors import AdvancedNSNet, NSNet, SemanticMapper
from nsnet.heads.losses import supcon_loss
from nsnet.heads.method import build_head
from nsnet.heads.projection import (
    project_out_direction,
    project_out_subspace,
    semantic_basis,
)


def _randn(*shape: int, seed: int) -> torch.Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_rank1_projection_is_idempotent_and_annihilates_f(seed):
    x, f = _randn(64, 48, seed=seed), _randn(64, 48, seed=seed + 100) * 3.0
    xp = project_out_direction(x, f)
    torch.testing.assert_close(project_out_direction(xp, f), xp, rtol=0, atol=1e-12)
    assert (xp * f).sum(-1).abs().max() < 1e-10
    # the component orthogonal to f is untouched
    g = _randn(64, 48, seed=seed + 200)
    g = g - (g * f).sum(-1, keepdim=True) / (f * f).sum(-1, keepdim=True) * f
    torch.testing.assert_close(project_out_direction(g, f), g, rtol=0, atol=1e-12)


@pytest.mark.parametrize("seed", [3, 4])
def test_batched_rank1_form_equals_explicit_matrix_form(seed):
    x, f = _randn(32, 40, seed=seed), _randn(32, 40, seed=seed + 1)
    eye = torch.eye(40, dtype=torch.float64)
    explicit = torch.stack([
        x[i] @ (eye - torch.outer(f[i], f[i]) / (f[i] @ f[i])) for i in range(len(x))
    ])
    torch.testing.assert_close(project_out_direction(x, f), explicit, rtol=0, atol=1e-12)
    # the projection ignores the scale (and sign) of f, as P_i = I - f f^T/||f||^2 does
    torch.testing.assert_close(project_out_direction(x, -7.5 * f), explicit, rtol=0, atol=1e-12)


@pytest.mark.parametrize(("n", "d", "k", "normalize"), [(300, 24, 5, False), (200, 16, 7, True)])
def test_nsnet_projector_matches_numpy_svd(n, d, k, normalize):
    rng = np.random.default_rng(n + d)
    # captions with a dominant low-rank part, like real caption embeddings
    text = rng.normal(size=(n, 3)) @ rng.normal(size=(3, d)) * 4 + rng.normal(size=(n, d))
    ref_t = text / np.linalg.norm(text, axis=1, keepdims=True) if normalize else text
    _, s, vh = np.linalg.svd(ref_t, full_matrices=False)
    p_ref = np.eye(d) - vh[:k].T @ vh[:k]

    basis, explained = semantic_basis(torch.from_numpy(text).float(), k, normalize=normalize)
    assert basis.shape == (d, k)
    vk = basis.double().numpy()
    np.testing.assert_allclose(vk.T @ vk, np.eye(k), atol=1e-5)
    np.testing.assert_allclose(np.eye(d) - vk @ vk.T, p_ref, atol=1e-4)
    assert explained == pytest.approx((s[:k] ** 2).sum() / (s ** 2).sum(), rel=1e-5)

    x = rng.normal(size=(10, d))
    xp = project_out_subspace(torch.from_numpy(x).float(), basis).double().numpy()
    np.testing.assert_allclose(xp, x @ p_ref, atol=1e-4)

    head = NSNet(d, hidden_dim=8, proj_dim=4, nsnet_k=k, normalize=True)
    head.set_basis(basis)
    out = head(torch.from_numpy(x).float())
    x_unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    np.testing.assert_allclose(out.projected.double().numpy(), x_unit @ p_ref, atol=1e-4)


def test_nsnet_rank_is_clipped_to_the_number_of_captions():
    text = _randn(5, 12, seed=9).float()
    basis, explained = semantic_basis(text, 8)
    assert basis.shape == (12, 5)
    assert explained == pytest.approx(1.0, abs=1e-6)
    with pytest.raises(ValueError):
        semantic_basis(text, -1)


def test_mapper_starts_near_identity_and_receives_gradients():
    torch.manual_seed(0)
    d = 32
    mapper = SemanticMapper(d, 16)
    t = _randn(20, d, seed=5).float()
    f = mapper(t)
    # at initialisation f = LayerNorm(t): t centred and rescaled, the same direction up to that
    ref = (t - t.mean(-1, keepdim=True)) / torch.sqrt(t.var(-1, unbiased=False, keepdim=True)
                                                       + mapper.norm.eps)
    torch.testing.assert_close(f, ref, rtol=1e-5, atol=1e-5)
    assert F.cosine_similarity(f, t - t.mean(-1, keepdim=True)).min() > 0.999

    head = AdvancedNSNet(d, hidden_dim=16, proj_dim=8, dropout=0.0)
    x, y = _randn(20, d, seed=6).float(), torch.arange(20) % 2
    before = {k: v.clone() for k, v in head.mapper.state_dict().items()}
    opt = torch.optim.Adam(head.parameters(), lr=1e-2)
    for step in range(3):
        out = head(x, t)
        loss = supcon_loss(out.embedding, y) + F.binary_cross_entropy_with_logits(
            out.logit, y.float())
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grads = [p.grad for p in head.mapper.parameters()]
            assert any(g is not None and g.abs().sum() > 0 for g in grads)
        opt.step()
    for name, value in head.mapper.state_dict().items():
        assert not torch.equal(value, before[name]), f"mapper parameter {name} never moved"


def test_advanced_head_projects_out_its_own_mapped_direction():
    torch.manual_seed(1)
    head = AdvancedNSNet(24, hidden_dim=12, proj_dim=6)
    x, t = _randn(8, 24, seed=7).float(), _randn(8, 24, seed=8).float()
    out = head(x, t)
    assert (out.projected * out.semantic).sum(-1).abs().max() < 1e-4
    with pytest.raises(ValueError):
        head(x)


def _supcon_reference(z: list[list[float]], labels: list[int], tau: float) -> float:
    """Khosla et al. (2020) L_out, written as plain loops over anchors and pairs."""
    unit = [[v / math.sqrt(sum(c * c for c in row)) for v in row] for row in z]

    def sim(a: int, b: int) -> float:
        return sum(p * q for p, q in zip(unit[a], unit[b], strict=True)) / tau

    losses = []
    for i in range(len(z)):
        positives = [p for p in range(len(z)) if p != i and labels[p] == labels[i]]
        if not positives:
            continue
        denom = sum(math.exp(sim(i, a)) for a in range(len(z)) if a != i)
        losses.append(-sum(math.log(math.exp(sim(i, p)) / denom) for p in positives)
                      / len(positives))
    return sum(losses) / len(losses)


@pytest.mark.parametrize(("seed", "tau"), [(0, 0.07), (1, 0.5), (2, 1.0)])
def test_supcon_matches_a_plain_loop_reference(seed, tau):
    rng = np.random.default_rng(seed)
    z = rng.normal(size=(13, 6))
    labels = rng.integers(0, 2, size=13)
    labels[-1] = 2  # an anchor without positives is skipped by both
    got = supcon_loss(torch.from_numpy(z), torch.from_numpy(labels), tau)
    assert float(got) == pytest.approx(_supcon_reference(z.tolist(), labels.tolist(), tau),
                                       rel=1e-9)


def test_supcon_without_positives_is_zero_and_differentiable():
    z = torch.randn(3, 4, requires_grad=True)
    loss = supcon_loss(z, torch.tensor([0, 1, 2]))
    loss.backward()
    assert float(loss.detach()) == 0.0 and z.grad is not None


def test_composite_probe_is_linear_in_the_raw_feature():
    head = build_head("composite_probe", 16, normalize=True)
    x = _randn(6, 16, seed=11).float() * 5
    torch.testing.assert_close(head(x).logit, x @ head.linear.weight[0] + head.linear.bias[0])


def test_build_head_rejects_unknown_kinds():
    assert build_head("composite_probe", 8).kind == "composite_probe"
    with pytest.raises(ValueError, match="unknown head"):
        build_head("resnet", 8)
    with pytest.raises(ValueError, match="unknown head"):  # renamed: only old bundles map it
        build_head("ufd", 8)
