"""`make speedrun`: wall time to 99.0 % and 99.5 % MNIST test accuracy, ours against PyTorch
and Keras 3 running the same recipe in the same run.

    python -m benchmarks.speedrun [--seeds 5] [--recipes speedrun99,speedrun995]
                                  [--peers torch,torch_compile,keras] [--split test|validation]

Every run of one recipe with one seed is a fresh process, timed from the moment it is spawned:
interpreter start, imports, reading MNIST, compiling, training, evaluating. Runs are
interleaved (ours seed 0, torch seed 0, keras seed 0, ours seed 1, ...), so on a shared host
every system sees the same load. Our runs share one persistent XLA compilation cache made
fresh for this invocation: the first run of each recipe compiles cold, the later ones find
its programs in the cache (both compile times are reported).

The recipe trains a fixed number of epochs (its schedule depends on it) and the time to target
is the time at which the last epoch's test evaluation is done; the test accuracy after each
epoch is drawn in the chart, but nothing is stopped or chosen by it. Recipes were chosen on a
validation split (`--split validation`: train on train[10000:], evaluate on train[:10000]),
see docs/speedrun.md.

Writes benchmarks/results/speedrun-<hardware>.json (`speedrun-cpu.json`; with `--split
validation`, `speedrun-validation-cpu.json`) and its chart, and prints a table; the docs' table
is generated from the committed file (`make docs-tables`). A run short of the default one
(fewer seeds, recipes or peers, `--epochs`) is marked quick. `python -m benchmarks.speedrun --worker jax --recipe speedrun99 --seed 0` runs one
seed in this process and prints its JSON line.
"""

from __future__ import annotations

import time

_SPAWNED = time.time()  # replaced by --t0 when the parent gives the moment it spawned us

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from pathlib import Path  # noqa: E402

from benchmarks.speedrun_data import data_folder, load_split, save_split  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
PEERS = ("torch", "torch_compile", "keras")
# `jaxscale train --recipe NAME`, what a user runs: the trainer's own loop (one call per step on
# CPU), its data loading (MNIST's IDX files, --source raw) and its compilation cache
CLI = "jaxscale_train"


# --------------------------------------------------------------------------------------------
# Our worker
# --------------------------------------------------------------------------------------------

