"""The command line: every flag documented, train and stats end to end on a slice of MNIST."""

import json

import numpy as np
import pytest

from jaxscale.training import cli


@pytest.mark.parametrize("command", ["train", "stats"])
def test_every_flag_has_help(command):
    parser = cli.build_parser()
    sub = parser._subparsers._group_actions[0].choices[command]
    flags = [a for a in sub._actions if a.option_strings and a.dest != "help"]
    assert len(flags) >= (30 if command == "train" else 8)
    assert [a.dest for a in flags if not a.help] == []
    text = sub.format_help()
    for action in flags:
        assert action.option_strings[-1] in text


def test_bad_devices_flag_is_rejected(capsys):
    with pytest.raises(SystemExit):
        cli.main(["train", "--devices", "zero"])
    assert "--devices" in capsys.readouterr().err


def test_stats_matches_numpy(mnist_dir, capsys):
    from jaxscale.data.datasets import load_dataset
    assert cli.main(["stats", "--data-dir", str(mnist_dir), "--split", "test[:2000]",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    images = load_dataset("mnist", "test[:2000]", data_dir=mnist_dir).images.astype(np.float64)
    assert out["count"] == 2000
    np.testing.assert_allclose(out["mean"], [images.mean()], rtol=1e-5)
    np.testing.assert_allclose(out["std"], [images.std()], rtol=1e-4)


def test_train_smoke_writes_metrics_summary_and_checkpoint(mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    status = cli.main(["train", "--data-dir", str(mnist_dir), "--model", "small_cnn",
                       "--scaling", "normalize", "--train-split", "train[:640]",
                       "--test-split", "test[:200]", "--eval-batch-size", "200",
                       "--epochs", "2", "--batch-size", "64", "--devices", "1",
                       "--output-dir", str(out), "--no-progress", "--log-every", "5"])
    assert status == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 20
    assert summary["final"]["test_accuracy"] > 0.5
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["kind"] == "epoch"] == [10, 20]
    import jaxscale.training.checkpoint as checkpoint
    assert (out / "checkpoints" / f"step_00000020.{checkpoint.FORMAT}").exists()
    assert (out / "checkpoints" / "scaling.npz").exists()
    assert "test_accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("joins", [False, True])
def test_stats_joins_a_job_it_is_evidently_part_of(mnist_dir, capsys, monkeypatch, joins):
    import jaxscale.training.distributed as distributed

    calls = []
    monkeypatch.setattr(distributed, "auto_initialize", lambda: calls.append(1) or joins)
    merged = []
    real = distributed.global_dataset_stats
    monkeypatch.setattr(distributed, "global_dataset_stats",
                        lambda images, **kw: merged.append(len(images)) or real(images, **kw))
    assert cli.main(["stats", "--data-dir", str(mnist_dir), "--split", "test[:500]",
                     "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert calls == [1] and out["count"] == 500
    assert merged == ([500] if joins else [])  # joined: statistics merged across hosts


def test_resume_with_another_config_is_refused_naming_the_fields(mnist_dir, tmp_path, capsys):
    common = ["train", "--data-dir", str(mnist_dir), "--model", "small_cnn",
              "--train-split", "train[:256]", "--test-split", "", "--epochs", "1",
              "--batch-size", "64", "--devices", "1", "--output-dir", str(tmp_path),
              "--no-progress"]
    assert cli.main(common + ["--scaling", "standardize", "--max-steps", "2"]) == 0
    capsys.readouterr()
    status = cli.main(common + ["--scaling", "normalize", "--seed", "3", "--resume"])
    err = capsys.readouterr().err
    assert status == 2
    assert "scaling: 'standardize' -> 'normalize'" in err and "seed: 0 -> 3" in err
    status = cli.main(common + ["--train-split", "train[:320]", "--resume"])
    assert status == 2 and "data.split: 'train[:256]' -> 'train[:320]'" in capsys.readouterr().err
    assert cli.main(common + ["--epochs", "2", "--resume", "--allow-change", "epochs"]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 8 and summary["input"] == "resident"


def test_an_unwritable_output_dir_is_a_clear_error(mnist_dir, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    status = cli.main(["train", "--data-dir", str(mnist_dir), "--model", "small_cnn",
                       "--train-split", "train[:128]", "--test-split", "", "--max-steps", "1",
                       "--batch-size", "64", "--devices", "1", "--no-progress",
                       "--output-dir", str(blocker / "run")])
    err = capsys.readouterr().err
    assert status == 2 and str(blocker / "run") in err and "Traceback" not in err
