"""Neural-ODE classifier and its discretised counterpart, a residual network.

    x --stem--> y(0) --(augment)--> dy/dt = f(t, y) on [0, t1] --pool--> affine --> logits

The softmax is applied by the cross-entropy loss (and by `predict_proba`), never inside the
model. Every module computes in float32 (the package switches jax to float64 at import; the
classifier does not need it and is several times faster without it).
"""

from __future__ import annotations

import abc
import math

import diffrax
import equinox as eqx
import jax
import jax.numpy as jnp
import jax.random as jr
from jaxtyping import Array, Float

from ._config import ClassifierConfig
from ._types import Key, Logits, Sample, Steps, Time

DTYPE = jnp.float32


def _with_time(t: Time, y: Sample) -> Sample:
    """Append time as one extra channel (images) or feature (vectors)."""
    tt = jnp.full((1, *y.shape[1:]), t, dtype=y.dtype)
    return jnp.concatenate([tt, y], axis=0)


class Conv3x3(eqx.Module):
    """A 3x3 convolution with zero "same" padding, written as nine shifted slices and one matmul.

    Same maths as `eqx.nn.Conv2d(c_in, c_out, 3, padding=1)`. The reason it exists: XLA on CPU
    runs a convolution inside a while loop (every adaptive ODE solve is one) some 10-15x slower
    than straight-line code, whereas matmuls are unaffected; measured on this machine.
    """

    weight: Float[Array, "c_out c_in 3 3"]
    bias: Float[Array, " c_out"]

    def __init__(self, in_channels: int, out_channels: int, *, key: Key):
        kw, kb = jr.split(key)
        lim = 1 / math.sqrt(in_channels * 9)
        shape = (out_channels, in_channels, 3, 3)
        self.weight = jr.uniform(kw, shape, DTYPE, -lim, lim)
        self.bias = jr.uniform(kb, (out_channels,), DTYPE, -lim, lim)

    def __call__(self, x: Float[Array, "c_in h w"]) -> Float[Array, "c_out h w"]:
        c, h, w = x.shape
        p = jnp.pad(x, ((0, 0), (1, 1), (1, 1)))
        patches = jnp.stack([p[:, i : i + h, j : j + w] for i in range(3) for j in range(3)], 1)
        kernel = self.weight.reshape(self.weight.shape[0], c, 9)
        return jnp.einsum("ocs,cshw->ohw", kernel, patches) + self.bias[:, None, None]


def _shrink(layer: eqx.Module, scale: float) -> eqx.Module:
    """Scale a layer's weight: a small last layer starts the flow near the identity map."""
    return eqx.tree_at(lambda m: m.weight, layer, layer.weight * scale)


# ---------------------------------------------------------------------------------------------
# Vector fields (ODE right-hand sides; also the residual blocks of the ResNet)


class AbstractField(eqx.Module):
    """`f(t, y)`: maps a state to a state of the same shape."""

    @abc.abstractmethod
    def __call__(self, t: Time, y: Sample, args: object = None) -> Sample:
        raise NotImplementedError


class ConvField(AbstractField):
    """Two 3x3 convolutions ([`Conv3x3`][]) with a tanh between; time is an extra channel."""

    conv1: Conv3x3
    conv2: Conv3x3
    use_time: bool = eqx.field(static=True)

    def __init__(self, channels: int, hidden: int, *, use_time: bool = True, key: Key):
        k1, k2 = jr.split(key)
        extra = 1 if use_time else 0
        self.conv1 = Conv3x3(channels + extra, hidden, key=k1)
        self.conv2 = _shrink(Conv3x3(hidden + extra, channels, key=k2), 0.1)
        self.use_time = use_time

    def __call__(self, t: Time, y: Sample, args: object = None) -> Sample:
        t = jnp.asarray(t, dtype=y.dtype)
        h = self.conv1(_with_time(t, y) if self.use_time else y)
        h = jnp.tanh(h)
        return self.conv2(_with_time(t, h) if self.use_time else h)


class MLPField(AbstractField):
    """Two affine maps with a tanh between, for flat feature vectors."""

    linear1: eqx.nn.Linear
    linear2: eqx.nn.Linear
    use_time: bool = eqx.field(static=True)

    def __init__(self, size: int, hidden: int, *, use_time: bool = True, key: Key):
        k1, k2 = jr.split(key)
        extra = 1 if use_time else 0
        self.linear1 = eqx.nn.Linear(size + extra, hidden, dtype=DTYPE, key=k1)
        self.linear2 = _shrink(eqx.nn.Linear(hidden + extra, size, dtype=DTYPE, key=k2), 0.1)
        self.use_time = use_time

    def __call__(self, t: Time, y: Sample, args: object = None) -> Sample:
        t = jnp.asarray(t, dtype=y.dtype)
        h = jnp.tanh(self.linear1(_with_time(t, y) if self.use_time else y))
        return self.linear2(_with_time(t, h) if self.use_time else h)


