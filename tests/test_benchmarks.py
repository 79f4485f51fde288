"""Benchmark harness: timing method, report files and schema, sections on tiny inputs.

No timing is asserted: only that the pieces run, count what they should and write what they
promise.
"""

import json
import math
import types

import numpy as np
import pytest

from benchmarks import (bench_scaling, bench_stats, bench_train, data, keras_peer, report,
                        reproduce, roofline, run)
from benchmarks.timing import Job, Timing, measure, measure_interleaved


def tiny_images(n=64, h=8, w=8, c=1, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, c), dtype=np.uint8)


@pytest.mark.parametrize("warmup,repeats,calls", [(0, 1, 1), (2, 3, 4)])
def test_measure_excludes_warmup_and_rotates_buffers(warmup, repeats, calls):
    seen = []
    timing = measure(seen.append, ["a", "b", "c"], items=10, repeats=repeats, warmup=warmup,
                     calls_per_repeat=calls)
    total = warmup + repeats * calls
    assert seen == [["a", "b", "c"][k % 3] for k in range(total)]
    assert len(timing.seconds) == repeats
    assert timing.items == 10 * calls


def test_measure_interleaved_runs_jobs_round_robin_after_all_warmups():
    seen = []
    timings = measure_interleaved({
        "ours": Job(lambda x: seen.append(("ours", x)), ["a", "b"], 4, calls_per_repeat=2,
                    warmup=1),
        "peer": Job(lambda x: seen.append(("peer", x)), ["p"], 3, warmup=2, repeats=2),
    }, repeats=3)
    assert seen == [("ours", "a"), ("peer", "p"), ("peer", "p"),    # warm-ups
                    ("ours", "a"), ("ours", "b"), ("peer", "p"),    # round 1
                    ("ours", "a"), ("ours", "b"), ("peer", "p"),    # round 2
                    ("ours", "a"), ("ours", "b")]                   # round 3: peer sat out
    assert list(timings) == ["ours", "peer"]
    assert len(timings["ours"].seconds) == 3 and timings["ours"].items == 8
    assert len(timings["peer"].seconds) == 2 and timings["peer"].items == 3
    with pytest.raises(ValueError, match="repeats"):
        measure_interleaved({}, repeats=0)


def test_timing_summary_figures():
    timing = Timing((2.0, 1.0, 4.0), items=8)
    summary = timing.summary()
    assert summary["seconds_median"] == 2.0
    assert summary["spread"] == pytest.approx(1.5)
    assert summary["images_per_s"] == 4.0
    assert (summary["images_per_s_min"], summary["images_per_s_max"]) == (2.0, 8.0)


@pytest.mark.parametrize("kwargs,message", [({"inputs": []}, "at least one"),
                                            ({"repeats": 0}, "repeats")])
def test_measure_rejects_bad_arguments(kwargs, message):
    arguments = {"inputs": [1], "items": 1, "repeats": 1} | kwargs
    with pytest.raises(ValueError, match=message):
        measure(lambda x: x, **arguments)


@pytest.mark.parametrize("mode,expected", [("none", 2 * 784 * 5),
                                           ("zca", 2 * 784 * 5 + 784 * 784 * 4)])
def test_bytes_per_batch(mode, expected):
    assert bench_scaling.bytes_per_batch(mode, (2, 28, 28, 1)) == expected


