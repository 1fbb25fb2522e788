"""The embedded default data set "shapes": procedurally generated, CIFAR-shaped images of ten shapes.

Every image is ``3 x 32 x 32`` RGB (uint8 when generated, like CIFAR) and shows one object whose
*shape* is the class (:data:`CLASS_NAMES`: disc, square, triangle, plus, ring, frame (hollow square),
five-pointed star, crescent, arrow, bars ("=")) on a background of a random colour.  Object,
background, distractor and occluder colours are random and carry no information about the class;
classes are exactly balanced.  How hard each image is varies from image to image and is recorded per
image (:data:`PARAM_NAMES`, natural units):

``scale``
    object radius in pixels (centre to the farthest point of the shape, about), 13 (easy) .. 4.5
    (hard), spread log-linearly in the level.
``contrast``
    Euclidean RGB distance between object colour and background colour, pixel values in ``[0, 1]``;
    0.9 (easy) .. 0.25 (hard), spread log-linearly in the level.
``noise``
    standard deviation of the i.i.d. Gaussian noise added to every pixel and channel, in ``[0, 1]``
    pixel units (before clipping and quantisation); 0 .. 0.12.
``clutter``
    number of distractor items (thin strokes and elongated blobs, never a complete class shape;
    their colour contrast is 0.5 .. 1.2 times the object's) drawn on the background, 0 .. 6; the
    background also carries a sinusoidal texture of amplitude ``0.0125 * clutter``.
``occlusion``
    fraction of the object's (anti-aliased) area covered by an opaque, striped rectangular patch,
    0 .. about 0.3 (measured after rendering).
``rotation``
    rotation of the object from its canonical pose in degrees, -45 .. 45 (a nuisance with little
    effect on accuracy, hence its small weight below).
``offset``
    distance of the object centre from the image centre in pixels, 0 .. ``max_offset(scale)``
    where ``max_offset(s) = 15 - 0.9 s`` keeps the object inside the frame.

Each parameter ``k`` is driven by a *level* ``t_k = (0.5 z + 0.5 u_k) ** 1.8`` with a per-image latent
``z ~ Beta(2, 2)`` shared by all parameters (images that are bad tend to be bad in several ways) and
independent ``u_k ~ U(0, 1)``; the power skews levels towards easy while keeping a hard tail.  Noise,
clutter and occlusion have a dead zone (levels below 0.2, 0.2, 0.25 give exactly 0), so a share of the
images is clean.  The combined ``difficulty`` is computed from the *stored* parameters alone
(:func:`shapes_difficulty`)::

    difficulty = 0.20 * log(13 / scale) / log(13 / 4.5)
               + 0.20 * log(0.9 / contrast) / log(0.9 / 0.25)
               + 0.20 * noise / 0.12
               + 0.15 * clutter / 6
               + 0.15 * occlusion / 0.3
               + 0.05 * |rotation| / 45
               + 0.05 * offset / max_offset(scale)

each term clipped to ``[0, 1]``, so ``difficulty`` lies in ``[0, 1]`` (in practice about 0 .. 0.8,
median about 0.2).

Rendering is vectorised numpy in float64 (so platform rounding differences practically never change
a quantised uint8 value); shapes come from signed distance functions with analytic anti-aliasing
(pixel coverage ``clip(0.5 - d, 0, 1)``, ``d`` the signed distance in pixels), so small shapes remain
shapes.  Layers, back to front: background colour + texture, distractors, object, occluder, noise.
:func:`load_shapes` caches generated arrays as ``.npz`` under ``cache_dir("data")``.
"""

from __future__ import annotations

import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..cache import cache_dir
from ..fileio import CorruptFileError, move_aside, save_npz

#: Bump whenever the generated images or parameters change; part of the cache key.
GENERATOR_VERSION = 2

IMAGE_SIZE = 32
NUM_CLASSES = 10
CLASS_NAMES: tuple[str, ...] = (
    "disc",
    "square",
    "triangle",
    "plus",
    "ring",
    "frame",
    "star",
    "crescent",
    "arrow",
    "bars",
)
DEFAULT_N_TRAIN = 10_000
DEFAULT_N_TEST = 2_000
DEFAULT_N_VAL = 10_000
#: Seed streams: the train and test splits come from independent streams of the same seed.
TRAIN_STREAM = 0
TEST_STREAM = 1
#: held-out images for training routers on data the backbone never saw (the ``"val"`` split)
VAL_STREAM = 2

