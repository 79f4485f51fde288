"""Float64 NumPy references of what jaxscale computes, written from the formulas."""

import numpy as np


def to_last(x, data_format):
    return x if data_format == "channels_last" else np.transpose(x, (0, 2, 3, 1))


def to_format(x, data_format):
    return x if data_format == "channels_last" else np.transpose(x, (0, 3, 1, 2))


def reference_stats(images, scope="channel", data_format="channels_last"):
    """(mean, population variance) in float64, statistic shape [C], [H, W, C] or []."""
    x = to_last(np.asarray(images, np.float64), data_format)
    axes = {"channel": (0, 1, 2), "pixel": (0,), "global": (0, 1, 2, 3)}[scope]
    return x.mean(axis=axes), x.var(axis=axes)


def reference_scale(images, config, fit_images=None):
    """Applies a ScalingConfig in float64, fitting featurewise numbers on `fit_images`."""

    def before_featurewise(x):
        x = to_last(np.asarray(x, np.float64), config.data_format)
        if config.preprocessing_function is not None:
            x = np.asarray(config.preprocessing_function(to_format(x, config.data_format)),
                           np.float64)
            x = to_last(x, config.data_format)
        if config.rescale:
            x = x * config.rescale
        if config.samplewise_center:
            x = x - x.mean(axis=(1, 2, 3), keepdims=True)
        if config.samplewise_std_normalization:
            x = x / (x.std(axis=(1, 2, 3), keepdims=True) + 1e-6)
        return x

    x = before_featurewise(images)
    if config.needs_fit:
        fit_x = before_featurewise(fit_images)
        axes = {"channel": (0, 1, 2), "pixel": (0,), "global": (0, 1, 2, 3)}[
            config.statistics_scope]
        mean = fit_x.mean(axis=axes)
        std = fit_x.std(axis=axes)
        if config.featurewise_center:
            x = x - mean
            fit_x = fit_x - mean
        if config.featurewise_std_normalization:
            x = x / (std + 1e-6)
        if config.zca_whitening:
            n = fit_x.shape[0]
            u, s, _ = np.linalg.svd(fit_x.reshape(n, -1).T, full_matrices=False)
            matrix = (u * (np.sqrt(n) / (s + config.zca_epsilon))) @ u.T
            x = (x.reshape(x.shape[0], -1) @ matrix).reshape(x.shape)
    return to_format(x, config.data_format)
