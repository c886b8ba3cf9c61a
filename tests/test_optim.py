import math
import time
from copy import deepcopy

import pytest
import torch
from torch import nn

from vit_cifar.errors import ConfigError
from vit_cifar.models import VisionTransformer
from vit_cifar.models.resnet import ResNet18
from vit_cifar.training.module import build_optimization, param_groups, warmup_cosine_at, warmup_cosine_lr


def _names(model: nn.Module, params: list) -> set[str]:
    ids = {id(p) for p in params}
    return {n for n, p in model.named_parameters() if id(p) in ids}


def test_weight_decay_goes_to_layer_weights_only():
    model = VisionTransformer(embed_dim=32, depth=2, num_heads=2)
    decay, no_decay = param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    decayed, plain = _names(model, decay["params"]), _names(model, no_decay["params"])
    assert decayed | plain == {n for n, _ in model.named_parameters()} and not decayed & plain
    assert {
        "cls_token",
        "pos_embed",
        "patch_embed.norm.weight",
        "norm.weight",
        "norm.bias",
        "blocks.0.norm1.weight",
        "blocks.1.norm2.bias",
        "head.bias",
        "blocks.0.mlp.fc1.bias",
    } <= plain
    assert decayed == {"patch_embed.proj.weight", "head.weight"} | {
        f"blocks.{i}.{layer}.weight"
        for i in range(2)
        for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    }


def test_roles_not_names_decide():
    """A norm layer called anything, and a bias anywhere, still skip decay; a weight called 'norm_proj' decays."""

    class Odd(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm_proj = nn.Linear(4, 4, bias=False)
            self.scale = nn.BatchNorm1d(4)

    model = Odd()
    decay, no_decay = param_groups(model, 0.1)
    assert _names(model, decay["params"]) == {"norm_proj.weight"}
    assert _names(model, no_decay["params"]) == {"scale.weight", "scale.bias"}


def test_schedule_warms_up_to_the_peak_then_decays_to_min_lr():
    total, warmup, peak, floor = 39_000, 3_900, 1e-3, 1e-5
    lr = [warmup_cosine_lr(s, total, warmup, peak, floor) for s in range(total)]
    assert lr[0] == pytest.approx(peak / warmup)
    assert lr[warmup - 1] == pytest.approx(peak) and lr[warmup] == pytest.approx(peak)
    assert lr[-1] == pytest.approx(floor, rel=1e-9)
    assert all(a < b for a, b in zip(lr[: warmup - 1], lr[1:warmup], strict=True))  # rising
    assert all(a >= b for a, b in zip(lr[warmup:-1], lr[warmup + 1 :], strict=True))  # falling
    mid = warmup + (total - 1 - warmup) // 2  # half-way through the cosine: half-way between peak and floor
    assert lr[mid] == pytest.approx(floor + (peak - floor) / 2, rel=1e-3)
    assert min(lr[warmup:]) == pytest.approx(floor)  # the cosine never dips below the floor


def test_schedule_edge_cases():
    assert warmup_cosine_lr(0, 1, 0, 1e-3, 1e-5) == 1e-3  # a one-step run (fast_dev_run)
    assert warmup_cosine_lr(4, 5, 10, 1.0, 0.0) == 0.0  # warmup clamped to the run: still ends at the floor
    assert warmup_cosine_lr(0, 10, 0, 1.0, 0.0) == 1.0  # no warmup: starts at the peak

    def warmup_steps(total_steps: int, max_epochs: int, warmup_epochs: float) -> str:  # from the length line
        optim = {"_target_": "torch.optim.SGD", "lr": 0.1}
        schedule = {"warmup_epochs": warmup_epochs}
        return build_optimization(
            nn.Linear(2, 2), optim, schedule, torch.device("cpu"), total_steps, max_epochs
        )[2]

    assert warmup_steps(total_steps=39_000, max_epochs=100, warmup_epochs=10) == "39000 steps, 3900 of warmup"
    assert warmup_steps(total_steps=4, max_epochs=1, warmup_epochs=10) == "4 steps, 3 of warmup"  # clamped


def test_module_schedule_is_sized_from_the_trainers_real_steps(tmp_path):
    """The LightningModule's scheduler, stepped per optimiser step, follows the pure function exactly."""
    import lightning as L

    from vit_cifar.training.module import ClassifierModule

    module = ClassifierModule(
        net={"_target_": "vit_cifar.models.VisionTransformer", "embed_dim": 16, "depth": 1, "num_heads": 2},
        optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3, "betas": [0.9, 0.999], "weight_decay": 0.05},
        scheduler={"warmup_epochs": 1, "min_lr": 1e-5},
    )
    data = torch.utils.data.TensorDataset(torch.randn(40, 3, 32, 32), torch.randint(0, 10, (40,)))
    seen = []

    class Record(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            seen.append(trainer.optimizers[0].param_groups[0]["lr"])

    trainer = L.Trainer(
        max_epochs=4,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Record()],
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))  # 5 steps an epoch, 20 in all
    assert len(seen) == 20
    expected = [warmup_cosine_lr(s, 20, 5, 1e-3, 1e-5) for s in range(20)]
    assert seen == pytest.approx(expected)
    assert seen[4] == pytest.approx(1e-3) and seen[-1] == pytest.approx(1e-5)
    groups = trainer.optimizers[0].param_groups
    assert [g["weight_decay"] for g in groups] == [0.05, 0.0]
    assert math.isclose(groups[0]["betas"][1], 0.999)


