"""Benchmarks for jaxscale: ``python -m benchmarks.run [--quick] [--out DIR]``.

Each ``bench_*`` module measures one thing (statistics, scaling, training,
augmentation, pipeline) and returns rows (dicts); ``benchmarks.report`` prints
them, writes JSON and a PNG chart.
"""
