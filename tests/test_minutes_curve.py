"""scripts/minutes_curve.py, which draws README's "What CPU time buys" figure from run folders: budgets read from
each run's trainer.max_time, one line per machine through the mean of each budget, a missing file refused in one
line before anything is written."""

from __future__ import annotations

import importlib.util
import json

import pytest

from conftest import ROOT

spec = importlib.util.spec_from_file_location("minutes_curve", ROOT / "scripts" / "minutes_curve.py")
minutes_curve = importlib.util.module_from_spec(spec)
spec.loader.exec_module(minutes_curve)


def make_run(folder, max_time, test_acc, seed=42, device="cpu (AMD EPYC, 2 threads, bf16 AVX512-BF16)"):
    (folder / ".hydra").mkdir(parents=True)
    (folder / ".hydra" / "config.yaml").write_text(f"trainer:\n  max_time: '{max_time}'\n")
    metrics = {
        "test_acc": test_acc,
        "steps": 1234,
        "epochs": 3,
        "seed": seed,
        "wall_s": 612.5,
        "device": device,
    }
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_budgets_in_minutes():
    assert minutes_curve.budget_minutes("00:00:55:00") == 55
    assert minutes_curve.budget_minutes("00:01:02:30") == 62.5
    assert minutes_curve.budget_minutes({"hours": 1, "minutes": 5}) == 65


def test_table_and_figure(tmp_path, capsys):
    runs = [
        make_run(tmp_path / "a", "00:00:10:00", 0.8),
        make_run(tmp_path / "b", "00:00:05:00", 0.7),
        make_run(tmp_path / "c", "00:00:10:00", 0.9, seed=43),
        make_run(tmp_path / "d", "00:00:05:00", 0.75, device="cpu (Intel Xeon, 2 threads, bf16 AMX)"),
    ]
    out = tmp_path / "fig" / "curve.png"
    minutes_curve.main([*map(str, runs), "--out", str(out)])
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ") and "%" in line]
    # by machine, then budget, then seed
    assert [row.split(" | ")[:2] for row in rows] == [
        ["| 5", "42"],
        ["| 10", "42"],
        ["| 10", "43"],
        ["| 5", "42"],
    ]
    assert "**70.00%**" in rows[0] and "10 min 12 s" in rows[0] and "Intel Xeon" in rows[3]
    assert out.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in out.parent.iterdir()] == ["curve.png"]  # no partial file left beside it


@pytest.mark.parametrize("damage", ["no metrics", "no budget", "bad json"])
def test_refusals_write_nothing(tmp_path, damage):
    run = make_run(tmp_path / "run", "00:00:05:00", 0.7)
    if damage == "no metrics":
        (run / "metrics.json").unlink()
    elif damage == "no budget":
        (run / ".hydra" / "config.yaml").write_text("trainer:\n  max_epochs: 3\n")
    else:
        (run / "metrics.json").write_text("{")
    out = tmp_path / "curve.png"
    with pytest.raises(SystemExit) as exit_:
        minutes_curve.main([str(run), "--out", str(out)])
    message = str(exit_.value.code)
    assert message.startswith("error: ") and "\n" not in message and str(run) in message
    assert not out.exists()
