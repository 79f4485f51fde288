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


def _config(*flags):
    argv = ["train", *flags]
    args = cli.build_parser().parse_args(argv)
    args.given_flags = frozenset(vars(cli.build_parser(config_defaults=False).parse_args(
        argv))) & set(cli.CONFIG_FLAGS)
    return cli.train_config(args)


def test_a_recipe_is_the_base_and_the_flags_given_override_it():
    from jaxscale.training.config import TrainConfig
    from jaxscale.training.recipes import RECIPES

    assert _config() == TrainConfig(parallel="auto")
    assert _config("--epochs", "3") == TrainConfig(parallel="auto", epochs=3)
    recipe = RECIPES["speedrun99"]
    assert _config("--recipe", "speedrun99") == recipe.replace(parallel="auto")
    # a flag given with the plain default's value still overrides the recipe's
    assert _config("--recipe", "speedrun99", "--batch-size", "64", "--augment", "none",
                   "--parallel", "none") == recipe.replace(batch_size=64)
    augmented = _config("--recipe", "speedrun995", "--seed", "4", "--devices", "2")
    assert augmented == RECIPES["speedrun995"].replace(seed=4, devices=2, parallel="auto")
    assert _config("--recipe", "speedrun995", "--augment", "none").augment is None


def test_the_speedrun_recipe_trains_from_the_command_line_on_the_raw_files(
        mnist_dir, tmp_path, capsys):
    out = tmp_path / "run"
    assert cli.main(["train", "--recipe", "speedrun99", "--source", "raw",
                     "--data-dir", str(mnist_dir), "--max-steps", "3", "--test-split", "",
                     "--output-dir", str(out), "--no-progress", "--no-checkpoint"]) == 0
    captured = capsys.readouterr()
    assert "speedrun_net on mnist train (60000, 28, 28, 1), recipe=speedrun99" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["steps"] == 3 and summary["config"]["optimizer"] == "nesterov"
    assert np.isfinite(summary["final"]["train_loss"])


def _smoke(mnist_dir, out, *extra):
    return ["train", "--data-dir", str(mnist_dir), "--model", "small_cnn",
            "--scaling", "normalize", "--train-split", "train[:640]",
            "--test-split", "test[:200]", "--eval-batch-size", "200",
            "--epochs", "2", "--batch-size", "64", "--devices", "1",
            "--output-dir", str(out), "--no-progress", "--log-every", "5", *extra]


@pytest.fixture(scope="module")
def resident_run(mnist_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("resident")
    assert cli.main(_smoke(mnist_dir, out)) == 0
    return out, json.loads((out / "summary.json").read_text())


def test_train_smoke_writes_metrics_summary_and_checkpoint(resident_run):
    out, summary = resident_run
    assert summary["steps"] == 20 and summary["input"] == "resident"
    assert summary["final"]["test_accuracy"] > 0.5
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["kind"] == "epoch"] == [10, 20]
    import jaxscale.training.checkpoint as checkpoint
    assert (out / "checkpoints" / f"step_00000020.{checkpoint.FORMAT}").exists()
    assert (out / "checkpoints" / "scaling.npz").exists()


def _numbers(summary):
    return [{k: h[k] for k in ("step", "train_loss", "train_accuracy", "test_loss",
                               "test_accuracy")} for h in summary["history"]]


def test_streaming_a_tfds_dataset_from_raw_records_trains_the_same(mnist_dir, tmp_path,
                                                                   monkeypatch, capsys,
                                                                   resident_run):
    # --input auto on a device too small for the images (640 x 784 bytes): it streams
    streaming = pytest.importorskip("jaxscale.data.streaming")
    import jaxscale.training.loop as loop
    monkeypatch.setattr(streaming, "RECORDS_DIR", str(tmp_path / "records"))
    monkeypatch.setattr(loop, "_device_memory", lambda device: 640 * 784)
    out = tmp_path / "streamed"
    assert cli.main(_smoke(mnist_dir, out, "--input", "auto")) == 0
    err = capsys.readouterr().err
    assert "input: streaming (0.00 GB of images > 50% of the device's 0.0 GB)" in err
    assert "input: streaming (grain, 0 workers, 2 threads), 640 examples" in err
    written = sorted(p.name for p in (tmp_path / "records").rglob("*.array_record"))
    assert len(written) == 2  # the training and the test split, one file each
    summary = json.loads((out / "summary.json").read_text())
    assert summary["input"] == "streaming"
    # the same batches, and no arithmetic differs: the same numbers, bit for bit
    assert _numbers(summary) == _numbers(resident_run[1])


def test_train_on_an_image_folder_streams_its_files_as_resident_would(tmp_path, capsys):
    from PIL import Image

    rng = np.random.default_rng(0)
    for label, name in enumerate(("cats", "dogs")):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(10):  # 14x11 files, resized to 12x12; classes differ in brightness
            pixels = rng.integers(0, 128, (14, 11, 3)) + 100 * label
            Image.fromarray(pixels.astype(np.uint8)).save(tmp_path / "photos" / name / f"{i}.png")
    common = ["train", "--image-folder", str(tmp_path / "photos"), "--image-size", "12", "12",
              "--validation-split", "0.2", "--model", "small_cnn", "--scaling", "standardize",
              "--batch-size", "4", "--eval-batch-size", "4", "--epochs", "2", "--devices", "1",
              "--no-progress", "--no-checkpoint"]
    runs = {}
    for input in ("auto", "resident"):
        assert cli.main(common + ["--input", input, "--output-dir",
                                  str(tmp_path / input)]) == 0
        runs[input] = json.loads((tmp_path / input / "summary.json").read_text())
    assert "photos training (16, 12, 12, 3)" in capsys.readouterr().out
    assert runs["auto"]["input"] == "streaming" and runs["resident"]["input"] == "resident"
    assert runs["auto"]["steps"] == 2 * 16 // 4
    assert _numbers(runs["auto"]) == _numbers(runs["resident"])


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