def run_jax(recipe: str, seed: int, *, split: str = "test", t0: float | None = None,
            cache_dir: str | None = None, data_dir=None, npz: str | None = None,
            epochs: int | None = None) -> dict:
    """Trains one recipe with one seed; returns the run's record (see `main`'s JSON).

    `phases` in the record: seconds since t0 at which imports, data loading, the initial
    state and compilation were done.
    """
    t0 = _SPAWNED if t0 is None else t0
    phases = {}
    import dataclasses
    import functools

    import jax
    import numpy as np

    if cache_dir:
        jax.config.update("jax_compilation_cache_dir", cache_dir)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
        jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    from jaxscale.cpu import step_compiler_options, tune_host_allocator

    tune_host_allocator()
    from benchmarks import speedrun_recipe as sr

    phases["imports"] = time.time() - t0
    config = sr.RECIPES[recipe]
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    train_x, train_y, eval_x, eval_y = load_split(split, data_dir, npz)
    images, labels = jax.device_put(train_x), jax.device_put(train_y)
    test_images, test_labels = jax.device_put(eval_x), jax.device_put(eval_y)
    phases["data"] = time.time() - t0
    n = len(train_y)
    per_epoch = config.steps_per_epoch(n)
    total = config.total_steps(n)
    k = config.steps_per_dispatch or per_epoch
    if per_epoch % k:
        raise ValueError(f"steps_per_dispatch {k} does not divide the {per_epoch} steps of "
                         f"an epoch")
    compile_start = time.time()
    options = step_compiler_options(jax.devices())  # compiles a probe program once
    state = sr.init_state_jit(config, seed, train_x.shape[1:], total_steps=total)
    key = sr.step_key(seed)
    train = jax.jit(functools.partial(sr.train_steps, config, total), donate_argnums=0,
                    compiler_options=options).lower(
        state, images, labels, np.zeros((k, config.batch_size), np.int32), key).compile()
    evaluate = jax.jit(functools.partial(sr.evaluate, config), compiler_options=options).lower(
        state.params, state.batch_stats, test_images, test_labels).compile()
    rows = sr.epoch_rows(seed, 0, n, config.batch_size)
    jax.block_until_ready(state)
    compile_s = time.time() - compile_start
    phases["compiled"] = time.time() - t0

    curve = []
    train_s = eval_s = 0.0
    for epoch in range(config.epochs):
        epoch_start = time.time()
        if epoch:
            rows = sr.epoch_rows(seed, epoch, n, config.batch_size)
        for start in range(0, per_epoch, k):
            state, _ = train(state, images, labels, rows[start:start + k], key)
        jax.block_until_ready(state)  # one wait per epoch, to time training and evaluation apart
        eval_start = time.time()
        correct = int(evaluate(state.params, state.batch_stats, test_images, test_labels))
        now = time.time()
        train_s += eval_start - epoch_start
        eval_s += now - eval_start
        curve.append({"epoch": epoch + 1, "seconds": now - t0,
                      "accuracy": correct / len(eval_y)})
    return {"system": "jaxscale", "recipe": recipe, "seed": seed, "split": split,
            "accuracy": curve[-1]["accuracy"], "time_to_end_s": curve[-1]["seconds"],
            "compile_s": compile_s, "phases": phases, "train_s": train_s, "eval_s": eval_s,
            "images_per_s": total * config.batch_size / train_s, "curve": curve,
            "steps_per_dispatch": k, "versions": {"jax": jax.__version__}}


def worker_main(args) -> None:
    """One seed in this process; the record as one JSON line on stdout."""
    if args.worker == "jax":
        record = run_jax(args.recipe, args.seed, split=args.split, t0=args.t0,
                         cache_dir=args.cache_dir, data_dir=args.data_dir, npz=args.data_npz,
                         epochs=args.epochs)
    elif args.worker in ("torch", "torch_compile"):
        from benchmarks import speedrun_torch
        record = speedrun_torch.run(args.recipe, args.seed, split=args.split,
                                    t0=args.t0 or _SPAWNED, data_dir=args.data_dir,
                                    npz=args.data_npz, compile=args.worker == "torch_compile",
                                    epochs=args.epochs)
    elif args.worker == "keras":
        from benchmarks import speedrun_keras
        record = speedrun_keras.run(args.recipe, args.seed, split=args.split,
                                    t0=args.t0 or _SPAWNED, data_dir=args.data_dir,
                                    npz=args.data_npz, epochs=args.epochs)
    else:
        raise SystemExit(f"unknown worker {args.worker!r}")
    print("RECORD " + json.dumps(record), flush=True)


# --------------------------------------------------------------------------------------------
# The driver: interleaved fresh processes, the table, the JSON, the chart
# --------------------------------------------------------------------------------------------

MALLOC_ENV = {"MALLOC_ARENA_MAX": "1", "MALLOC_MMAP_THRESHOLD_": str(256 << 20),
              "MALLOC_TRIM_THRESHOLD_": str(1 << 30)}


def peer_available(peer: str) -> str | None:
    """None when the peer can run here, else why not (one line)."""
    if peer == CLI:
        return None
    if peer in ("torch", "torch_compile"):
        try:
            import torch  # noqa: F401
        except ImportError:
            return "torch is not installed (`make speedrun` installs the CPU wheel on demand)"
        if peer == "torch_compile" and shutil.which(os.environ.get("CXX", "g++")) is None:
            return "torch.compile needs a C++ compiler (none found)"
        return None
    if peer == "keras":
        try:
            import keras  # noqa: F401
        except ImportError:
            return "keras is not installed (the `keras` extra)"
        return None
    return f"unknown peer {peer!r}"