#: Names of the per-image parameters in :attr:`ShapesArrays.params` (natural units, see module doc).
PARAM_NAMES: tuple[str, ...] = (
    "scale",
    "contrast",
    "noise",
    "clutter",
    "occlusion",
    "rotation",
    "offset",
)

SCALE_EASY, SCALE_HARD = 13.0, 4.5  # object radius, pixels
CONTRAST_EASY, CONTRAST_HARD = 0.9, 0.25  # RGB distance, [0, 1] pixel units
NOISE_MAX = 0.12  # Gaussian sigma, [0, 1] pixel units
CLUTTER_MAX = 6  # distractor count
OCCLUSION_MAX = 0.3  # covered fraction of the object
ROTATION_MAX = 45.0  # degrees
LEVEL_POWER = 1.8  # skews difficulty levels towards easy while keeping a hard tail
TEXTURE_PER_CLUTTER = 0.0125  # background texture amplitude per distractor

#: Weights of the per-parameter difficulty terms in :func:`shapes_difficulty` (they sum to 1).
DIFFICULTY_WEIGHTS: dict[str, float] = {
    "scale": 0.20,
    "contrast": 0.20,
    "noise": 0.20,
    "clutter": 0.15,
    "occlusion": 0.15,
    "rotation": 0.05,
    "offset": 0.05,
}

_CHUNK = 512  # images rendered at once (fixed: part of the determinism contract)


@dataclass(frozen=True)
class ShapesArrays:
    """Raw output of :func:`make_shapes`.

    Attributes:
        images: uint8 ``[N, 3, 32, 32]`` RGB, 0..255.
        labels: int64 ``[N]`` in ``[0, 10)``; see :data:`CLASS_NAMES`.
        difficulty: float32 ``[N]`` in ``[0, 1]`` (:func:`shapes_difficulty` of ``params``).
        params: name -> float32 ``[N]`` for every name in :data:`PARAM_NAMES`, natural units.
    """

    images: np.ndarray
    labels: np.ndarray
    difficulty: np.ndarray
    params: dict[str, np.ndarray]

    def __len__(self) -> int:
        return int(self.labels.shape[0])


def max_offset(scale: np.ndarray | float) -> np.ndarray:
    """Largest allowed distance (pixels) of the object centre from the image centre for ``scale``."""
    return np.maximum(IMAGE_SIZE / 2 - 1.0 - 0.9 * np.asarray(scale, dtype=np.float64), 0.5)


def shapes_difficulty(params: dict[str, np.ndarray]) -> np.ndarray:
    """Combined difficulty in ``[0, 1]`` (float32 ``[N]``) from the natural-unit parameters.

    The weighted mean of each parameter's normalised difficulty-direction value; the formula is
    given in the module docstring and the weights in :data:`DIFFICULTY_WEIGHTS`.
    """
    p = {k: np.asarray(params[k], dtype=np.float64) for k in PARAM_NAMES}
    terms = {
        "scale": np.log(SCALE_EASY / p["scale"]) / np.log(SCALE_EASY / SCALE_HARD),
        "contrast": np.log(CONTRAST_EASY / p["contrast"]) / np.log(CONTRAST_EASY / CONTRAST_HARD),
        "noise": p["noise"] / NOISE_MAX,
        "clutter": p["clutter"] / CLUTTER_MAX,
        "occlusion": p["occlusion"] / OCCLUSION_MAX,
        "rotation": np.abs(p["rotation"]) / ROTATION_MAX,
        "offset": p["offset"] / max_offset(p["scale"]),
    }
    total = sum(DIFFICULTY_WEIGHTS[k] * np.clip(terms[k], 0.0, 1.0) for k in PARAM_NAMES)
    return np.asarray(np.clip(total, 0.0, 1.0), dtype=np.float32)


# --------------------------------------------------------------------------- signed distances
# All unit shapes are centred at the origin with circumradius about 1; y points down (image rows).


def _sd_box(x: np.ndarray, y: np.ndarray, bx: float, by: float) -> np.ndarray:
    qx = np.abs(x) - bx
    qy = np.abs(y) - by
    outside = np.sqrt(np.maximum(qx, 0.0) ** 2 + np.maximum(qy, 0.0) ** 2)
    return outside + np.minimum(np.maximum(qx, qy), 0.0)


