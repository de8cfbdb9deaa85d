"""The training loop, checkpoints, resume, clipping, AMP on CPU, and the model factory."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from timm.task import ClassificationTask

from sonokit.config import TrainConfig
from sonokit.data import create_loader
from sonokit.engine import NonFiniteLossError, fit, load_best
from sonokit.io import torch_load_safe
from sonokit.models import GrayscaleModel, create_model

ROOT = Path(__file__).resolve().parents[1]


class ToyImages(torch.utils.data.Dataset):
    """uint8 3x8x8 images; class 1 is brighter. ``flip`` swaps the labels (a validation set whose
    loss rises as the model learns the training set)."""

    def __init__(self, n: int, seed: int, flip: bool = False):
        g = torch.Generator().manual_seed(seed)
        self.y = torch.arange(n) % 2
        base = 70 + 100 * self.y.view(-1, 1, 1, 1).float()
        self.x = (base + torch.randn(n, 3, 8, 8, generator=g) * 25).clamp(0, 255).to(torch.uint8)
        if flip:
            self.y = 1 - self.y

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


def tiny_net() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))


def loaders(flip_val=False, n=64, bs=16):
    kw = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_workers=0, seed=0)
    return create_loader(ToyImages(n, 0), bs, True, **kw), create_loader(ToyImages(32, 1, flip=flip_val), bs, False, **kw)


def task_for(model):
    return ClassificationTask(model, criterion=nn.CrossEntropyLoss(), verbose=False)


def test_loss_falls_and_outputs_written(tmp_path):
    torch.manual_seed(0)
    tr, va = loaders()
    cfg = TrainConfig(epochs=6, lr=0.05, patience=10)
    res = fit(task_for(tiny_net()), tr, va, cfg, tmp_path, seed=0, meta={"model": "tiny"})
    losses = [h["train_loss"] for h in res.history]
    assert losses[-1] < 0.5 * losses[0]
    assert res.best_val_acc > 0.9
    lines = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(lines) == 6 and set(lines[0]) >= {"train_loss", "val_loss", "val_acc", "lr", "seconds", "images_per_s"}
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert res.val_logits.shape == (32, 2)


def test_early_stopping_and_best_by_loss(tmp_path):
    torch.manual_seed(0)
    tr, va = loaders(flip_val=True)
    cfg = TrainConfig(epochs=30, lr=0.05, patience=2, plateau_patience=10)
    res = fit(task_for(tiny_net()), tr, va, cfg, tmp_path, seed=0, meta={"model": "tiny"})
    assert res.stopped_early and res.epochs_run < 30
    val_losses = [h["val_loss"] for h in res.history]
    assert res.epochs_run == int(np.argmin(val_losses)) + 1 + cfg.patience
    ck = load_best(tmp_path / "best.pt")
    assert ck["meta"]["epoch"] == int(np.argmin(val_losses)) + 1 == res.best_epoch
    assert ck["meta"]["model"] == "tiny"
    # the kept weights really are the best-by-loss model
    model = tiny_net()
    model.load_state_dict(ck["model"])
    from sonokit.engine import evaluate

    loss, _, _ = evaluate(model, va, torch.device("cpu"))
    assert loss == pytest.approx(min(val_losses), rel=1e-5)


class Scripted(nn.Module):
    """Validation logits scripted per epoch: epoch 1 confident but 2 of 32 wrong (acc 0.9375, low loss),
    epoch 2 all right but barely (acc 1.0, high loss)."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(1))
        self.epoch = 0

    def forward(self, x):
        n = x.shape[0]
        y = (x.float().mean((1, 2, 3)) > 0).long()  # the loaders normalise class 1 above 0, class 0 below
        logits = torch.zeros(n, 2)
        if self.epoch == 0:
            logits[torch.arange(n), y] = 8.0
            logits[:1, :] = 0.0
            logits[:1, 1 - y[:1]] = 0.5  # the first image of each batch: slightly wrong
        else:
            logits[torch.arange(n), y] = 0.1  # all right, barely
        return logits + self.w * 0