def omp_wait_policy(choice: str) -> str | None:
    """OMP_WAIT_POLICY for the PyTorch peer: "active"/"passive", or for "auto" passive when
    the host is oversubscribed (1-minute load average above its CPU count), else None
    (PyTorch's default). OpenMP threads that spin while waiting collapse on a host whose
    cores are busy with other jobs: measured here, a PyTorch step of this net took 650 ms with
    two spinning threads under load, 48 ms passive and 36 ms with one thread; on an idle host
    spinning is PyTorch's fastest setting."""
    if choice in ("active", "passive"):
        return choice.upper()
    if choice != "auto":
        raise ValueError(f"omp wait policy must be auto, active or passive, got {choice!r}")
    loaded = hasattr(os, "getloadavg") and os.getloadavg()[0] > (os.cpu_count() or 1)
    return "PASSIVE" if loaded else None


def spawn(worker: str, recipe: str, seed: int, *, split: str, cache_dir: str | None,
          data_dir, npz: str | None, epochs: int | None, timeout_s: float,
          omp_wait: str = "auto") -> dict:
    """Runs one seed in a fresh process; returns its record, or {"status": "failed", ...}."""
    command = [sys.executable, "-m", "benchmarks.speedrun", "--worker", worker,
               "--recipe", recipe, "--seed", str(seed), "--split", split]
    if cache_dir:
        command += ["--cache-dir", cache_dir]
    if data_dir:
        command += ["--data-dir", str(data_dir)]
    if npz:
        command += ["--data-npz", str(npz)]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    # glibc's malloc tunables as the environment sets them: what `tune_host_allocator` sets
    # with mallopt in our process, given to the peers too (they do not import jaxscale)
    env = dict(os.environ, KERAS_BACKEND="jax", TF_CPP_MIN_LOG_LEVEL="3", **MALLOC_ENV,
               PYTHONPATH=os.pathsep.join(filter(None, [str(Path(__file__).resolve().parents[1]),
                                                        os.environ.get("PYTHONPATH")])))
    policy = omp_wait_policy(omp_wait) if worker.startswith("torch") else None
    if policy:
        env["OMP_WAIT_POLICY"] = policy
    if worker == "torch_compile" and cache_dir:
        # Inductor's compiled kernels are cached on disk too: a fresh cache per invocation, as
        # ours, so its first run compiles cold and the later ones warm
        env["TORCHINDUCTOR_CACHE_DIR"] = cache_dir
    t0 = time.time()
    try:
        done = subprocess.run(command + ["--t0", repr(t0)], capture_output=True, text=True,
                              env=env, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"system": worker, "recipe": recipe, "seed": seed, "status": "failed",
                "why": f"timed out after {timeout_s:.0f} s"}
    for line in done.stdout.splitlines():
        if line.startswith("RECORD "):
            record = json.loads(line[len("RECORD "):])
            record["process_s"] = time.time() - t0
            if worker.startswith("torch"):
                record["omp_wait_policy"] = policy or "default"
            return record
    tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
    return {"system": worker, "recipe": recipe, "seed": seed, "status": "failed",
            "why": f"exit {done.returncode}: {' | '.join(tail)}"}


