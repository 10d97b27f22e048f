"""Baseline heads against independent implementations of their papers' equations.

Each head's forward and loss are recomputed here from its parameters with plain tensor algebra
(loops where the paper sums), with the official code's behaviour where it differs from the
textbook form (RINE's summed BCE, its SupCon on anchors without a positive); each head trains a
few steps with its ``PaperSettings`` and its loss falls.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from nsnet.config import ParamsError, params_from_dict
from nsnet.heads.baselines import (
    RINE,
    SETTINGS,
    Cozzolino,
    PaperSettings,
    Plateau,
    UnivFD,
    make_optimizer,
    rine_supcon,
)
from nsnet.heads.losses import supcon_loss
from nsnet.heads.method import build_head, method
from nsnet.stages.cli import main

BASELINE_HEADS = {"univfd": UnivFD, "rine": RINE, "cozzolino": Cozzolino}


def _data(n: int, *shape: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Features whose mean differs by class (so a head can learn), labels 0/1 alternating."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 2
    x = torch.randn(n, *shape, generator=g) + 0.6 * (2 * y - 1).float().view(-1, *[1] * len(shape))
    return x, y


def _bce(logit: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample binary cross-entropy, -[y log s + (1-y) log(1-s)], s = sigmoid(logit)."""
    p = 1.0 / (1.0 + torch.exp(-logit.double()))
    return -(y.double() * torch.log(p) + (1 - y.double()) * torch.log(1 - p))


# ------------------------------------------------------------------------------------ UnivFD
def test_univfd_is_one_linear_layer_on_the_raw_embedding_with_mean_bce():
    torch.manual_seed(0)
    head = UnivFD(768)
    assert [n for n, _ in head.named_parameters()] == ["fc.weight", "fc.bias"]
    assert abs(float(head.fc.weight.detach().std()) - 0.02) < 0.003  # trainer.py: init_gain
    x, y = _data(10, 768)
    x = x * 7  # raw, unnormalised: the head must not normalise
    out = head(x, torch.randn(10, 5))  # the caption embedding is ignored
    w, b = head.fc.weight.detach().double()[0], float(head.fc.bias.detach())
    expected = x.double() @ w + b
    torch.testing.assert_close(out.logit.double(), expected, rtol=1e-5, atol=1e-5)
    assert out.embedding is None
    torch.testing.assert_close(head.loss(out, y).double(), _bce(out.logit, y).mean())