@pytest.mark.parametrize("monitor,best", [("val_loss", 1), ("val_acc", 2)])
def test_best_checkpoint_follows_the_monitor(tmp_path, monitor, best):
    m = Scripted()
    tr, va = loaders()

    def bump(ev):
        if ev["event"] == "epoch":
            m.epoch += 1

    cfg = TrainConfig(epochs=2, lr=0.0, patience=5, monitor=monitor)
    res = fit(ClassificationTask(m, criterion=nn.CrossEntropyLoss(), verbose=False), tr, va, cfg, tmp_path, callbacks=[bump])
    h = res.history
    # the premise: the more accurate epoch is the one with the higher loss
    assert h[0]["val_acc"] == pytest.approx(30 / 32) and h[1]["val_acc"] == 1.0
    assert h[0]["val_loss"] < h[1]["val_loss"]
    assert res.best_epoch == best and load_best(tmp_path / "best.pt")["meta"]["epoch"] == best
    assert load_best(tmp_path / "best.pt")["meta"]["monitor"] == monitor


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    """2 batches of 16 with accum_steps=2 take the same optimizer step as one batch of 32 (no BatchNorm here)."""
    def run(bs, accum, out):
        torch.manual_seed(0)
        model = tiny_net()
        kw = dict(mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25), num_workers=0, seed=0)
        tr = create_loader(ToyImages(64, 0), bs, True, **kw)
        va = create_loader(ToyImages(32, 1), 16, False, **kw)
        fit(task_for(model), tr, va, TrainConfig(epochs=2, lr=0.05, accum_steps=accum), out, seed=0)
        return model

    a, b = run(32, 1, tmp_path / "a"), run(16, 2, tmp_path / "b")
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6, msg=k)
    c = run(16, 1, tmp_path / "c")
    assert not torch.allclose(a[0].weight, c[0].weight)  # and it is not what batches of 16 do