def spawn_cli(recipe: str, seed: int, *, split: str, cache_dir: str, data_dir,
              epochs: int | None, timeout_s: float, scratch: str) -> dict:
    """Runs `jaxscale train --recipe <recipe>` in a fresh process; returns its record (time
    from the spawn to the process's exit, accuracy from its summary.json; the trainer does not
    report its compile time apart), or {"status": "failed", ...}."""
    out = os.path.join(scratch, f"cli-{recipe}-{seed}")
    command = [sys.executable, "-m", "jaxscale", "train", "--recipe", recipe,
               "--seed", str(seed), "--source", "raw", "--no-progress", "--no-checkpoint",
               "--output-dir", out, "--compilation-cache", cache_dir]
    if split == "validation":
        command += ["--train-split", "train[10000:]", "--test-split", "train[:10000]"]
    command += ["--data-dir", str(data_folder(data_dir))]
    if epochs is not None:
        command += ["--epochs", str(epochs)]
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    t0 = time.time()
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"system": CLI, "recipe": recipe, "seed": seed, "status": "failed",
                "why": f"timed out after {timeout_s:.0f} s"}
    elapsed = time.time() - t0
    summary_path = Path(out) / "summary.json"
    if done.returncode or not summary_path.is_file():
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        return {"system": CLI, "recipe": recipe, "seed": seed, "status": "failed",
                "why": f"exit {done.returncode}: {' | '.join(tail)}"}
    final = json.loads(summary_path.read_text())["final"]
    return {"system": CLI, "recipe": recipe, "seed": seed, "split": split,
            "accuracy": final["test_accuracy"], "time_to_end_s": elapsed, "compile_s": None,
            "images_per_s": final["images_per_s"], "process_s": elapsed,
            "curve": [{"epoch": final["epoch"], "seconds": elapsed,
                       "accuracy": final["test_accuracy"]}],
            "command": " ".join(command[2:])}


def summarize(records: list[dict], recipes) -> list[dict]:
    """One row per (recipe, system): mean/min accuracy, mean time to the end, compile."""
    rows = []
    for recipe in recipes:
        systems = dict.fromkeys(r["system"] for r in records if r["recipe"] == recipe)
        for system in systems:
            runs = [r for r in records if r["recipe"] == recipe and r["system"] == system
                    and r.get("status") != "failed"]
            failed = [r for r in records if r["recipe"] == recipe and r["system"] == system
                      and r.get("status") == "failed"]
            if not runs:
                rows.append({"recipe": recipe, "system": system, "status": "n/a",
                             "why": failed[0]["why"] if failed else "no runs"})
                continue
            times = [r["time_to_end_s"] for r in runs]
            accs = [r["accuracy"] for r in runs]
            rows.append({"recipe": recipe, "system": system, "seeds": len(runs),
                         "failed": len(failed), "accuracy_mean": statistics.mean(accs),
                         "accuracy_min": min(accs), "time_mean_s": statistics.mean(times),
                         "time_max_s": max(times),
                         "compile_mean_s": _mean_known(r["compile_s"] for r in runs),
                         "images_per_s_mean": statistics.mean(r["images_per_s"] for r in runs)})
    for row in rows:
        ours = next((r for r in rows if r["recipe"] == row["recipe"]
                     and r["system"] == "jaxscale" and "time_mean_s" in r), None)
        if ours and "time_mean_s" in row:
            row["ours_speedup"] = row["time_mean_s"] / ours["time_mean_s"]
    return rows


def _mean_known(values) -> float | None:
    known = [v for v in values if v is not None]
    return statistics.mean(known) if known else None


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.1f}s"


def format_records(records: list[dict]) -> str:
    header = (f"{'recipe':<12} {'system':<14} {'seed':>4} {'accuracy':>9} {'time to end':>12} "
              f"{'compile':>8} {'img/s':>8}  cache")
    lines = [header, "-" * len(header)]
    for r in records:
        if r.get("status") == "failed":
            lines.append(f"{r['recipe']:<12} {r['system']:<14} {r['seed']:>4}  failed: {r['why']}")
            continue
        lines.append(f"{r['recipe']:<12} {r['system']:<14} {r['seed']:>4} "
                     f"{100 * r['accuracy']:>8.2f}% {r['time_to_end_s']:>11.1f}s "
                     f"{_seconds(r['compile_s']):>8} {r['images_per_s']:>8,.0f}  "
                     f"{r.get('cache', '')}")
    return "\n".join(lines)