def _sd_polygon(x: np.ndarray, y: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Exact signed distance to a simple polygon (vertices ``[K, 2]``), negative inside."""
    vx, vy = verts[:, 0], verts[:, 1]
    d = (x - vx[0]) ** 2 + (y - vy[0]) ** 2
    inside = np.zeros(x.shape, dtype=bool)
    k = len(verts)
    j = k - 1
    for i in range(k):
        ex, ey = vx[j] - vx[i], vy[j] - vy[i]
        wx, wy = x - vx[i], y - vy[i]
        t = np.clip((wx * ex + wy * ey) / (ex * ex + ey * ey), 0.0, 1.0)
        bx, by = wx - ex * t, wy - ey * t
        np.minimum(d, bx * bx + by * by, out=d)
        c1 = y >= vy[i]
        c2 = y < vy[j]
        c3 = ex * wy > ey * wx
        inside ^= (c1 & c2 & c3) | (~c1 & ~c2 & ~c3)
        j = i
    dist = np.sqrt(d)
    return np.where(inside, -dist, dist)


def _star_vertices(points: int = 5, outer: float = 1.0, inner: float = 0.45) -> np.ndarray:
    ang = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    rad = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return np.stack([rad * np.cos(ang), rad * np.sin(ang)], axis=1)


_TRIANGLE = np.array([[0.0, -1.0], [0.8660254037844386, 0.5], [-0.8660254037844386, 0.5]])
_STAR = _star_vertices()
_ARROW = np.array(
    [
        [-0.95, -0.22],
        [0.12, -0.22],
        [0.12, -0.62],
        [0.95, 0.0],
        [0.12, 0.62],
        [0.12, 0.22],
        [-0.95, 0.22],
    ]
)


def _unit_sdf(cls: int, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Signed distance (unit coordinates) to the class-``cls`` shape."""
    if cls == 0:  # disc
        return np.sqrt(x * x + y * y) - 0.92
    if cls == 1:  # square
        return _sd_box(x, y, 0.68, 0.68)
    if cls == 2:  # triangle (apex up)
        return _sd_polygon(x, y, _TRIANGLE)
    if cls == 3:  # plus
        return np.minimum(_sd_box(x, y, 0.95, 0.28), _sd_box(x, y, 0.28, 0.95))
    if cls == 4:  # ring
        return np.abs(np.sqrt(x * x + y * y) - 0.70) - 0.24
    if cls == 5:  # frame (hollow square)
        return np.abs(_sd_box(x, y, 0.58, 0.58)) - 0.20
    if cls == 6:  # five-pointed star
        return _sd_polygon(x, y, _STAR)
    if cls == 7:  # crescent: disc minus an offset disc
        outer = np.sqrt(x * x + y * y) - 0.92
        cut = np.sqrt((x - 0.42) ** 2 + y * y) - 0.80
        return np.maximum(outer, -cut)
    if cls == 8:  # arrow pointing right
        return _sd_polygon(x, y, _ARROW)
    if cls == 9:  # two parallel bars ("=")
        return np.minimum(_sd_box(x, y + 0.42, 0.9, 0.22), _sd_box(x, y - 0.42, 0.9, 0.22))
    raise ValueError(f"class {cls!r} is not a shapes class; valid: 0..{NUM_CLASSES - 1}")


# --------------------------------------------------------------------------- generation


def _unit_vectors(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    v = rng.standard_normal(shape + (3,))
    norm = np.sqrt((v * v).sum(axis=-1, keepdims=True))
    return v / np.maximum(norm, 1e-12)


def _levels(rng: np.random.Generator, n: int) -> dict[str, np.ndarray]:
    """Per-parameter difficulty levels in [0, 1], correlated through a per-image latent."""
    z = rng.beta(2.0, 2.0, size=n)
    return {k: (0.5 * z + 0.5 * rng.random(n)) ** LEVEL_POWER for k in PARAM_NAMES}


def _dead_zone(t: np.ndarray, start: float) -> np.ndarray:
    return np.clip((t - start) / (1.0 - start), 0.0, 1.0)


def make_shapes(n: int, seed: int = 0, *, stream: int = 0) -> ShapesArrays:
    """Generate ``n`` shapes images deterministically (no caching; see :func:`load_shapes`).

    Args:
        n: number of images (>= 1). Classes are exactly balanced up to ``n % 10`` and shuffled.
        seed: non-negative integer seed.
        stream: independent sub-stream of ``seed`` (``TRAIN_STREAM`` = 0, ``TEST_STREAM`` = 1); the
            generator is ``np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))``
            (PCG64).

    Returns:
        :class:`ShapesArrays` with uint8 images ``[n, 3, 32, 32]``.
    """
    n = _check_count(n, "n")
    seed = _check_seed(seed, "seed")
    stream = _check_seed(stream, "stream")
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))
    size = IMAGE_SIZE

    labels = rng.permutation(np.arange(n) % NUM_CLASSES).astype(np.int64)
    lv = _levels(rng, n)

    # ---- natural-unit parameters
    scale = SCALE_EASY * (SCALE_HARD / SCALE_EASY) ** lv["scale"]
    contrast = CONTRAST_EASY * (CONTRAST_HARD / CONTRAST_EASY) ** lv["contrast"]
    noise = NOISE_MAX * _dead_zone(lv["noise"], 0.2)
    clutter = np.floor(_dead_zone(lv["clutter"], 0.2) * (CLUTTER_MAX + 1)).clip(0, CLUTTER_MAX)
    occ_target = OCCLUSION_MAX * _dead_zone(lv["occlusion"], 0.25)
    rotation = ROTATION_MAX * lv["rotation"] * rng.choice([-1.0, 1.0], size=n)
    offset = lv["offset"] * max_offset(scale)
    off_dir = rng.uniform(0.0, 2 * np.pi, size=n)
    cx = size / 2 + offset * np.cos(off_dir)
    cy = size / 2 + offset * np.sin(off_dir)

    # ---- colours: background b and object b + contrast * v, both inside [0, 1]^3
    v = _unit_vectors(rng, (n,))
    lo = np.maximum(0.0, -contrast[:, None] * v)
    hi = np.minimum(1.0, 1.0 - contrast[:, None] * v)
    bg = lo + rng.random((n, 3)) * (hi - lo)
    fg = bg + contrast[:, None] * v

    # ---- background texture (amplitude grows with clutter)
    tex_dir = _unit_vectors(rng, (n,))
    tex_freq = rng.uniform(1.0, 4.0, size=n) * 2 * np.pi / size
    tex_ang = rng.uniform(0.0, np.pi, size=n)
    tex_phase = rng.uniform(0.0, 2 * np.pi, size=n)

    # ---- distractors: (n, CLUTTER_MAX) candidates, the first `clutter` of each image are drawn
    dshape = (n, CLUTTER_MAX)
    d_is_stroke = rng.random(dshape) < 0.6
    d_cx = rng.uniform(1.0, size - 1.0, dshape)
    d_cy = rng.uniform(1.0, size - 1.0, dshape)
    d_ang = rng.uniform(0.0, np.pi, dshape)
    d_len = rng.uniform(1.5, 5.5, dshape)  # stroke half-length / ellipse semi-major axis, px
    d_wid = np.where(d_is_stroke, rng.uniform(0.4, 0.9, dshape), d_len * rng.uniform(0.2, 0.4, dshape))
    d_con = contrast[:, None] * rng.uniform(0.5, 1.2, dshape)  # distractor vs background, RGB distance
    d_col = np.clip(bg[:, None, :] + d_con[..., None] * _unit_vectors(rng, dshape), 0.0, 1.0)

    # ---- occluder: a striped rectangle (two random colours) whose near edge cuts off
    # `occ_target` of the object; striped so it never reads as a solid square or bar
    o_dir = rng.uniform(0.0, 2 * np.pi, size=n)
    o_extra_w = rng.uniform(0.0, 2.0, size=n)
    o_extra_d = rng.uniform(0.0, 2.0, size=n)
    o_period = rng.uniform(2.5, 5.0, size=n)
    o_stripe_ang = rng.uniform(0.0, np.pi, size=n)
    o_col = np.clip(
        bg[:, None, :] + (contrast[:, None] * rng.uniform(0.6, 1.3, (n, 2)))[..., None] * _unit_vectors(rng, (n, 2)),
        0.0,
        1.0,
    )

    # ---- render
    images = np.empty((n, 3, size, size), dtype=np.uint8)
    occlusion = np.zeros(n, dtype=np.float64)
    coords = np.arange(size, dtype=np.float64) + 0.5
    py, px = np.meshgrid(coords, coords, indexing="ij")
    px = px.reshape(1, -1)
    py = py.reshape(1, -1)
    theta = np.deg2rad(rotation)
    cos_t, sin_t = np.cos(theta), np.sin(theta)

    for start in range(0, n, _CHUNK):
        sl = slice(start, min(start + _CHUNK, n))
        m = sl.stop - sl.start
        img = np.broadcast_to(bg[sl, :, None], (m, 3, size * size)).copy()

        # texture
        proj = px * np.cos(tex_ang[sl, None]) + py * np.sin(tex_ang[sl, None])
        amp = TEXTURE_PER_CLUTTER * clutter[sl, None]
        tex = amp * np.sin(tex_freq[sl, None] * proj + tex_phase[sl, None])
        img += tex_dir[sl, :, None] * tex[:, None, :]

        # distractors
        for k in range(CLUTTER_MAX):
            rows = np.nonzero(clutter[sl] > k)[0]
            if rows.size == 0:
                continue
            g = rows + sl.start
            dx = px - d_cx[g, k, None]
            dy = py - d_cy[g, k, None]
            ca, sa = np.cos(d_ang[g, k, None]), np.sin(d_ang[g, k, None])
            u = dx * ca + dy * sa
            w = -dx * sa + dy * ca
            half, wid = d_len[g, k, None], d_wid[g, k, None]
            stroke = np.sqrt((u - np.clip(u, -half, half)) ** 2 + w * w) - wid
            kk = np.sqrt((u / half) ** 2 + (w / wid) ** 2)
            ellipse = (kk - 1.0) * wid
            sd = np.where(d_is_stroke[g, k, None], stroke, ellipse)
            alpha = np.clip(0.5 - sd, 0.0, 1.0)[:, None, :]
            img[rows] = img[rows] * (1.0 - alpha) + d_col[g, k, :, None] * alpha

        # object
        s = scale[sl, None]
        dx = px - cx[sl, None]
        dy = py - cy[sl, None]
        u = (dx * cos_t[sl, None] + dy * sin_t[sl, None]) / s
        w = (-dx * sin_t[sl, None] + dy * cos_t[sl, None]) / s
        cov = np.empty((m, size * size))
        lab = labels[sl]
        for c in range(NUM_CLASSES):
            rows = np.nonzero(lab == c)[0]
            if rows.size:
                sd = _unit_sdf(c, u[rows], w[rows]) * s[rows]
                cov[rows] = np.clip(0.5 - sd, 0.0, 1.0)
        img = img * (1.0 - cov[:, None, :]) + fg[sl, :, None] * cov[:, None, :]

        # occluder
        rows = np.nonzero(occ_target[sl] > 0)[0]
        if rows.size:
            g = rows + sl.start
            nx, ny = np.cos(o_dir[g, None]), np.sin(o_dir[g, None])
            a = dx[rows] * nx + dy[rows] * ny  # along the cut direction, px
            b = -dx[rows] * ny + dy[rows] * nx
            cr = cov[rows]
            order = np.argsort(a, axis=1, kind="stable")
            a_sorted = np.take_along_axis(a, order, axis=1)
            cum = np.cumsum(np.take_along_axis(cr, order, axis=1), axis=1)
            keep = (1.0 - occ_target[g, None]) * cum[:, -1:]
            idx = np.minimum((cum < keep).sum(axis=1), size * size - 1)
            tau = a_sorted[np.arange(rows.size), idx][:, None]
            far = 1.05 * s[rows] + o_extra_d[g, None]
            half_d = np.maximum(far - tau, 0.5) / 2
            sd = _sd_box(a - (tau + half_d), b, half_d, 1.05 * s[rows] + o_extra_w[g, None])
            alpha = np.clip(0.5 - sd, 0.0, 1.0)
            occlusion[g] = (cr * alpha).sum(axis=1) / np.maximum(cr.sum(axis=1), 1e-12)
            sa, ca = np.sin(o_stripe_ang[g, None]), np.cos(o_stripe_ang[g, None])
            stripe = (np.floor((px * ca + py * sa) / o_period[g, None]) % 2)[:, None, :]
            col = o_col[g, 0, :, None] * (1.0 - stripe) + o_col[g, 1, :, None] * stripe
            img[rows] = img[rows] * (1.0 - alpha[:, None, :]) + col * alpha[:, None, :]

        # sensor noise, clipping, quantisation
        img += noise[sl, None, None] * rng.standard_normal((m, 3, size * size))
        np.clip(img, 0.0, 1.0, out=img)
        images[sl] = np.rint(img * 255.0).astype(np.uint8).reshape(m, 3, size, size)

    params = {
        "scale": scale,
        "contrast": contrast,
        "noise": noise,
        "clutter": clutter,
        "occlusion": occlusion,
        "rotation": rotation,
        "offset": offset,
    }
    params = {k: np.asarray(params[k], dtype=np.float32) for k in PARAM_NAMES}
    return ShapesArrays(images, labels, shapes_difficulty(params), params)