# ---------------------------------------------------------------------------------------------
# Stems and heads


class AbstractStem(eqx.Module):
    """Maps an input sample to the initial state of the flow."""

    @abc.abstractmethod
    def __call__(self, x: Sample) -> Sample:
        raise NotImplementedError


class IdentityStem(AbstractStem):
    """No stem: the flow starts at the (standardised) input itself."""

    def __call__(self, x: Sample) -> Sample:
        return x


class ConvStem(AbstractStem):
    """A 3x3 convolution, then stride-2 convolutions until the image side is at most `grid`;
    each followed by group normalisation and a ReLU.

    Group normalisation (per image, over groups of channels) takes each image's own contrast
    and colour offset out of the features, so training does not first have to learn to ignore
    them: without it, on shapes of random colours both the ODE and the ResNet sat at chance
    for 10+ epochs.
    """

    layers: tuple[eqx.nn.Conv2d, ...]
    norms: tuple[eqx.nn.GroupNorm, ...]

    def __init__(self, in_channels: int, width: int, size: int, grid: int = 8, *, key: Key):
        n_down = 0
        while size > grid:
            size = math.ceil(size / 2)
            n_down += 1
        keys = jr.split(key, n_down + 1)
        layers = [eqx.nn.Conv2d(in_channels, width, 3, padding=1, dtype=DTYPE, key=keys[0])]
        for k in keys[1:]:
            layers.append(eqx.nn.Conv2d(width, width, 3, stride=2, padding=1, dtype=DTYPE, key=k))
        self.layers = tuple(layers)
        groups = math.gcd(width, max(1, width // 4))  # 4 or more channels per group
        self.norms = tuple(eqx.nn.GroupNorm(groups, width, dtype=DTYPE) for _ in layers)

    def __call__(self, x: Sample) -> Sample:
        for layer, norm in zip(self.layers, self.norms):
            x = jax.nn.relu(norm(layer(x)))
        return x


class LinearStem(AbstractStem):
    """An affine map and a tanh, for flat feature vectors."""

    linear: eqx.nn.Linear

    def __init__(self, in_size: int, width: int, *, key: Key):
        self.linear = eqx.nn.Linear(in_size, width, dtype=DTYPE, key=key)

    def __call__(self, x: Sample) -> Sample:
        return jnp.tanh(self.linear(x))


def _adaptive_avg_pool(y: Sample, out: int) -> Sample:
    """Average over an `out x out` grid of (nearly) equal regions, like PyTorch's adaptive pool."""
    _, h, w = y.shape
    rows = []
    for i in range(out):
        r0, r1 = (i * h) // out, -((-(i + 1) * h) // out)
        cols = []
        for j in range(out):
            c0, c1 = (j * w) // out, -((-(j + 1) * w) // out)
            cols.append(y[:, r0:r1, c0:c1].mean(axis=(1, 2)))
        rows.append(jnp.stack(cols, axis=-1))
    return jnp.stack(rows, axis=-2)


class Head(eqx.Module):
    """Pooling (images only) and an affine map to one logit per class."""

    linear: eqx.nn.Linear
    pool: int = eqx.field(static=True)
    images: bool = eqx.field(static=True)

    def __init__(self, state_shape: tuple[int, ...], n_classes: int, pool: int, *, key: Key):
        self.images = len(state_shape) == 3
        if self.images:
            pool = max(1, min(pool, state_shape[1], state_shape[2]))
            features = state_shape[0] * pool * pool
        else:
            features = state_shape[0]
        self.pool = pool
        self.linear = eqx.nn.Linear(features, n_classes, dtype=DTYPE, key=key)

    def __call__(self, y: Sample) -> Logits:
        if self.images:
            y = _adaptive_avg_pool(y, self.pool)
        return self.linear(y.reshape(-1))


# ---------------------------------------------------------------------------------------------
# The ODE block and the two classifiers


class ODEBlock(eqx.Module):
    """Solve `dy/dt = field(t, y)` on `[0, t1]` with an adaptive solver; return `y(t1)`.

    Failures do not raise (the solve runs batched under `vmap`): `ok` is False and the caller
    decides. `steps` counts accepted and rejected steps. The first step tries the whole
    interval (`dt0 = t1`) and the controller shrinks it as the error estimate demands, so a
    flow that barely moves costs one step (the default initial-step heuristic took three).
    """

    field: AbstractField
    solver: diffrax.AbstractAdaptiveSolver
    t1: float = eqx.field(static=True)
    rtol: float = eqx.field(static=True)
    atol: float = eqx.field(static=True)
    max_steps: int = eqx.field(static=True)

    def __call__(self, y0: Sample) -> tuple[Sample, Steps, jax.Array]:
        sol = diffrax.diffeqsolve(
            diffrax.ODETerm(self.field),
            self.solver,
            t0=jnp.zeros((), DTYPE),
            t1=jnp.asarray(self.t1, DTYPE),
            dt0=jnp.asarray(self.t1, DTYPE),
            y0=y0,
            stepsize_controller=diffrax.PIDController(rtol=self.rtol, atol=self.atol),
            saveat=diffrax.SaveAt(t1=True),
            max_steps=self.max_steps,
            adjoint=diffrax.RecursiveCheckpointAdjoint(),
            throw=False,
        )
        ok = sol.result == diffrax.RESULTS.successful
        assert sol.ys is not None
        return sol.ys[-1], sol.stats["num_steps"], ok


class AbstractClassifier(eqx.Module):
    """`model(x) -> (logits, steps, ok)` for one sample; `vmap` it over a batch."""

    stem: eqx.AbstractVar[AbstractStem]
    head: eqx.AbstractVar[Head]

    @abc.abstractmethod
    def __call__(self, x: Sample) -> tuple[Logits, Steps, jax.Array]:
        raise NotImplementedError


def _augment(y: jax.Array, channels: int) -> jax.Array:
    """Append `channels` zero channels (augmented neural ODEs)."""
    if not channels:
        return y
    return jnp.concatenate([y, jnp.zeros((channels, *y.shape[1:]), y.dtype)], axis=0)


class ODEClassifier(AbstractClassifier):
    """Stem, optional zero augmentation channels, one neural ODE block, pooling and affine."""

    stem: AbstractStem
    block: ODEBlock
    head: Head
    augment: int = eqx.field(static=True)

    def __call__(self, x: Sample) -> tuple[Logits, Steps, jax.Array]:
        y = _augment(self.stem(x.astype(DTYPE)), self.augment)
        y, steps, ok = self.block(y)
        return self.head(y), steps, ok


class ResNetClassifier(AbstractClassifier):
    """The discretised counterpart: the same stem and head, `y <- y + f_j(y)` for each block."""

    stem: AbstractStem
    blocks: tuple[AbstractField, ...]
    head: Head
    augment: int = eqx.field(static=True)

    def __call__(self, x: Sample) -> tuple[Logits, Steps, jax.Array]:
        y = _augment(self.stem(x.astype(DTYPE)), self.augment)
        for block in self.blocks:
            y = y + block(jnp.zeros((), DTYPE), y)
        return self.head(y), jnp.asarray(len(self.blocks)), jnp.asarray(True)


_SOLVERS = {
    "tsit5": diffrax.Tsit5,
    "dopri5": diffrax.Dopri5,
    "bosh3": diffrax.Bosh3,
    "heun": diffrax.Heun,
}


def make_classifier(
    config: ClassifierConfig, in_shape: tuple[int, ...], n_classes: int, *, key: Key
) -> AbstractClassifier:
    """Build the classifier that `config` describes for samples of shape `in_shape`."""
    k_stem, k_field, k_head = jr.split(key, 3)
    images = len(in_shape) == 3
    if images:
        c, h, w = in_shape
        if config.stem:
            stem: AbstractStem = ConvStem(c, config.width, max(h, w), config.grid, key=k_stem)
        else:
            stem = IdentityStem()
        state_shape = jax.eval_shape(stem, jax.ShapeDtypeStruct(in_shape, DTYPE)).shape
        state_shape = (state_shape[0] + config.augment, *state_shape[1:])

        def field(k: Key, use_time: bool) -> AbstractField:
            return ConvField(state_shape[0], config.hidden, use_time=use_time, key=k)

    else:
        (d,) = in_shape
        stem = LinearStem(d, config.width, key=k_stem) if config.stem else IdentityStem()
        state_shape = ((config.width if config.stem else d) + config.augment,)

        def field(k: Key, use_time: bool) -> AbstractField:
            return MLPField(state_shape[0], config.hidden, use_time=use_time, key=k)

    head = Head(state_shape, n_classes, config.pool, key=k_head)
    if config.model == "ode":
        block = ODEBlock(
            field=field(k_field, True),
            solver=_SOLVERS[config.solver](),
            t1=config.t1,
            rtol=config.rtol,
            atol=config.atol,
            max_steps=config.max_steps,
        )
        return ODEClassifier(stem=stem, block=block, head=head, augment=config.augment)
    blocks = tuple(field(k, False) for k in jr.split(k_field, config.depth))
    return ResNetClassifier(stem=stem, blocks=blocks, head=head, augment=config.augment)


def count_params(model: eqx.Module) -> int:
    """Number of trainable scalars."""
    leaves = jax.tree_util.tree_leaves(eqx.filter(model, eqx.is_inexact_array))
    return int(sum(leaf.size for leaf in leaves))