def test_clock_schedule_warms_up_then_decays_to_min_lr_at_the_budget():
    peak, low = 2e-3, 1e-5
    assert warmup_cosine_at(0.0, 0.1, peak, low) == pytest.approx(low)  # warmup starts from min_lr
    assert warmup_cosine_at(0.05, 0.1, peak, low) == pytest.approx(low + (peak - low) / 2)
    assert warmup_cosine_at(0.1, 0.1, peak, low) == pytest.approx(peak)
    assert warmup_cosine_at(0.55, 0.1, peak, low) == pytest.approx(
        (peak + low) / 2
    )  # half-way down the cosine
    assert warmup_cosine_at(1.0, 0.1, peak, low) == pytest.approx(low)
    assert warmup_cosine_at(1.7, 0.1, peak, low) == pytest.approx(low)  # past the budget: stays at the floor
    assert warmup_cosine_at(0.0, 0.0, peak, low) == pytest.approx(peak)  # no warmup
    rising = [warmup_cosine_at(p / 100, 0.2, peak, low) for p in range(21)]
    falling = [warmup_cosine_at(p / 100, 0.2, peak, low) for p in range(20, 101)]
    assert rising == sorted(rising) and falling == sorted(falling, reverse=True)


def test_module_clock_schedule_follows_training_time_and_stops_on_max_time(monkeypatch):
    """scheduler.by=time: each step's learning rate is the schedule at (training time spent / max_time), and
    Lightning's Timer ends the run at max_time. A fake clock advances 7 s per step, so nothing sleeps."""
    import lightning as L
    from lightning.pytorch.callbacks import Timer

    from vit_cifar.training.module import ClassifierModule

    clock = {"now": 5000.0}
    monkeypatch.setattr(time, "monotonic", lambda: clock["now"])
    module = ClassifierModule(
        net={"_target_": "vit_cifar.models.VisionTransformer", "embed_dim": 16, "depth": 1, "num_heads": 2},
        optimizer={"_target_": "torch.optim.AdamW", "lr": 1e-3, "weight_decay": 0.05},
        scheduler={"by": "time", "warmup_fraction": 0.2, "min_lr": 1e-5},
    )
    data = torch.utils.data.TensorDataset(torch.randn(40, 3, 32, 32), torch.randint(0, 10, (40,)))
    seen = []

    class Clock(L.Callback):
        def on_train_batch_start(self, trainer, *args):
            timer = next(c for c in trainer.callbacks if isinstance(c, Timer))
            seen.append((timer.time_elapsed(), trainer.optimizers[0].param_groups[0]["lr"]))

        def on_train_batch_end(self, trainer, *args):
            clock["now"] += 7.0

    trainer = L.Trainer(
        max_time={"seconds": 100},
        max_epochs=1000,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[Clock()],
    )
    trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))
    elapsed = [e for e, _ in seen]
    assert elapsed == pytest.approx([7.0 * k for k in range(15)])  # 15 steps: the 15th ends at 105 s >= 100 s
    assert trainer.current_epoch == 3  # 5 steps an epoch: the clock, not max_epochs, ended the run
    # Each step's rate was set right after the previous step's update, by the clock at that moment (before the
    # previous step's end-of-batch callbacks advanced it): 0 s for the first two steps, then 7 s behind.
    lrs = [lr for _, lr in seen]
    read_at = [0.0] + [e - 7.0 for e in elapsed[1:]]
    assert lrs == pytest.approx([warmup_cosine_at(t / 100, 0.2, 1e-3, 1e-5) for t in read_at])
    assert max(lrs) == pytest.approx(warmup_cosine_at(21 / 100, 0.2, 1e-3, 1e-5))
    final = trainer.optimizers[0].param_groups[0]["lr"]  # set after the last update, at 98 s of 100
    assert final == pytest.approx(warmup_cosine_at(0.98, 0.2, 1e-3, 1e-5)) and final < 1.2e-5  # annealed