# --------------------------------------------------------------------------- caching


def shapes_cache_path(n: int, seed: int = 0, stream: int = 0) -> Path:
    """Where :func:`load_shapes` caches ``make_shapes(n, seed, stream=stream)`` (the directory is not created)."""
    return cache_dir("data", create=False) / f"shapes_v{GENERATOR_VERSION}_n{n}_seed{seed}_stream{stream}.npz"


def _read_cache(path: Path, n: int) -> ShapesArrays:
    """The arrays of a cache file, or :class:`~dyncnn_gym.fileio.CorruptFileError` saying what is wrong."""
    try:
        with np.load(path, allow_pickle=False) as z:
            params = {k: z[f"param_{k}"] for k in PARAM_NAMES}
            arrays = ShapesArrays(z["images"], z["labels"], z["difficulty"], params)
    except (OSError, KeyError, ValueError, EOFError, zipfile.BadZipFile) as e:
        if isinstance(e, PermissionError):
            raise
        raise CorruptFileError(f"{type(e).__name__}: {e}") from None
    shapes = {"images": (n, 3, IMAGE_SIZE, IMAGE_SIZE), "labels": (n,), "difficulty": (n,)}
    shapes.update({f"param_{k}": (n,) for k in PARAM_NAMES})
    got = {"images": arrays.images, "labels": arrays.labels, "difficulty": arrays.difficulty}
    got.update({f"param_{k}": v for k, v in arrays.params.items()})
    for key, want in shapes.items():
        if got[key].shape != want:
            raise CorruptFileError(f"{key} has shape {got[key].shape}, expected {want}")
    if arrays.images.dtype != np.uint8:
        raise CorruptFileError(f"images have dtype {arrays.images.dtype}, expected uint8")
    return arrays