def format_summary(rows: list[dict]) -> str:
    header = (f"{'recipe':<12} {'system':<14} {'seeds':>5} {'mean acc':>9} {'min acc':>8} "
              f"{'mean time':>10} {'max time':>9} {'compile':>8} {'vs ours':>8}")
    lines = [header, "-" * len(header)]
    for r in rows:
        if r.get("status") == "n/a":
            lines.append(f"{r['recipe']:<12} {r['system']:<14}   n/a  {r['why']}")
            continue
        lines.append(f"{r['recipe']:<12} {r['system']:<14} {r['seeds']:>5} "
                     f"{100 * r['accuracy_mean']:>8.2f}% {100 * r['accuracy_min']:>7.2f}% "
                     f"{r['time_mean_s']:>9.1f}s {r['time_max_s']:>8.1f}s "
                     f"{_seconds(r['compile_mean_s']):>8} {r.get('ours_speedup', 1.0):>7.2f}x")
    return "\n".join(lines)


# The bar compares ours with PyTorch eager on speedrun99, so that pair runs every seed;
# torch.compile's cold compile alone takes about a minute here, and the 6-epoch recipe's peers
# would take longer than ours; opt in with e.g. --peer-seeds speedrun995=1.
DEFAULT_PEER_SEEDS = f"torch_compile=2,keras=3,speedrun995=0,{CLI}@speedrun995=1"


def parse_peer_seeds(text: str) -> dict[str, int]:
    """'a=1,b@c=2' -> {"a": 1, "b@c": 2}; raises SystemExit on a malformed item."""
    out = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        key, sep, value = item.partition("=")
        if not sep or not value.strip().isdigit():
            raise SystemExit(f"--peer-seeds items are KEY=N, got {item!r}")
        out[key.strip()] = int(value)
    return out


def seeds_for(peer_seeds: dict[str, int], peer: str, recipe: str, default: int) -> int:
    """Seeds `peer` runs of `recipe`: peer@recipe, else the smaller of peer and recipe when
    both are given, else whichever is given, else default."""
    if f"{peer}@{recipe}" in peer_seeds:
        return peer_seeds[f"{peer}@{recipe}"]
    given = [peer_seeds[k] for k in (peer, recipe) if k in peer_seeds]
    return min(given) if given else default