def test_clock_schedule_without_a_time_budget_is_refused(tmp_path):
    from conftest import QUIET, SYNTHETIC_SMALL, TINY_MODEL, compose_config
    from vit_cifar.config.schema import validate_config
    from vit_cifar.errors import ConfigError

    cfg = compose_config(["scheduler.by=time", *TINY_MODEL, *SYNTHETIC_SMALL, *QUIET], tmp_path)
    with pytest.raises(ConfigError, match=r"scheduler.by=time needs a time budget: set trainer.max_time"):
        validate_config(cfg)
    cfg = compose_config(["scheduler.by=clock"], tmp_path)
    with pytest.raises(ConfigError, match=r"scheduler.by='clock' is unknown: use one of steps, time"):
        validate_config(cfg)


def test_linear_decay_falls_in_a_straight_line_to_the_floor():
    peak, low = 2e-3, 0.0
    assert warmup_cosine_at(0.1, 0.1, peak, low, "linear") == pytest.approx(peak)
    assert warmup_cosine_at(0.55, 0.1, peak, low, "linear") == pytest.approx(peak / 2)
    assert warmup_cosine_at(0.775, 0.1, peak, low, "linear") == pytest.approx(peak / 4)  # cosine: 1.46e-4
    assert warmup_cosine_at(1.0, 0.1, peak, low, "linear") == pytest.approx(low)
    by_step = [warmup_cosine_lr(s, 11, 1, 1.0, 0.0, "linear") for s in range(11)]
    assert by_step == pytest.approx(
        [1.0] + [1 - i / 9 for i in range(10)]
    )  # one warmup step, then 9 equal falls


def test_muon_takes_the_hidden_matrices_adamw_the_rest_and_resumes_exactly():
    tiny = {"embed_dim": 32, "depth": 2, "num_heads": 2, "drop_rate": 0.0}  # no dropout: steps are repeatable
    model, x = VisionTransformer(**tiny), torch.randn(4, 3, 32, 32)
    muon = {
        "_target_": "torch.optim.Muon",
        "lr": 1e-2,
        "weight_decay": 0.05,
        "adjust_lr_fn": "match_rms_adamw",
    }

    def build(net: nn.Module) -> torch.optim.Optimizer:
        return build_optimization(net, muon, {}, torch.device("cpu"), total_steps=10, max_epochs=1)[0]

    def step(net: nn.Module, optimizer: torch.optim.Optimizer) -> None:
        net.zero_grad()
        net(x).square().mean().backward()
        optimizer.step()

    optimizer = build(model)
    groups = {group["name"]: _names(model, group["params"]) for group in optimizer.param_groups}
    assert groups["matrix"] == {
        f"blocks.{i}.{layer}.weight"
        for i in range(2)
        for layer in ("attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2")
    }
    assert groups["decay"] == {"patch_embed.proj.weight", "head.weight"}  # not 2-D, or the classifier
    assert {"cls_token", "pos_embed", "head.bias"} <= groups["no_decay"]
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    step(model, optimizer)
    assert [
        name for name, p in model.named_parameters() if torch.equal(before[name], p)
    ] == []  # every one moved

    # A checkpoint's optimiser state continues exactly where it stopped, under the learning rates set on it.
    copy = VisionTransformer(**tiny)
    copy.load_state_dict(model.state_dict())
    resumed = build(copy)
    resumed.load_state_dict(deepcopy(optimizer.state_dict()))  # as saved: a state of its own
    step(model, optimizer)
    step(copy, resumed)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), copy.parameters(), strict=True))
    for group in resumed.param_groups:  # as the schedule does
        group["lr"] = 0.0
    before = [p.detach().clone() for p in copy.parameters()]
    step(copy, resumed)
    assert all(torch.equal(a, b) for a, b in zip(before, copy.parameters(), strict=True))


def test_muon_leaves_any_models_output_layer_to_adamw_and_refuses_a_model_without_hidden_matrices():
    resnet = ResNet18()  # its classifier is "fc", its other weights 4-D convolutions: nothing for Muon
    groups = {
        group["name"]: _names(resnet, group["params"]) for group in param_groups(resnet, 0.05, matrices=True)
    }
    assert groups["matrix"] == set() and "fc.weight" in groups["decay"]
    muon = {"_target_": "torch.optim.Muon", "lr": 1e-3, "weight_decay": 0.05}
    with pytest.raises(
        ConfigError, match="optim=muon finds no 2-D hidden weights in ResNet18: use optim=adamw"
    ):
        build_optimization(resnet, muon, {}, torch.device("cpu"), total_steps=10, max_epochs=1)