# -------------------------------------------------------------------------------------- RINE
def _rine_by_hand(head: RINE, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """RINE's equations, eval mode: per block l, g_l = P1(x_l); for each feature j,
    a_lj = exp(alpha_lj) / sum_m exp(alpha_mj); z = P2(sum_l a_l * g_l); logit = H(z)."""
    def chain(v: torch.Tensor, seq: torch.nn.Sequential, last_relu: bool = True) -> torch.Tensor:
        linears = [m for m in seq if isinstance(m, torch.nn.Linear)]
        for i, lin in enumerate(linears):
            v = v @ lin.weight.double().T + lin.bias.double()
            if last_relu or i < len(linears) - 1:
                v = torch.clamp(v, min=0)
        return v

    x = x.double()
    alpha = head.alpha.detach().double()[0]  # (L, P)
    a = torch.exp(alpha) / torch.exp(alpha).sum(dim=0, keepdim=True)
    z = sum(a[layer] * chain(x[:, layer], head.proj1) for layer in range(x.shape[1]))
    z = chain(z, head.proj2)
    return chain(z, head.head, last_relu=False)[:, 0], z


def test_rine_forward_is_its_papers_equations():
    torch.manual_seed(1)
    head = RINE(dim=32, n_layers=5, n_proj=2, width=16).eval()
    x, _ = _data(6, 5, 32)
    out = head(x)
    logit, z = _rine_by_hand(head, x)
    torch.testing.assert_close(out.logit.double(), logit, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.embedding.double(), z, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(head.importance().sum(dim=0), torch.ones(16))
    # the released 4-class layout: alpha (1, 24, 1024), 2 projections, dropout 0.5
    big = RINE()
    assert big.alpha.shape == (1, 24, 1024)
    assert sum(isinstance(m, torch.nn.Linear) for m in big.proj1) == 2
    assert {m.p for m in big.modules() if isinstance(m, torch.nn.Dropout)} == {0.5}
    head.train()  # dropout is part of training, as in the official model
    assert not torch.equal(head(x).logit, head(x).logit)
    with pytest.raises(ValueError, match=r"\(B, 5, 32\) class tokens"):
        head(x[:, 0])


def _supcon_by_hand(f: torch.Tensor, y: torch.Tensor, tau: float = 0.07) -> torch.Tensor:
    """Khosla et al. L_out per anchor i: -1/|P(i)| sum_p log(exp(f_i.f_p/tau) /
    sum_{a != i} exp(f_i.f_a/tau)); RINE's code adds 0 for an anchor without positives."""
    f = f.detach().double()
    total = 0.0
    for i in range(len(f)):
        others = [a for a in range(len(f)) if a != i]
        pos = [p for p in others if y[p] == y[i]]
        denom = sum(math.exp(float(f[i] @ f[a]) / tau) for a in others)
        if pos:
            total += -sum(math.log(math.exp(float(f[i] @ f[p]) / tau) / denom)
                          for p in pos) / len(pos)
    return torch.tensor(total / len(f), dtype=torch.float64)


def test_rine_loss_is_summed_bce_plus_weighted_supcon():
    torch.manual_seed(2)
    head = RINE(dim=8, n_layers=3, n_proj=1, width=6, factor=0.2)
    x, y = _data(8, 3, 8, seed=3)
    out = head(x)
    z = torch.nn.functional.normalize(out.embedding, dim=1)
    expected = _bce(out.logit, y).sum() + 0.2 * _supcon_by_hand(z, y)
    torch.testing.assert_close(head.loss(out, y).double(), expected, rtol=1e-5, atol=1e-5)


def test_rine_supcon_differs_from_ours_only_on_anchors_without_positives():
    z = torch.nn.functional.normalize(torch.randn(6, 4, generator=torch.Generator().manual_seed(4)),
                                      dim=1)
    y = torch.tensor([0, 0, 1, 1, 1, 2])  # the last anchor has no positive
    torch.testing.assert_close(rine_supcon(z, y).double(), _supcon_by_hand(z, y))
    # ours drops that anchor from the mean; RINE's counts it as 0
    torch.testing.assert_close(rine_supcon(z, y), supcon_loss(z, y) * 5 / 6)
    y_all = torch.tensor([0, 0, 1, 1, 1, 0])
    torch.testing.assert_close(rine_supcon(z, y_all), supcon_loss(z, y_all))


# --------------------------------------------------------------------------------- Cozzolino
def test_cozzolino_is_a_linear_svm_on_the_unit_feature():
    torch.manual_seed(5)
    head = Cozzolino(1024)
    assert abs(float(head.fc.weight.detach().std()) - 0.02) < 0.003  # openclipnet.py: 0.02
    x, y = _data(12, 1024, seed=6)
    out = head(x)
    unit = x.double() / x.double().norm(dim=1, keepdim=True)
    w, b = head.fc.weight.detach().double()[0], float(head.fc.bias.detach())
    torch.testing.assert_close(out.logit.double(), unit @ w + b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(head(unit.float()).logit, out.logit)  # the recipe is unit already
    s = 2 * y.double() - 1
    hinge = torch.tensor([max(0.0, 1 - float(si * fi)) for si, fi in zip(s, out.logit.detach(),
                                                                          strict=True)])
    torch.testing.assert_close(head.loss(out, y).double(), hinge.double().mean())


# ---------------------------------------------------------------------------------- training
@pytest.fixture
def one_thread():
    """Tiny matrices: one thread is fastest, and spares a loaded machine oversubscription."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("kind, shape, kwargs", [
    ("univfd", (64,), {}),
    ("rine", (4, 32), {"n_layers": 4, "n_proj": 2, "width": 32}),
    ("cozzolino", (64,), {}),
])
def test_each_head_learns_with_its_paper_settings(kind, shape, kwargs, one_thread):
    torch.manual_seed(7)
    settings = SETTINGS[kind]
    head = build_head(kind, shape[-1], **kwargs)
    opt = make_optimizer(settings, head.parameters())
    assert type(opt).__name__.lower() == settings.optimizer
    x, y = _data(settings.batch_size, *shape, seed=8)
    head.eval()
    with torch.no_grad():
        before = float(head.loss(head(x), y))
    head.train()
    for _ in range(150):  # full-batch steps at the paper's learning rate
        opt.zero_grad()
        loss = head.loss(head(x), y)
        loss.backward()
        opt.step()
    head.eval()
    with torch.no_grad():
        out = head(x)
        after = float(head.loss(out, y))
    assert after < 0.9 * before, (before, after)
    acc = float(((torch.sigmoid(out.logit) >= settings.threshold).long() == y).float().mean())
    assert acc > 0.8


def test_paper_settings_cite_every_value_and_cannot_change():
    assert set(SETTINGS) == set(BASELINE_HEADS)
    fields = {f.name for f in dataclasses.fields(PaperSettings)} - {"sources"}
    for kind, s in SETTINGS.items():
        assert set(s.sources) == fields, kind
        assert all(s.sources.values())
        with pytest.raises(dataclasses.FrozenInstanceError):
            s.lr = 1.0  # type: ignore[misc]
        with pytest.raises(TypeError):
            s.sources["lr"] = "x"  # type: ignore[index]
    u, r = SETTINGS["univfd"], SETTINGS["rine"]
    assert (u.optimizer, u.lr, u.betas, u.weight_decay, u.batch_size, u.epochs) == \
        ("adamw", 1e-4, (0.9, 0.999), 0.0, 256, 100)
    assert (r.optimizer, r.lr, r.batch_size, r.epochs) == ("adam", 1e-3, 128, 1)


class _OfficialEarlyStopping:
    """CNNDetection's earlystop.py, as UniversalFakeDetect's train.py uses it."""

    def __init__(self, patience: int, delta: float) -> None:
        self.patience, self.delta = patience, delta
        self.counter, self.best, self.stop = 0, None, False

    def __call__(self, score: float) -> None:
        if self.best is None:
            self.best = score
        elif score < self.best - self.delta:
            self.counter += 1
            if self.counter >= self.patience:
                self.stop = True
        else:
            self.best, self.counter = score, 0


def _official_run(accs: list[float], lr: float = 1e-4) -> list[str]:
    """train.py's epoch loop: lr / 10 on early stop (trainer.adjust_learning_rate), new
    EarlyStopping(patience 5, delta -0.002), stop once lr < 1e-6."""
    es, out = _OfficialEarlyStopping(5, -0.001), []
    for acc in accs:
        es(acc)
        if es.stop:
            lr /= 10.0
            if lr < 1e-6:
                out.append("stop")
                break
            out.append("drop_lr")
            es = _OfficialEarlyStopping(5, -0.002)
        else:
            out.append("continue")
    return out


def test_plateau_is_univfds_stopping_rule():
    rng = np.random.default_rng(9)
    for _ in range(50):
        accs = list(np.round(0.7 + np.cumsum(rng.normal(0.0005, 0.003, 120)), 4))
        rule, got = Plateau(1e-4), []
        for acc in accs:
            got.append(rule.step(float(acc)))
            if got[-1] == "stop":
                break
        assert got == _official_run([float(a) for a in accs])
    assert "stop" in got or len(got) == 120


# --------------------------------------------------------------------------- names and params
def test_baseline_heads_are_built_and_named():
    assert {k: method(k).recipe for k in BASELINE_HEADS} == {
        "univfd": "clip_crop", "rine": "clip_layers", "cozzolino": "cozzolino"}
    for kind, cls in BASELINE_HEADS.items():
        head = build_head(kind, 16, n_layers=3, hidden_dim=99, proj_dim=7, dropout=0.3)
        assert isinstance(head, cls) and head.kind == kind
    rine = build_head("rine", 16, n_layers=3, proj_dim=7, dropout=0.3)
    assert rine.alpha.shape == (1, 3, 1024)  # generic train.* hparams do not reshape it


def test_the_old_head_name_ufd_explains_the_rename():
    with pytest.raises(ParamsError, match="renamed 'composite_probe'.*'univfd'"):
        params_from_dict({"train": {"head": "ufd"}})
    with pytest.raises(ParamsError, match=r"compare.heads\[1\]: 'ufd' was renamed"):
        params_from_dict({"compare": {"heads": ["nsnet", "ufd"]}})
    for head in BASELINE_HEADS:  # trainable: the store computes their recipes
        assert params_from_dict({"train": {"head": head}}).train.head == head
    assert params_from_dict({"train": {"head": "composite_probe"}}).train.head == \
        "composite_probe"


@pytest.mark.parametrize("heads, message", [("ufd", "renamed 'composite_probe'"),
                                            ("nsnet,nope", "is not one of"),
                                            ("nsnet,nsnet", "repeat")])
def test_compare_refuses_renamed_unknown_and_repeated_heads(heads, message, tmp_path,
                                                             monkeypatch):
    monkeypatch.chdir(tmp_path)  # not the repository's params.yaml (the user's file)
    res = CliRunner().invoke(main, ["compare", "--heads", heads])
    assert res.exit_code != 0 and message in res.output, res.output
