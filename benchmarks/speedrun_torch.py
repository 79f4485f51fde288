"""The PyTorch peer of the speedrun: the same recipe in plain PyTorch, data in memory.

Same model (space-to-depth, conv3x3 without bias - BatchNorm - ReLU - 2x2 max pool, flatten,
the optional hidden linear - BatchNorm - ReLU, linear), the same initial distributions
(truncated-normal LeCun kernels, zero biases, BN scale 1 / offset 0), batch, epochs, per-epoch
shuffle with the remainder dropped, SGD with Nesterov momentum and coupled weight decay on
every parameter, the same one-cycle schedule (`SpeedrunConfig.lr_breakpoints`, stepped every
batch), label smoothing and augmentation (whole-pixel shifts by the same rule; rotation /
shift / zoom drawn from the same distributions and composed as jaxscale's, sampled with
`grid_sample`). The whole training set is one uint8 tensor; a batch is an index into it, scaled by 1/255 in the
step, as ours. Eager mode, or `torch.compile` of the model (`compile=True`) where it works.

Framework conventions that differ and are kept: PyTorch's BatchNorm momentum is 1 - ours
(converted), its running variance is the unbiased one (ours: biased; it only changes
evaluation by a factor (B*H*W - 1)/(B*H*W)), and its tensors are NCHW (the flatten order
differs; the initial weights are drawn from the same distribution, not copied).

torch is not a dependency of jaxscale: `make speedrun` installs the CPU wheel on demand.
"""

from __future__ import annotations

import math
import time

import numpy as np

from benchmarks.speedrun_config import RECIPES, SpeedrunConfig

# Flax's lecun_normal: a normal truncated at 2 standard deviations, its std corrected so the
# variance is 1 / fan_in.
TRUNCATED_STD_CORRECTION = 0.87962566103423978


def build_model(config: SpeedrunConfig, image_shape=(1, 28, 28), num_classes: int = 10):
    """The recipe's network as a torch.nn.Sequential taking float32[N, C, H, W]."""
    import torch
    from torch import nn

    layers = []
    channels, height, width = image_shape
    if config.space_to_depth > 1:
        layers.append(nn.PixelUnshuffle(config.space_to_depth))
        channels *= config.space_to_depth ** 2
        height //= config.space_to_depth
        width //= config.space_to_depth
    k = config.kernel_size
    for features, pool in zip(config.widths, config.pools):
        layers += [nn.Conv2d(channels, features, k, bias=False),
                   nn.BatchNorm2d(features, eps=config.bn_epsilon,
                                  momentum=1.0 - config.bn_momentum),
                   nn.ReLU()]
        channels, height, width = features, height - k + 1, width - k + 1
        if pool:
            layers.append(nn.MaxPool2d(2))
            height, width = height // 2, width // 2
    layers.append(nn.Flatten())
    features = channels * height * width
    if config.hidden:
        layers += [nn.Linear(features, config.hidden, bias=False),
                   nn.BatchNorm1d(config.hidden, eps=config.bn_epsilon,
                                  momentum=1.0 - config.bn_momentum),
                   nn.ReLU()]
        features = config.hidden
    layers.append(nn.Linear(features, num_classes))
    model = nn.Sequential(*layers)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                fan_in = math.prod(module.weight.shape[1:])
                std = math.sqrt(1.0 / fan_in) / TRUNCATED_STD_CORRECTION
                nn.init.trunc_normal_(module.weight, std=std, a=-2 * std, b=2 * std)
                if module.bias is not None:
                    module.bias.zero_()
    return model


def random_shift(images, shift: int, generator):
    """Translates each image of float[N, C, H, W] by its own random whole-pixel offset in
    [-shift, shift]^2 with zero fill (the same rule as the JAX recipe's `random_shift`)."""
    import torch

    if shift == 0:
        return images
    n, _, h, w = images.shape
    padded = torch.nn.functional.pad(images, (shift, shift, shift, shift))
    offsets = torch.randint(0, 2 * shift + 1, (n, 2), generator=generator)
    rows = (offsets[:, 0, None] + torch.arange(h)[None, :])[:, None, :, None]
    cols = (offsets[:, 1, None] + torch.arange(w)[None, :])[:, None, None, :]
    batch = torch.arange(n)[:, None, None, None]
    channel = torch.arange(images.shape[1])[None, :, None, None]
    return padded[batch, channel, rows, cols]


SUPPORTED_AUGMENT = ("rotation_range", "zoom_range", "width_shift_range", "height_shift_range")


def _shift_pixels(spec, n: int, size: int, generator):
    """ImageDataGenerator's shift sampling for one axis, in pixels (as jaxscale's)."""
    import torch

    if not spec:
        return torch.zeros(n)
    if isinstance(spec, int):  # a whole number of pixels in (-spec, spec)
        picked = torch.randint(0, spec, (n,), generator=generator).float()
        sign = torch.where(torch.rand(n, generator=generator) < 0.5, 1.0, -1.0)
        return picked * sign
    shift = (torch.rand(n, generator=generator) * 2 - 1) * spec
    return shift * size if spec < 1 else shift