def test_synthetic_data_when_no_files(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_SHARED", tmp_path / "absent")
    monkeypatch.delenv("JAXSCALE_DATA_DIR", raising=False)
    bench = data.load_bench_data(tmp_path, num_examples=32)
    assert bench.images.shape == (32, 28, 28, 1) and bench.images.dtype == np.uint8
    assert bench.source.startswith("synthetic") and not bench.is_real
    assert bench.labels.min() >= 0 and bench.labels.max() <= 9


def test_real_mnist_when_files_are_there(mnist_dir):
    bench = data.load_bench_data(mnist_dir, num_examples=100)
    assert bench.is_real and bench.images.shape == (100, 28, 28, 1)
    assert int(bench.labels[0]) == 5 and int(bench.images[0].sum()) == 27525


def test_scaling_rows_on_tiny_input():
    rows = bench_scaling.run(tiny_images(), modes=("none", "standardize", "zca"), batch_size=16,
                             buffers=2, repeats=1, keras=False, roofline_repeats=2,
                             compute_roofline=roofline.compute_peak(64, repeats=2),
                             check_modes=("standardize",))
    assert [r["name"] for r in rows] == ["copy_roofline", "compute_roofline", "none",
                                         "standardize", "zca", "standardize/checked"]
    memory, compute = rows[0], rows[1]
    assert memory["megabytes"] >= 1 and memory["gb_per_s"] >= memory["gb_per_s_median"] > 0
    checked = rows[-1]
    assert checked["images_per_s"] > 0 and checked["unchecked_images_per_s"] > 0
    assert checked["overhead_pct"] == pytest.approx(
        100 * (checked["unchecked_images_per_s"] / checked["images_per_s"] - 1))
    for row in rows[2:-1]:
        assert row["batch_size"] == 16 and row["buffers"] == 2
        assert row["gb_per_s"] > 0 and row["images_per_s"] > 0
        assert row["ratio"] is None
        # the fraction is the bound's time over the measured time, whichever roofline binds
        by_memory = row["gb_per_s"] / memory["gb_per_s"]
        by_compute = row["gflop_per_s"] / compute["gflop_per_s"]
        assert row["bound"] == ("compute" if by_compute > by_memory else "memory")
        assert row["roofline_fraction"] == pytest.approx(max(by_memory, by_compute))


def test_flops_and_bytes_per_scaling_batch():
    shape = (16, 8, 8, 1)
    assert bench_scaling.bytes_per_batch("none", shape) == 16 * 64 * 5
    assert bench_scaling.bytes_per_batch("zca", shape) == 16 * 64 * 5 + 64 * 64 * 4
    assert bench_scaling.flops_per_batch("none", shape) == 0
    assert bench_scaling.flops_per_batch("zca", shape) == 16 * 64 * (1 + 2 * 64)
    assert bench_scaling.working_set_bytes(shape, 3) == 3 * 16 * 64 * 5


def test_memory_roofline_updates_in_place_and_bound_picks_the_slower_limit():
    row = roofline.memory_bandwidth(1 << 20, repeats=3, warmup=1)
    assert row["megabytes"] == 1 and len(row["seconds_repeats"]) == 3
    assert row["gb_per_s"] == pytest.approx(2 * (1 << 20) / min(row["seconds_repeats"]) / 1e9)
    memory, compute = {"gb_per_s": 10.0}, {"gflop_per_s": 100.0}
    assert roofline.bound_seconds(1e9, 1e9, memory, compute) == (0.1, "memory")
    assert roofline.bound_seconds(1e9, 1e11, memory, compute) == (1.0, "compute")
    assert roofline.bound_seconds(1e9, 1e11, memory, None) == (0.1, "memory")


def test_stats_rows_on_tiny_input():
    rows = bench_stats.run(tiny_images(), repeats=1, modes=("standardize",), keras=False)
    assert [r["name"] for r in rows] == ["compute_stats", "fit_scaling[standardize]"]
    assert rows[0]["peer"] == "numpy mean+std" and rows[0]["ratio"] > 0
    assert rows[1]["ratio"] is None


def test_numpy_peer_computes_keras_statistics():
    images = tiny_images(c=3)
    mean, std = keras_peer.numpy_fit_stats(images)
    np.testing.assert_allclose(mean, images.reshape(-1, 3).mean(0), rtol=1e-5)
    np.testing.assert_allclose(std, images.reshape(-1, 3).std(0), rtol=1e-5)


def test_keras_flow_peer_does_the_same_work_as_ours():
    pytest.importorskip("keras")
    import jaxscale

    images = tiny_images(n=32)
    generator = keras_peer.keras_generator("standardize")
    generator.fit(images)
    keras_batch = next(generator.flow(images, batch_size=32, shuffle=False))
    config = jaxscale.scaling_config("standardize")
    ours = jaxscale.scale(images, config, jaxscale.fit_scaling(config, images))
    np.testing.assert_allclose(np.asarray(ours), keras_batch, rtol=1e-4, atol=1e-4)
    timing = keras_peer.keras_flow_timing(images, "standardize", batch_size=8, batches=2,
                                          repeats=1)
    assert timing.items == 16 and len(timing.seconds) == 1


def test_train_rows_carry_interleaved_overheads(monkeypatch):
    overheads = {"none": 0.0, "standardize": 25.0, "augment+normalize": 100.0}
    asked = {}

    def fake_benchmark(variants, **kwargs):
        asked.update(variants)
        return {name: {"images_per_s": 1000.0 / (1 + overheads[name] / 100),
                       "step_ms_median": 1.0, "step_ms_spread": 0.1, "compiles": 0,
                       "overhead_pct": overheads[name]} for name in variants}

    monkeypatch.setattr(bench_train, "benchmark_train_variants", fake_benchmark)
    rows = bench_train.run(tiny_images(), np.zeros(64, np.int32), modes=("none", "standardize"),
                           keras=False)
    by_name = {r["name"]: r for r in rows}
    assert list(asked) == ["none", "standardize", "augment+normalize"]
    assert asked["augment+normalize"][0] == "normalize" and asked["none"] == ("none", None)
    assert by_name["standardize"]["overhead_pct"] == pytest.approx(25.0)
    assert by_name["augment+normalize"]["images_per_s"] == pytest.approx(500.0)
    assert by_name["keras_train_on_batch"]["status"] == "n/a"


def test_augment_rows_time_the_train_sections_step(monkeypatch):
    from benchmarks import bench_augment

    asked = {}

    def fake_benchmark(variants, **kwargs):
        asked.update(variants, batch_size=kwargs["batch_size"], model=kwargs["model"])
        return {name: {"images_per_s": 640.0, "step_ms_median": 100.0,
                       "step_ms_spread": 5.0} for name in variants}

    monkeypatch.setattr(bench_augment.bench_train, "benchmark_train_variants", fake_benchmark)
    rows = bench_augment.run(tiny_images(n=32), np.zeros(32, np.int32), batch_sizes=(8,),
                             buffers=2, repeats=2, flow_batches=2, fused_batch_sizes=(16,),
                             fused_rounds=2, keras=False)
    assert [r["name"] for r in rows] == ["augment_jit/order1", "augment_jit/order0", "flow",
                                         "fused_train_step"]
    assert asked["model"] == "bn_cnn" and asked["batch_size"] == 16
    assert asked["plain"] == ("normalize", None)
    assert asked["fused"][0] == "normalize" and asked["fused"][1] is not None
    fused = rows[-1]
    assert fused["images_per_s"] == 640.0 and 0 < fused["augment_share"]
    assert all(len(r["seconds_repeats"]) == 2 for r in rows[:3])


def test_report_table_json_and_chart(tmp_path):
    rows = [{"bench": "scaling", "name": "copy_roofline", "gb_per_s": 3.0, "spread": 0.1},
            {"bench": "scaling", "name": "none", "images_per_s": 2e6, "spread": 0.05,
             "keras_images_per_s": 1e5, "ratio": 20.0, "gb_per_s": 7.8,
             "roofline_fraction": 2.6, "extra": np.float32(1.5)},
            {"bench": "train", "name": "zca", "status": "n/a", "why": "not yet"},
            {"bench": "train", "name": "none", "images_per_s": float("nan")}]
    table = report.format_table(rows)
    assert "20.0x" in table and "not yet" in table and "2,000,000" in table
    path = report.write_json(tmp_path / "r.json", {"device": "cpu"}, rows)
    document = json.loads(path.read_text())
    assert document["schema"] == report.SCHEMA_VERSION
    assert document["rows"][1]["extra"] == 1.5 and document["rows"][3]["images_per_s"] is None
    pytest.importorskip("matplotlib")
    chart = report.write_chart(tmp_path / "c.png", rows, title="t")
    assert chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report.write_chart(tmp_path / "none.png", rows[2:]) is None


def test_run_quick_writes_json_and_chart(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "_SHARED", tmp_path / "absent")
    monkeypatch.delenv("JAXSCALE_DATA_DIR", raising=False)
    result = run.main(["--quick", "--only", "stats,scaling", "--out", str(tmp_path),
                       "--no-keras", "--limit", "64"])
    document = json.loads((tmp_path / "bench-cpu.json").read_text())
    meta = document["meta"]
    assert meta["quick"] is True and meta["data_source"].startswith("synthetic")
    assert len(meta["commit"]) == 40 and isinstance(meta["dirty"], bool)
    assert meta["versions"]["jax"] and meta["device"] and meta["cpu_model"]
    assert not meta["keras_peer"]
    assert set(meta["section_seconds"]) == {"stats", "scaling"}
    names = [(r["bench"], r["name"]) for r in document["rows"]]
    assert ("scaling", "zca") in names and ("stats", "compute_stats") in names
    assert all(math.isfinite(r["images_per_s"]) for r in document["rows"]
               if r["bench"] == "scaling" and not r["name"].endswith("_roofline"))
    assert result["chart"] == tmp_path / "bench-cpu.png"
    assert report.chart_source(result["chart"]).endswith(
        report.sha256_of(tmp_path / "bench-cpu.json"))


def test_results_files_are_named_by_hardware():
    assert report.hardware_name("cpu", "cpu") == "cpu"
    assert report.hardware_name("gpu", "NVIDIA H100 80GB HBM3") == "h100"
    assert report.hardware_name("tpu", "TPU v5 lite") == "tpu-v5-lite"


def test_a_run_records_the_commit_it_measured():
    found = report.provenance()
    assert len(found["commit"]) == 40 and isinstance(found["dirty"], bool)
    line = report.describe_run({"time_utc": "2026-12-01T22:00:00+00:00", "commit": "a" * 40,
                                "dirty": True, "backend": "cpu", "cpu_model": "EPYC",
                                "host_cpus": 2, "versions": {"jax": "0.10.2"},
                                "quick": True})
    assert line == ("2026-12-01, commit aaaaaaaa + uncommitted changes, EPYC, 2 cores, "
                    "jax 0.10.2; a quick run, not the full one")


def test_run_rejects_unknown_section():
    with pytest.raises(SystemExit):
        run.parse_args(["--only", "stats,bogus"])


def test_table_tells_rows_of_the_same_name_apart_by_batch():
    rows = [{"bench": "augment", "name": "augment_jit", "batch_size": b, "images_per_s": 1.0}
            for b in (64, 1024)]
    table = report.format_table(rows)
    assert "augment_jit @64" in table and "augment_jit @1024" in table


def _reproduce_results(keras_runs=None):
    runs = [{"seed": s, "test_accuracy": [97.0, acc]} for s, acc in enumerate((98.5, 99.5))]
    row = {"model": "small_cnn", "scaling": "center", "augment": None, "tutorial": 99.12,
           "mean": 99.0, "std": 0.5, "runs": runs}
    if keras_runs is not None:
        row["keras"] = keras_runs
    return {"epochs": 5, "seeds": 2, "batch_size": 64, "rows": {"center": row}}


def test_reproduce_marks_anything_short_of_the_full_table_quick():
    assert reproduce.run_metadata(reproduce.parse_args([]))["quick"] is False
    quick = reproduce.parse_args(["--quick"])
    assert (quick.seeds, quick.epochs, quick.max_steps) == (1, 1, 100)
    assert reproduce.run_metadata(quick)["quick"] is True
    meta = reproduce.run_metadata(reproduce.parse_args(["--rows", "center"]))
    assert meta["quick"] is True and len(meta["commit"]) == 40


def test_reproduce_table_says_where_we_miss_the_tutorial():
    table = reproduce.markdown(_reproduce_results())
    assert ("| center | small_cnn | center | - | constant | 99.12 | 99.12 | 99.00 ± 0.50 | "
            "98.50, 99.50 | **no** |") in table
    assert "Keras" not in table


def test_reproduce_rows_carry_their_own_bar_and_schedule():
    results = _reproduce_results()
    row = results["rows"].pop("center")
    row.update(reproduce.dataclasses.asdict(reproduce.ROWS["bn_augment_cosine"]), mean=99.4)
    results["rows"]["bn_augment_cosine"] = row
    table = reproduce.markdown(results)
    # above the tutorial's 99.0, below the project's 99.5: the bar decides
    assert ("| bn_augment_cosine | bn_cnn | normalize | seed | cosine | 99.00 | 99.50 | "
            "99.40 ± 0.50 |") in table and table.rstrip().endswith("**no** |")
    assert reproduce.ROWS["bn_augment"].schedule == "constant"


def test_reproduce_table_has_keras_columns_when_keras_ran():
    table = reproduce.markdown(_reproduce_results(keras_runs=[97.95, 98.73, 9.82]))
    assert "Keras here, mean ± std % | Keras per seed % |" in table
    assert "| 68.83 ± 41.73 | 97.95, 98.73, 9.82 |" in table


def _quadrant_images(count: int, size: int, block: int):
    """uint8[count, size, size, 1] noise with class k's bright block in quadrant k; labels."""
    rng = np.random.default_rng(0)
    labels = np.arange(count) % 4
    images = rng.integers(0, 40, (count, size, size, 1)).astype(np.uint8)
    half = size // 2
    for k in range(4):
        r, c = 2 + half * (k // 2), 2 + half * (k % 2)
        images[labels == k, r:r + block, c:c + block] = 250
    return images, labels


@pytest.mark.slow  # a benchmark peer's training (Keras / PyTorch imports): make test-slow
def test_keras_runs_the_tutorial_recipe_and_learns():
    pytest.importorskip("keras")
    images, labels = _quadrant_images(640, 12, 3)
    accuracy = keras_peer.keras_tutorial_accuracy(
        "standardize", images[:512], labels[:512], images[512:], labels[512:], seed=0,
        epochs=2, batch_size=32)
    assert 90.0 <= accuracy <= 100.0


def test_keras_runs_each_row_with_its_model_augmentation_and_schedule(monkeypatch):
    calls = []
    monkeypatch.setattr(keras_peer, "keras_tutorial_accuracy",
                        lambda *args, **kwargs: calls.append((args, kwargs)) or 99.0)
    data = types.SimpleNamespace(images=np.zeros((4, 28, 28, 1), np.uint8),
                                 labels=np.zeros(4, np.int32))
    args = types.SimpleNamespace(seeds=2, epochs=1, batch_size=2)
    runs = reproduce._keras_runs("bn_augment_cosine", reproduce.ROWS["bn_augment_cosine"],
                                 args, data, data)
    assert runs == [99.0, 99.0]
    assert [kwargs["seed"] for _, kwargs in calls] == [0, 1]
    args0, kwargs0 = calls[0]
    assert args0[0] == "normalize" and kwargs0["model"] == "bn_cnn"
    from jaxscale.augmentation import SEED_RECIPE, keras_keywords
    assert kwargs0["schedule"] == "cosine" and kwargs0["augment"] == keras_keywords(SEED_RECIPE)
    reproduce._keras_runs("center", reproduce.ROWS["center"], args, data, data)
    assert calls[-1][1]["model"] == "small_cnn" and calls[-1][1]["augment"] is None


@pytest.mark.slow  # a benchmark peer's training (Keras / PyTorch imports): make test-slow
def test_keras_runs_the_bn_recipe_with_augmentation_and_learns():
    pytest.importorskip("keras")
    from jaxscale.augmentation import SEED_RECIPE, keras_keywords

    images, labels = _quadrant_images(1152, 20, 5)
    # 768 steps: BatchNorm's moving averages (momentum 0.99) need a few hundred before the
    # evaluation, which uses them, sees what training learnt (at 200 it still predicts one class).
    accuracy = keras_peer.keras_tutorial_accuracy(
        "normalize", images[:1024], labels[:1024], images[1024:], labels[1024:], seed=0,
        epochs=6, batch_size=8, model="bn_cnn",
        augment=keras_keywords(SEED_RECIPE), schedule="cosine")
    assert 90.0 <= accuracy <= 100.0


@pytest.mark.parametrize("kwargs,message", [
    ({"model": "resnet"}, "no Keras twin"),
    ({"schedule": "cosine"}, "only wired for the bn_cnn")])
def test_keras_recipe_refuses_what_it_cannot_run(kwargs, message):
    pytest.importorskip("keras")
    images = np.zeros((8, 28, 28, 1), np.uint8)
    labels = np.zeros(8, np.int32)
    with pytest.raises(ValueError, match=message):
        keras_peer.keras_tutorial_accuracy("normalize", images, labels, images, labels,
                                           seed=0, **kwargs)


def test_benchmarked_train_step_does_not_recompile():
    from benchmarks.bench_train import benchmark_train_step
    result = benchmark_train_step(model="small_cnn", scaling="standardize", batch_size=32,
                                  steps=5, warmup=1)
    assert result["compiles"] == 0
    assert result["warmup_compiles"] >= 0  # 0 when the persistent compilation cache has it
    assert set(result) >= {"images_per_s", "step_ms_median", "step_ms_spread", "compiles"}
    assert result["images_per_s"] > 0


def test_benchmark_train_variants_interleaves_without_recompiling():
    from benchmarks.bench_train import benchmark_train_variants
    from jaxscale.data.datasets import synthetic_dataset
    data = synthetic_dataset(256, (28, 28, 1), 10, seed=0)
    results = benchmark_train_variants(
        {"none": ("none", None), "standardize": ("standardize", None)}, model="small_cnn",
        batch_size=32, rounds=3, warmup=1, images=data.images, labels=data.labels)
    assert list(results) == ["none", "standardize"]
    assert results["none"]["overhead_pct"] == 0.0
    for result in results.values():
        assert result["compiles"] == 0
        assert result["images_per_s"] == pytest.approx(32e3 / result["step_ms_median"])
    with pytest.raises(ValueError, match="at least one"):
        benchmark_train_variants({})


def test_flow_rows_time_the_public_flows_against_keras():
    pytest.importorskip("keras")
    from benchmarks import bench_flow
    images = tiny_images(n=130)
    labels = np.arange(130, dtype=np.int32) % 3
    rows = bench_flow.run(images, labels, modes=("normalize", "zca"), repeats=2, batches=3,
                          keras_batches=1, files=130, file_batches=2, keras_file_batches=1)
    assert [r["name"] for r in rows] == ["flow/normalize", "flow/zca", "flow_from_directory"]
    assert [r["bar"] for r in rows] == [20.0, 5.0, 3.0]
    for row in rows:
        assert row["images_per_s"] > 0 and row["keras_images_per_s"] > 0
        assert row["ratio"] == pytest.approx(row["images_per_s"] / row["keras_images_per_s"])
        assert isinstance(row["meets_bar"], bool) and len(row["seconds_repeats"]) == 2


def test_docs_tables_are_rendered_between_their_markers():
    from jaxscale.scaling import MODES

    page = "intro\n<!-- generated: modes -->\nstale\n<!-- end generated -->\noutro\n"
    rendered = report.render(page)
    assert rendered.startswith("intro\n<!-- generated: modes -->\n| mode |")
    assert rendered.endswith("<!-- end generated -->\noutro\n") and "stale" not in rendered
    assert all(f"| `{mode}` |" in rendered for mode in MODES)
    assert report.render(rendered) == rendered
    with pytest.raises(ValueError, match="unknown generated table 'nope'"):
        report.render("<!-- generated: nope -->\n<!-- end generated -->")
    with pytest.raises(FileNotFoundError, match="make bench"):
        report.render("<!-- generated: bench-summary bench-nowhere.json -->\n"
                      "<!-- end generated -->")


def test_count_compiles_counts_compilations():
    import time

    import jax
    from benchmarks.timing import count_compiles
    constant = time.time_ns() % 1_000_003  # a program no cache has seen
    program = jax.jit(lambda x: x * constant + 1)
    with count_compiles() as compiles:
        program(1.0)
    assert compiles[0] == 1
    with count_compiles() as compiles:  # built already: JAX's in-memory cache has it
        program(2.0)
    assert compiles[0] == 0
    # built again after the in-memory caches are cleared, it counts, also where the persistent
    # compilation cache (the tests keep one) loads it instead of compiling it
    jax.clear_caches()
    with count_compiles() as compiles:
        program(3.0)
    assert compiles[0] == 1


def test_a_chunk_of_steps_on_cpu_builds_one_slice_program_not_one_per_step():
    import jax.numpy as jnp
    from benchmarks.timing import count_compiles
    from jaxscale.training.runners import StepByStep
    seen = []

    def program(state, sums, data, chunk, key):
        seen.append(np.asarray(chunk["rows"]))
        return state, sums

    steps, width = 7, 37  # a chunk shape no other test builds
    rows = jnp.arange(steps * width, dtype=jnp.int32).reshape(steps, width)
    with count_compiles() as compiles:
        StepByStep(program)(None, None, None, {"rows": rows}, None)
    assert compiles[0] <= 1  # an eager slice per step would build 7
    np.testing.assert_array_equal(np.concatenate(seen), np.asarray(rows))
    assert all(s.shape == (1, width) for s in seen)


def test_streaming_rows_are_judged_against_issue_18s_bars():
    from benchmarks.report import _streaming_bar
    assert _streaming_bar({"images_per_s": 2e5, "bar": 150_000}) == ">= 150k: met"
    assert _streaming_bar({"images_per_s": 1e5, "bar": 150_000}) == ">= 150k: **missed**"
    assert _streaming_bar({"images_per_s": 1e5, "bar": None}) == "-"
    train = {"slowdown": 1.07, "bar_slowdown": 1.05, "same_numbers": True}
    assert _streaming_bar(train) == "x1.070 of resident, bar x1.05: **missed**; same bits"
    assert "met; **numbers differ**" in _streaming_bar(dict(train, slowdown=1.0,
                                                              same_numbers=False))
