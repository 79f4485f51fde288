"""How big each `make bench` section runs: the full run fits in 10 minutes on 2 CPU cores,
`--quick` in 2."""


def settings(quick: bool) -> dict:
    """Sizes per section: the full run fits in 10 minutes on 2 CPU cores, quick in 2."""
    if quick:
        return {"stats": {"repeats": 3, "modes": ("standardize",)},
                "scaling": {"batch_size": 2048, "buffers": 4, "repeats": 3,
                            "keras_batches": 2, "roofline_repeats": 10},
                "train": {"steps": 5, "warmup": 1, "modes": ("none", "standardize")},
                "augment": {"buffers": 2, "repeats": 3, "flow_batches": 3, "keras_batches": 2,
                            "fused_batch_sizes": (64,), "fused_rounds": 3},
                "pipeline": {"repeats": 2},
                "streaming": {"repeats": 2, "quick": True, "train_examples": 2560},
                "flow": {"repeats": 3, "batches": 64, "keras_batches": 2, "files": 2000,
                         "file_batches": 16, "keras_file_batches": 2}}
    return {"stats": {"repeats": 5},
            "scaling": {"batch_size": 4096, "buffers": 8, "repeats": 5, "keras_batches": 4},
            "train": {"steps": 20, "warmup": 3},
            "augment": {"buffers": 8, "repeats": 5, "flow_batches": 12, "keras_batches": 6,
                        "fused_batch_sizes": (64, 512), "fused_rounds": 10},
            "pipeline": {"repeats": 5},
            "streaming": {"repeats": 3, "train_examples": 10240},
            "flow": {"repeats": 5, "batches": 320, "keras_batches": 8, "files": 10000,
                     "file_batches": 40, "keras_file_batches": 8}}