def is_quick(args: argparse.Namespace) -> bool:
    """Whether a run is short of the full `make speedrun` (so its file says so)."""
    full = parse_args([])
    return any(getattr(args, field) != getattr(full, field)
               for field in ("seeds", "recipes", "peers", "peer_seeds", "epochs"))


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.speedrun", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="seeds per recipe and system")
    parser.add_argument("--recipes", default="speedrun99,speedrun995")
    parser.add_argument("--peers", default=",".join((CLI, *PEERS)),
                        help=f"comma-separated peers, '' for none ({CLI}: `jaxscale train "
                             "--recipe`, our trainer as users run it; default: %(default)s)")
    parser.add_argument("--peer-seeds", default=DEFAULT_PEER_SEEDS,
                        help="seeds of the peers: comma-separated KEY=N with KEY a recipe, a "
                             "peer or peer@recipe, the most specific winning; others run "
                             "--seeds (default: %(default)s, which keeps `make speedrun` "
                             "under 10 minutes here)")
    parser.add_argument("--split", default="test", choices=("test", "validation"))
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--epochs", type=int, default=None, help="override (smoke tests)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--timeout", type=float, default=400.0, help="seconds per run")
    parser.add_argument("--torch-omp-wait", default="auto", choices=("auto", "active", "passive"),
                        help="OMP_WAIT_POLICY of the PyTorch peer (auto: passive when the host "
                             "is oversubscribed; see omp_wait_policy)")
    # worker mode
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--recipe", default="speedrun99", help=argparse.SUPPRESS)
    parser.add_argument("--seed", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--t0", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--data-npz", default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv=None) -> dict:
    args = parse_args(argv)
    if args.worker:
        worker_main(args)
        return {}
    from benchmarks import run as bench_run
    from benchmarks import report
    from benchmarks import speedrun_recipe as sr

    recipes = [r.strip() for r in args.recipes.split(",") if r.strip()]
    unknown = sorted(set(recipes) - set(sr.RECIPES))
    if unknown:
        raise SystemExit(f"unknown recipes {unknown}; known: {sorted(sr.RECIPES)}")
    peers, skipped = [], {}
    for peer in [p.strip() for p in args.peers.split(",") if p.strip()]:
        why = peer_available(peer)
        if why:
            skipped[peer] = why
            print(f"peer {peer} skipped: {why}", flush=True)
        else:
            peers.append(peer)
    peer_seeds = parse_peer_seeds(args.peer_seeds)
    started = time.time()
    scratch = tempfile.mkdtemp(prefix="jaxscale-speedrun-")
    caches = {"jax": os.path.join(scratch, "xla-cache"),
              "torch_compile": os.path.join(scratch, "inductor-cache"),
              CLI: os.path.join(scratch, "cli-xla-cache")}
    seen = set()
    npz = save_split(os.path.join(scratch, "mnist.npz"), args.split, args.data_dir)
    records = []
    try:
        for recipe in recipes:
            for seed in range(args.seeds):
                for system in ["jax", *peers]:
                    if system != "jax" and seed >= seeds_for(peer_seeds, system, recipe,
                                                             args.seeds):
                        continue
                    if system == CLI:
                        record = spawn_cli(recipe, seed, split=args.split,
                                           cache_dir=caches[CLI], data_dir=args.data_dir,
                                           epochs=args.epochs, timeout_s=args.timeout,
                                           scratch=scratch)
                    else:
                        record = spawn(system, recipe, seed, split=args.split,
                                       cache_dir=caches.get(system),
                                       data_dir=args.data_dir, npz=npz, epochs=args.epochs,
                                       timeout_s=args.timeout, omp_wait=args.torch_omp_wait)
                    if system in caches:
                        record["cache"] = "warm" if (recipe, system) in seen else "cold"
                        seen.add((recipe, system))
                    records.append(record)
                    print(format_records([record]).splitlines()[-1], flush=True)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    rows = summarize(records, recipes)
    meta = bench_run.run_metadata(f"mnist ({args.split} split)", quick=is_quick(args))
    meta.update({"total_seconds": time.time() - started, "peers_skipped": skipped,
                 "recipes": {name: _config_dict(sr.RECIPES[name]) for name in recipes},
                 "torch": _version_of("torch"), "split": args.split,
                 "load_average_after": os.getloadavg()})
    print("\n" + format_records(records) + "\n\n" + format_summary(rows), flush=True)
    suffix = "" if args.split == "test" else "-validation"
    name = f"speedrun{suffix}-{report.hardware_name(meta['backend'], meta['device'])}"
    json_path = report.write_json(args.out / f"{name}.json", meta,
                                  rows + [{"run": r} for r in records])
    chart = report.write_speedrun_chart(json.loads(json_path.read_text()),
                                        args.out / f"{name}.png", source=json_path)
    print(f"\n{meta['total_seconds']:.0f} s; wrote {json_path}"
          + (f" and {chart}" if chart else " (no chart: matplotlib missing)")
          + ("; `make docs-tables` puts it in docs/speedrun.md" if args.out == RESULTS else ""),
          flush=True)
    return {"meta": meta, "rows": rows, "records": records, "json": json_path, "chart": chart}


def _config_dict(config) -> dict:
    import dataclasses
    return dataclasses.asdict(config)


def _version_of(module: str) -> str | None:
    try:
        return __import__(module).__version__
    except ImportError:
        return None


if __name__ == "__main__":
    main()