def affine(images, theta, tx, ty, zx, zy):
    """Resamples float[N, C, H, W] by per-image rotation theta (degrees), shift (tx, ty)
    (pixels) and zoom (zx, zy), all float[N], composed as jaxscale.augmentation (Keras'
    ImageDataGenerator: rotation @ shift @ zoom about the centre, mapping each output pixel to
    the input position it reads), bilinear, edges repeated (fill_mode "nearest")."""
    import torch

    _, _, h, w = images.shape
    radians = torch.deg2rad(theta)
    cos, sin = torch.cos(radians)[:, None, None], torch.sin(radians)[:, None, None]
    rows = torch.arange(h, dtype=torch.float32) - (h - 1) / 2
    cols = torch.arange(w, dtype=torch.float32) - (w - 1) / 2
    y, x = torch.meshgrid(rows, cols, indexing="ij")  # (x, y) = (column, row), centred
    x, y = x[None] * zx[:, None, None] + tx[:, None, None], y[None] * zy[:, None, None] \
        + ty[:, None, None]
    source_x, source_y = cos * x - sin * y, sin * x + cos * y
    grid = torch.stack([source_x / ((w - 1) / 2), source_y / ((h - 1) / 2)], dim=-1)
    return torch.nn.functional.grid_sample(images, grid, mode="bilinear",
                                           padding_mode="border", align_corners=True)


def random_affine(images, augment: dict, generator):
    """`affine` with per-image parameters drawn as jaxscale.augmentation draws them from
    ImageDataGenerator keywords (rotation_range, width/height_shift_range, zoom_range)."""
    import torch

    unknown = sorted(set(augment) - set(SUPPORTED_AUGMENT))
    if unknown:
        raise ValueError(f"the PyTorch peer cannot apply augment keywords {unknown}")
    n, _, h, w = images.shape
    rotation = augment.get("rotation_range", 0.0)
    theta = (torch.rand(n, generator=generator) * 2 - 1) * rotation
    tx = _shift_pixels(augment.get("width_shift_range", 0.0), n, w, generator)
    ty = _shift_pixels(augment.get("height_shift_range", 0.0), n, h, generator)
    zoom = augment.get("zoom_range", 0.0)
    low, high = (1 - zoom, 1 + zoom) if isinstance(zoom, (int, float)) else zoom
    zx = low + (high - low) * torch.rand(n, generator=generator)
    zy = low + (high - low) * torch.rand(n, generator=generator)
    return affine(images, theta, tx, ty, zx, zy)


def run(recipe: str, seed: int, *, split: str = "test", t0: float, data_dir=None,
        npz: str | None = None, compile: bool = False, epochs: int | None = None) -> dict:
    """Trains one recipe with one seed in PyTorch; returns a record like `run_jax`'s."""
    import dataclasses

    import torch

    from benchmarks.speedrun_data import load_split

    phases = {"imports": time.time() - t0}
    config = RECIPES[recipe]
    if epochs is not None:
        config = dataclasses.replace(config, epochs=epochs)
    torch.manual_seed(seed)
    generator = torch.Generator().manual_seed(seed)
    train_x, train_y, eval_x, eval_y = load_split(split, data_dir, npz)
    images = torch.from_numpy(np.ascontiguousarray(train_x.transpose(0, 3, 1, 2)))
    labels = torch.from_numpy(train_y.astype(np.int64))
    test_images = torch.from_numpy(np.ascontiguousarray(eval_x.transpose(0, 3, 1, 2)))
    test_labels = torch.from_numpy(eval_y.astype(np.int64))
    phases["data"] = time.time() - t0
    n = len(labels)
    per_epoch = config.steps_per_epoch(n)
    total = config.total_steps(n)
    model = build_model(config, tuple(images.shape[1:]))
    optimizer = torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                                nesterov=True, weight_decay=config.weight_decay)
    xs, ys = config.lr_breakpoints(total)
    rates = np.interp(np.arange(total), xs, ys)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=config.label_smoothing)
    forward = torch.compile(model) if compile else model

    def step(rows):
        x = images[rows].float().div_(255.0)
        x = random_shift(x, config.shift, generator)
        if config.augment:
            x = random_affine(x, dict(config.augment), generator)
        loss = loss_fn(forward(x), labels[rows])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    def evaluate():
        model.eval()
        correct = 0
        with torch.no_grad():
            for start in range(0, len(test_labels), config.eval_batch_size):
                x = test_images[start:start + config.eval_batch_size].float().div_(255.0)
                correct += int((forward(x).argmax(1)
                                == test_labels[start:start + config.eval_batch_size]).sum())
        model.train()
        return correct

    compile_s = 0.0
    if compile:  # the first calls compile (train and eval graphs); time them apart, untrained
        start = time.time()
        saved = ({k: v.clone() for k, v in model.state_dict().items()},
                 [dict(g) for g in optimizer.param_groups])
        for g in optimizer.param_groups:
            g["lr"] = 0.0
        step(torch.arange(config.batch_size))
        evaluate()
        model.load_state_dict(saved[0])
        optimizer.state.clear()
        for g, old in zip(optimizer.param_groups, saved[1]):
            g["lr"] = old["lr"]
        compile_s = time.time() - start
    phases["compiled"] = time.time() - t0

    curve = []
    train_s = eval_s = 0.0
    step_index = 0
    for epoch in range(config.epochs):
        epoch_start = time.time()
        order = torch.randperm(n, generator=generator)[: per_epoch * config.batch_size]
        for rows in order.view(per_epoch, config.batch_size):
            for g in optimizer.param_groups:
                g["lr"] = float(rates[step_index])
            step(rows)
            step_index += 1
        eval_start = time.time()
        correct = evaluate()
        now = time.time()
        train_s += eval_start - epoch_start
        eval_s += now - eval_start
        curve.append({"epoch": epoch + 1, "seconds": now - t0,
                      "accuracy": correct / len(test_labels)})
    return {"system": "torch_compile" if compile else "torch", "recipe": recipe, "seed": seed,
            "split": split, "accuracy": curve[-1]["accuracy"],
            "time_to_end_s": curve[-1]["seconds"], "compile_s": compile_s, "phases": phases,
            "train_s": train_s, "eval_s": eval_s,
            "images_per_s": total * config.batch_size / train_s, "curve": curve,
            "threads": torch.get_num_threads(), "versions": {"torch": torch.__version__}}