def load_shapes(n: int, seed: int = 0, *, stream: int = 0, use_cache: bool = True) -> ShapesArrays:
    """:func:`make_shapes`, cached as ``.npz`` in ``cache_dir("data")`` keyed by version and arguments.

    A missing cache file is generated and written atomically (see :mod:`dyncnn_gym.fileio`). A cache
    file that cannot be read or holds other arrays (truncated, empty, garbage) is moved aside with a
    warning and regenerated. A cache that cannot be written (read-only) only costs the generation
    time: the images are generated in memory, with a warning.
    """
    n = _check_count(n, "n")
    seed = _check_seed(seed, "seed")
    stream = _check_seed(stream, "stream")
    if not use_cache:
        return make_shapes(n, seed, stream=stream)
    path = shapes_cache_path(n, seed, stream)
    if path.exists():
        try:
            return _read_cache(path, n)
        except CorruptFileError as e:
            move_aside(path, f"the shapes data cache {str(path)!r} is unusable ({e})")
        except PermissionError as e:
            warnings.warn(f"the shapes data cache {str(path)!r} cannot be read ({e}); generating the images instead")
    arrays = make_shapes(n, seed, stream=stream)
    try:
        save_npz(
            path,
            images=arrays.images,
            labels=arrays.labels,
            difficulty=arrays.difficulty,
            **{f"param_{k}": v for k, v in arrays.params.items()},
        )
    except OSError as e:
        warnings.warn(
            f"the shapes data cache {str(path)!r} cannot be written ({e.strerror or e}); the images were generated in memory"
        )
    return arrays


# --------------------------------------------------------------------------- argument checks


def _check_count(n: object, name: str) -> int:
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or int(n) < 1:
        raise ValueError(f"{name}={n!r} is not a valid count; expected an integer >= 1")
    return int(n)


def _check_seed(seed: object, name: str) -> int:
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ValueError(f"{name}={seed!r} is not a valid seed; expected an integer >= 0")
    return int(seed)
