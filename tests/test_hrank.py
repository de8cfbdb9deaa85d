"""HRank: ranks of known maps, figures, exact re-initialisation, real pruning and its round trip."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from conftest import NO_WEIGHTS
from sonokit.engine import load_best
from sonokit.flops import true_gflops
from sonokit.hrank import (
    apply_shape_spec,
    channel_ranks,
    collect_ranks,
    lowest_rank_filters,
    reinit_filters,
    resolve_layer,
    save_rank_figures,
    shape_spec,
    stage_convs,
)
from sonokit.io import torch_load_safe
from sonokit.models import create_model
from sonokit.pruning import prune

ROOT = Path(__file__).resolve().parents[1]


def known_rank_maps(batch=3, ranks=(0, 1, 2, 5, 8), size=8, seed=0) -> torch.Tensor:
    """(B, C, size, size): channel c of every image is a sum of ranks[c] random outer products."""
    g = torch.Generator().manual_seed(seed)
    out = torch.zeros(batch, len(ranks), size, size)
    for b in range(batch):
        for c, r in enumerate(ranks):
            for _ in range(r):
                out[b, c] += torch.outer(torch.randn(size, generator=g), torch.randn(size, generator=g))
    return out


def test_ranks_of_known_maps():
    maps = known_rank_maps()
    assert channel_ranks(maps).tolist() == [[0, 1, 2, 5, 8]] * 3


def test_collect_ranks_through_hooks():
    maps = known_rank_maps(batch=4)
    conv = nn.Conv2d(5, 5, 1, bias=False)
    with torch.no_grad():
        conv.weight.copy_(torch.eye(5).view(5, 5, 1, 1))
    model = nn.Sequential(conv)
    loader = [(maps[:2], torch.tensor([0, 1])), (maps[2:], torch.tensor([1, 0])), (maps[:1], torch.tensor([0]))]
    ranks, targets = collect_ranks(model, loader, ["0"], n_batches=2)
    assert ranks["0"].shape == (4, 5) and ranks["0"].tolist() == [[0, 1, 2, 5, 8]] * 4
    assert targets.tolist() == [0, 1, 1, 0]
    assert not conv._forward_hooks  # the hooks are gone after the context manager


def test_layer_resolution():
    m = create_model("nf_regnet_b1", 8, 1)
    assert resolve_layer(m) == "model.stages.2.6.conv3"
    assert resolve_layer(m, "stages.0.0.conv1") == "model.stages.0.0.conv1"
    with pytest.raises(ValueError, match="no module 'nope'"):
        resolve_layer(m, "stages.2.nope")
    with pytest.raises(ValueError, match="not a convolution"):
        resolve_layer(m, "stages.2")
    assert all(n.startswith("model.stages.2.") for n in stage_convs(m, [2]))


def test_tie_break_is_deterministic():
    r = np.array([3.0, 1.0, 1.0, 2.0, 1.0, 5.0, 1.0, 4.0])
    assert lowest_rank_filters(r, 0.25).tolist() == [1, 2]
    assert lowest_rank_filters(r, 0.5).tolist() == [1, 2, 4, 6]
    assert lowest_rank_filters(np.zeros(16), 0.125).tolist() == [0, 1]


def test_rank_figures(tmp_path):
    rng = np.random.default_rng(0)
    targets = np.repeat([0, 1, 2], 10)
    by_label = np.stack([np.full(12, 2.0 + 3 * t) for t in targets]) + rng.normal(0, 0.1, (30, 12))
    info = save_rank_figures(by_label, targets, ["a", "b", "c"], tmp_path / "x", "layer")
    assert info["label_explains"] > 0.9
    flat = rng.normal(5, 1, (30, 12))
    info = save_rank_figures(flat, targets, ["a", "b", "c"], tmp_path / "y", "layer")
    assert info["label_explains"] < 0.2
    for f in ("ranks.npy", "ranks_heatmap.png", "ranks_by_class.png"):
        assert (tmp_path / "x" / f).is_file()
    assert np.array_equal(np.load(tmp_path / "x" / "ranks.npy"), by_label)


def test_reinit_touches_exactly_the_chosen_filters():
    torch.manual_seed(0)
    m = create_model("nf_regnet_b1", 8, 1)
    name = resolve_layer(m)
    conv = m.get_submodule(name)
    with torch.no_grad():
        conv.gain.uniform_(0.5, 1.5)  # as if trained (zero_init_last starts it at 0)
    before = {k: v.clone() for k, v in m.state_dict().items()}
    chosen = [3, 17, 40]
    reinit_filters(conv, chosen)
    after = m.state_dict()
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    assert sorted(changed) == sorted(f"{name}.{p}" for p in ("weight", "gain"))  # bias: zero before and after
    others = [i for i in range(conv.out_channels) if i not in chosen]
    for p in ("weight", "gain", "bias"):
        assert torch.equal(before[f"{name}.{p}"][others], after[f"{name}.{p}"][others])
    assert not torch.equal(before[f"{name}.weight"][chosen], after[f"{name}.weight"][chosen])
    assert torch.allclose(after[f"{name}.gain"][chosen], before[f"{name}.gain"][others].median())


def test_reinit_is_seeded_whatever_ran_before():
    """Running a fold alone or after another fold gives the same fresh weights; the global RNG is left alone."""
    def fresh(burn: int):
        torch.manual_seed(123)
        m = create_model("test_nfnet", 4, 1)
        conv = m.get_submodule(resolve_layer(m, "stages.2.-1.conv3"))
        torch.rand(burn)  # whatever else used the global generator first
        state = torch.get_rng_state()
        reinit_filters(conv, [0, 2], seed=7)
        assert torch.equal(torch.get_rng_state(), state)
        return conv.weight[[0, 2]].clone()

    a, b = fresh(0), fresh(1000)
    assert torch.equal(a, b)
    torch.manual_seed(123)
    m = create_model("test_nfnet", 4, 1)
    conv = m.get_submodule(resolve_layer(m, "stages.2.-1.conv3"))
    reinit_filters(conv, [0, 2], seed=8)
    assert not torch.equal(conv.weight[[0, 2]], a)


def test_ranks_that_cannot_separate_the_filters_are_reported(tmp_path):
    """4x4 maps: every filter full-rank on every image. Said in the result and on the heatmap, with the tie rule."""
    from sonokit.hrank import TIE_RULE, separability

    ranks = np.full((10, 40), 4.0)
    sep = separability(ranks, 0.125, (4, 4))
    assert not sep["separable"] and sep["distinct_mean_ranks"] == 1 and sep["max_possible_rank"] == 4
    assert "the ranks cannot separate the filters: every filter has rank 4 on every image (the 4x4 feature maps are too small" in sep["warning"]
    assert "filters [0, 1, 2, 3, 4] by the tie rule" in sep["warning"] and sep["tie_rule"] == TIE_RULE
    info = save_rank_figures(ranks, np.repeat([0, 1], 5), ["a", "b"], tmp_path / "flat", "layer", 0.125, (4, 4))
    assert info["warning"] == sep["warning"]
    # the warning is drawn on the heatmap: a yellow box the plain heatmap does not have
    import matplotlib.image as mpimg

    img = mpimg.imread(tmp_path / "flat" / "ranks_heatmap.png")[..., :3]
    yellow = (img[..., 0] > 0.95) & (img[..., 1] > 0.8) & (img[..., 2] < 0.65)
    assert yellow.mean() > 0.01
    ok = save_rank_figures(np.random.default_rng(0).integers(1, 8, (10, 40)).astype(float), np.repeat([0, 1], 5), ["a", "b"],
                           tmp_path / "ok", "layer", 0.125, (8, 8))
    img = mpimg.imread(tmp_path / "ok" / "ranks_heatmap.png")[..., :3]
    assert ok["separable"] and ((img[..., 0] > 0.95) & (img[..., 1] > 0.8) & (img[..., 2] < 0.65)).mean() == 0
    # ranks that separate most filters but tie at the cut: how many were picked by the tie rule
    partial = np.tile(np.r_[np.full(10, 2.0), np.full(30, 3.0)], (4, 1))
    sep = separability(partial, 0.125, (8, 8))  # 5 chosen among 10 tied at rank 2
    assert sep["separable"] and sep["chosen_by_tie_rule"] == 5 and "picked by the tie rule" in sep["warning"]


def test_reinit_of_a_zero_gain_layer_is_not_dead():
    m = create_model("nf_regnet_b1", 8, 1)
    conv = m.get_submodule(resolve_layer(m))
    assert conv.gain.abs().sum() == 0  # zero_init_last
    reinit_filters(conv, [0, 1])
    assert (conv.gain[:2] == 1).all() and (conv.gain[2:] == 0).all()


def test_pruning_lowers_true_flops_and_round_trips(tmp_path):
    torch.manual_seed(0)
    m = create_model("nf_regnet_b1", 8, 1).eval()
    names = stage_convs(m, [0, 1, 2, 3])
    x = torch.randn(6, 3, 48, 48)
    ranks, _ = collect_ranks(m, [(x, torch.zeros(6, dtype=torch.long))], names, 1)
    flops_before, params_before = true_gflops(m, 256, 1), sum(p.numel() for p in m.parameters())
    prune(m, {k: v.mean(0) for k, v in ranks.items()}, 0.125, torch.randn(1, 3, 48, 48))
    flops_after, params_after = true_gflops(m, 256, 1), sum(p.numel() for p in m.parameters())
    assert flops_after < 0.85 * flops_before and params_after < params_before
    m.train()
    y = m(torch.randn(3, 3, 40, 40))
    assert y.shape == (3, 8)
    y.sum().backward()
    assert all(p.grad is not None for p in m.parameters())
    # grouped convs keep whole groups of equal width
    for mod in m.modules():
        if isinstance(mod, nn.Conv2d) and mod.groups > 1:
            assert mod.in_channels % mod.groups == 0 and mod.out_channels % mod.groups == 0
    # save as fit() does, reload with weights_only=True into a freshly built model
    m.eval()
    meta = {"model": "nf_regnet_b1", "num_classes": 8, "in_chans": 1, "image_size": 48, "shape_spec": shape_spec(m)}
    torch.save({"model": m.state_dict(), "meta": meta}, tmp_path / "best.pt")
    ck = torch_load_safe(tmp_path / "best.pt")
    rebuilt = apply_shape_spec(create_model("nf_regnet_b1", 8, 1), ck["meta"]["shape_spec"])
    rebuilt.load_state_dict(ck["model"])
    rebuilt.eval()
    probe = torch.randn(2, 1, 48, 48)
    torch.testing.assert_close(rebuilt(probe), m(probe))
    from sonokit.stages.common import load_checkpoint_model

    again, _ = load_checkpoint_model(tmp_path / "best.pt")
    torch.testing.assert_close(again(probe), m(probe))
    assert true_gflops(again, 256, 1) == pytest.approx(flops_after)


@pytest.mark.slow
def test_hrank_stage_prune_then_infer(demo_data, tmp_path):
    args = ["--data", str(demo_data), "--gpus", "0", "--name", "h", "--set", f"run.out_dir={tmp_path}", "--set", "data.image_size=32",
            "--set", "data.resize_size=40", "--set", "data.folds=2", "--set", "data.num_workers=0",
            "--set", "teacher.model.name=efficientnet-b0", "--set", "teacher.train.epochs=1", "--set", "teacher.train.batch_size=8",
            "--set", "student.train.epochs=1", "--set", "student.train.batch_size=8", "--set", "hrank.train.epochs=1",
            "--set", "hrank.train.batch_size=8", "--set", "hrank.rank_batches=2", "--set", "infer.stage=hrank", "--set", "infer.tta=orig", *NO_WEIGHTS]
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_local.py"), "--stages", "teacher,student,hrank,infer",
                        "--hrank-mode", "prune", "--hrank-ratio", "0.25", *args], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "true GFLOPs" in r.stdout and "latency" in r.stdout
    run = tmp_path / "h"
    rep = json.loads((run / "hrank" / "report.json").read_text())["folds"]
    for f in rep:
        assert f["cost_after"]["true_gflops"] < f["cost_before"]["true_gflops"]
        assert f["cost_after"]["params"] < f["cost_before"]["params"]
        assert {"val_acc", "val_loss"} <= set(f["before"]) and {"val_acc", "val_loss"} <= set(f["after"])
    for k in (0, 1):
        assert (run / "hrank" / f"fold{k}" / "ranks_heatmap.png").is_file()
        assert load_best(run / "hrank" / f"fold{k}" / "best.pt")["meta"]["pruned"] is True
    members = json.loads((run / "infer" / "members.json").read_text())["members"]
    assert [m["stage"] for m in members] == ["hrank", "hrank"]
    # the source's re-initialisation mode, on the same students
    r = subprocess.run([sys.executable, str(ROOT / "scripts" / "train_local.py"), "--stages", "hrank", "--hrank-mode", "reinit",
                        *args], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    rep = json.loads((run / "hrank" / "report.json").read_text())["folds"]
    assert all(len(f["reinitialised"]["filters"]) == 20 for f in rep)  # 1/8 of conv3's 160 filters