def test_weight_decay_spares_biases_norms_and_gains():
    import timm

    from sonokit.engine import create_optimizer

    model = timm.create_model("test_nfnet", num_classes=2)
    opt = create_optimizer(model, TrainConfig(weight_decay=0.05))
    wd = {id(p): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    names = dict(model.named_parameters())
    assert wd[id(names["stem.conv1.weight"])] == 0.05 and wd[id(names["head.fc.weight"])] == 0.05
    assert wd[id(names["stem.conv1.bias"])] == 0 and wd[id(names["stem.conv1.gain"])] == 0
    assert names["stem.conv1.gain"].ndim == 4  # the 1-d rule alone would have decayed it
    assert len(wd) == sum(1 for p in model.parameters() if p.requires_grad)


def test_warmup_is_linear_per_step_then_plateau(tmp_path):
    lrs = []
    tr, va = loaders()  # 4 batches per epoch

    class Spy(ClassificationTask):
        def forward(self, x, y):
            lrs.append(opt_ref[0].param_groups[0]["lr"])
            return super().forward(x, y)

    from sonokit import engine

    opt_ref = []
    real = engine.create_optimizer
    engine_create = lambda model, cfg: opt_ref.append(real(model, cfg)) or opt_ref[0]  # noqa: E731
    try:
        engine.create_optimizer = engine_create
        fit(Spy(tiny_net(), criterion=nn.CrossEntropyLoss(), verbose=False), tr, va,
            TrainConfig(epochs=3, lr=0.01, warmup_epochs=1, warmup_start=0.2), tmp_path)
    finally:
        engine.create_optimizer = real
    # 4 optimizer steps of warmup: 0.2, 0.4, 0.6, 0.8 x lr, then lr
    np.testing.assert_allclose(lrs[:6], [0.002, 0.004, 0.006, 0.008, 0.01, 0.01], rtol=1e-6)


def test_model_ema_is_evaluated_and_saved(tmp_path):
    torch.manual_seed(0)
    tr, va = loaders()
    model = tiny_net()
    res = fit(task_for(model), tr, va, TrainConfig(epochs=3, lr=0.05, ema=True, ema_decay=0.5), tmp_path)
    h = res.history[-1]
    assert {"val_loss", "val_acc", "val_loss_raw", "val_acc_raw"} <= set(h)
    best = load_best(tmp_path / "best.pt")
    assert best["meta"]["ema"] is True
    # the saved weights are the EMA's: not the trained model's, and they score what the record says
    assert not torch.equal(best["model"]["0.weight"], model.state_dict()["0.weight"])
    from sonokit.engine import evaluate

    ema_model = tiny_net()
    ema_model.load_state_dict(best["model"])
    loss, _, _ = evaluate(ema_model, va, torch.device("cpu"))
    assert loss == pytest.approx(best["meta"]["val_loss"], rel=1e-5)


def test_non_finite_loss_stops_clearly(tmp_path):
    class NanTask(ClassificationTask):
        def forward(self, x, y):
            out = super().forward(x, y)
            out["loss"] = out["loss"] * float("nan")
            return out

    tr, va = loaders()
    with pytest.raises(NonFiniteLossError, match="non-finite loss .* epoch 1, batch 1"):
        fit(NanTask(tiny_net(), criterion=nn.CrossEntropyLoss(), verbose=False), tr, va, TrainConfig(epochs=2), tmp_path)


def test_agc_bounds_gradients_and_skips_head(tmp_path):
    import timm
    from timm.utils.agc import unitwise_norm

    torch.manual_seed(0)
    model = timm.create_model("test_nfnet", num_classes=2)
    factor = 0.01
    seen = []

    def check(ev):
        if ev["event"] != "batch":
            return
        params = [p for p in model.parameters() if p.grad is not None]
        body, head = params[:-2], params[-2:]
        for p in body:
            # checked after the optimiser step, so the weights moved a little: 1e-3 tolerance
            max_norm = unitwise_norm(p.detach()).clamp(min=1e-3) * factor
            ratio = unitwise_norm(p.grad.detach()) / max_norm
            assert ratio.max() <= 1 + 1e-3
        seen.append(max((unitwise_norm(p.grad) / (unitwise_norm(p.detach()).clamp(min=1e-3) * factor)).max().item() for p in head))

    # a huge lr-independent signal: large loss scale through a steep criterion
    class Loud(ClassificationTask):
        def forward(self, x, y):
            out = super().forward(x, y)
            out["loss"] = out["loss"] * 1e4
            return out

    tr, va = loaders()
    cfg = TrainConfig(epochs=1, lr=1e-4, clip_mode="agc", clip_value=factor, max_batches=2)
    fit(Loud(model, criterion=nn.CrossEntropyLoss(), verbose=False), tr, va, cfg, tmp_path, callbacks=[check])
    assert seen and max(seen) > 1  # the head is excluded, as in timm's train.py: it was not clipped

    # and without AGC the body's gradients would have broken the bound
    model2 = timm.create_model("test_nfnet", num_classes=2)
    x, y = next(iter(tr))
    (nn.functional.cross_entropy(model2(x), y) * 1e4).backward()
    ratios = [
        (unitwise_norm(p.grad) / (unitwise_norm(p.detach()).clamp(min=1e-3) * factor)).max().item()
        for p in list(model2.parameters())[:-2] if p.grad is not None
    ]
    assert max(ratios) > 1


def test_bf16_on_cpu_runs(tmp_path):
    torch.manual_seed(0)
    tr, va = loaders()
    res = fit(task_for(tiny_net()), tr, va, TrainConfig(epochs=2, amp="bf16", lr=0.05), tmp_path)
    assert all(np.isfinite(h["train_loss"]) and np.isfinite(h["val_loss"]) for h in res.history)


def test_channels_last_runs_and_matches(tmp_path):
    torch.manual_seed(0)
    tr, va = loaders()
    a = fit(task_for(tiny_net()), tr, va, TrainConfig(epochs=2, lr=0.05), tmp_path / "a")
    torch.manual_seed(0)
    b = fit(task_for(tiny_net()), tr, va, TrainConfig(epochs=2, lr=0.05, channels_last=True), tmp_path / "b")
    for x, y in zip(a.history, b.history):
        assert x["val_loss"] == pytest.approx(y["val_loss"], rel=1e-4)


def test_fp16_refused_on_cpu(tmp_path):
    tr, va = loaders()
    with pytest.raises(ValueError, match="fp16 AMP needs CUDA"):
        fit(task_for(tiny_net()), tr, va, TrainConfig(epochs=1, amp="fp16"), tmp_path)


def test_checkpoint_loading_refuses_pickled_objects(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned",))

    path = tmp_path / "evil.pt"
    torch.save({"model": Evil()}, path)
    with pytest.raises(Exception, match="Weights only load failed|Unsupported global"):
        torch_load_safe(path)
    torch.save({"model": {"w": torch.ones(2)}}, tmp_path / "ok.pt")
    assert torch.equal(torch_load_safe(tmp_path / "ok.pt")["model"]["w"], torch.ones(2))


def test_weights_3_to_1_channel_stem_and_new_head(tmp_path, caplog):
    torch.manual_seed(0)
    src = create_model("test_efficientnet", num_classes=5, in_chans=3)
    torch.save({"model": src.state_dict()}, tmp_path / "w.pt")
    with caplog.at_level("WARNING", logger="sonokit"):
        m = create_model("test_efficientnet", num_classes=8, in_chans=1, weights=tmp_path / "w.pt")
    assert isinstance(m, GrayscaleModel)
    stem = m.model.conv_stem.weight
    torch.testing.assert_close(stem, src.conv_stem.weight.sum(dim=1, keepdim=True))
    assert m.model.get_classifier().out_features == 8
    torch.testing.assert_close(m.model.blocks[0][0].conv.weight, src.blocks[0][0].conv.weight)
    assert "classifier re-initialised (weights have 5 classes, model has 8)" in caplog.text
    assert "3-channel weights adapted to 1 channel(s)" in caplog.text
    assert m(torch.randn(2, 3, 32, 32)).shape == (2, 8)
    # efficientnet_pytorch too, built without any download
    e_src = create_model("efficientnet-b0", num_classes=5, in_chans=3)
    torch.save(e_src.state_dict(), tmp_path / "e.pt")
    e = create_model("efficientnet-b0", num_classes=8, in_chans=1, weights=tmp_path / "e.pt")
    torch.testing.assert_close(e.model._conv_stem.weight, e_src._conv_stem.weight.sum(dim=1, keepdim=True))
    # weights that do not fit are a clear error
    torch.save(create_model("test_resnet", num_classes=5).state_dict(), tmp_path / "r.pt")
    with pytest.raises(ValueError, match="do not fit the model"):
        create_model("test_efficientnet", num_classes=5, weights=tmp_path / "r.pt")


def test_unknown_model_is_clear():
    with pytest.raises(ValueError, match="unknown model 'no_such_net'"):
        create_model("no_such_net", 2)


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import torch, torch.nn as nn
    from timm.task import ClassificationTask
    from sonokit.config import load_config
    from sonokit.stages.common import make_context
    from sonokit.engine import fit, seed_everything
    from sonokit.models import create_model

    out, data, kill_at, resume = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    cfg = load_config(overrides=[f"data.root={data}", f"run.out_dir={out}", "run.name=r", "data.folds=2",
                                 "data.image_size=32", "data.resize_size=40", "data.num_workers=0", "run.device=cpu"])
    ctx = make_context(cfg, resume=resume, progress=False)
    seed_everything(0)
    model = create_model("test_efficientnet", ctx.prep.num_classes, 1, drop_rate=0.2)
    task = ClassificationTask(model, criterion=nn.CrossEntropyLoss(), verbose=False)
    tcfg = cfg.teacher.train
    tcfg.epochs, tcfg.batch_size, tcfg.lr, tcfg.patience = 5, 4, 3e-3, 10
    tr, va = ctx.loaders(0, tcfg)
    def killer(ev):
        if kill_at != "none" and ev["event"] == "batch" and f"{ev['epoch']}:{ev['step']}" == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)
    fit(task, tr, va, tcfg, ctx.run_dir / "fold0", ctx.device, seed=1, resume=resume, callbacks=[killer], meta={})
    """
)


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_best_checkpoint(tmp_path):
    from conftest import make_tiny_data

    data = make_tiny_data(tmp_path / "data", per_class=12, size=(48, 40))
    script = tmp_path / "run.py"
    script.write_text(KILL_SCRIPT)
    env = {**os.environ, "PYTHONHASHSEED": "0"}

    def run(out, kill_at, resume):
        return subprocess.run([sys.executable, str(script), str(out), str(data), kill_at, "1" if resume else "0"],
                              capture_output=True, text=True, env=env, timeout=600)

    r = run(tmp_path / "a", "none", False)
    assert r.returncode == 0, r.stderr[-2000:]
    killed = run(tmp_path / "b", "2:1", False)
    assert killed.returncode == -9  # SIGKILL, mid-epoch 3
    ck = torch_load_safe(tmp_path / "b" / "r" / "fold0" / "last.pt")
    assert ck["state"]["epoch"] == 1  # epochs 1 and 2 were checkpointed, epoch 3 was lost
    r = run(tmp_path / "b", "none", True)
    assert r.returncode == 0, r.stderr[-2000:]
    a = load_best(tmp_path / "a" / "r" / "fold0" / "best.pt")
    b = load_best(tmp_path / "b" / "r" / "fold0" / "best.pt")
    assert a["meta"] == b["meta"]
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    ha = (tmp_path / "a" / "r" / "fold0" / "metrics.jsonl").read_text().splitlines()
    hb = (tmp_path / "b" / "r" / "fold0" / "metrics.jsonl").read_text().splitlines()
    strip = lambda lines: [{k: v for k, v in json.loads(x).items() if k not in ("seconds", "images_per_s")} for x in lines]  # noqa: E731
    assert strip(ha) == strip(hb)
