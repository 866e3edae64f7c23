"""Covariances measured on the device: of d-dimensional samples accumulated batch by
batch (:class:`StreamingCovariance`), and of every patch a convolution multiplies with
its filters (:func:`patch_covariance`, the data covariance Σx of a conv layer).

Inputs are numpy arrays or torch tensors; state is float64 torch where the first batch
lives, and integer images are multiplied in float32 only where every product is proven
exact. What is computed from these covariances (eigenvectors, misalignment, f(σ)) is
:mod:`randlabels.analysis.stats`' and runs in numpy.
"""

from __future__ import annotations

from typing import Iterable

import numpy as np
import torch
from torch.nn import functional as F

from randlabels.analysis.stats import ArrayLike, UndefinedStatistic, _symmetrize, to_float64

__all__ = ["StreamingCovariance", "patch_covariance"]


def _as_float64_tensor(a: ArrayLike, device: torch.device | None = None) -> torch.Tensor:
    """A float64 torch tensor of ``a`` on ``device`` (default: where ``a`` already lives)."""
    if isinstance(a, torch.Tensor):
        if a.is_complex():
            raise TypeError("complex tensors are not supported")
        t = a.detach()
    else:
        arr = np.asarray(a)
        if np.iscomplexobj(arr):
            raise TypeError("complex arrays are not supported")
        t = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float64))
    return t.to(device=device if device is not None else t.device, dtype=torch.float64)


class StreamingCovariance:
    """Mean and covariance of d-dimensional samples, accumulated batch by batch.

    Keeps only the count, the mean and the centred scatter matrix Σ(x − x̄)(x − x̄)ᵀ,
    merged with the pairwise update of Chan, Golub & LeVeque (1979), so a large common
    offset in the data does not cancel catastrophically the way Σxxᵀ − n x̄x̄ᵀ would.
    State is float64 torch on the device of the first batch (CUDA stays on the GPU);
    later batches are moved to that device.
    """

    def __init__(self, dim: int) -> None:
        if int(dim) != dim or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim = int(dim)
        self._count = 0
        self._mean: torch.Tensor | None = None  # (d,) float64
        self._scatter: torch.Tensor | None = None  # (d, d) float64, centred

    def __repr__(self) -> str:
        device = None if self._mean is None else self._mean.device
        return f"StreamingCovariance(dim={self.dim}, count={self._count}, device={device})"

    @property
    def count(self) -> int:
        """Number of samples accumulated so far."""
        return self._count

    @property
    def mean(self) -> np.ndarray:
        """Mean of the samples, float64 numpy (d,)."""
        if self._mean is None:
            raise UndefinedStatistic("mean of zero samples is undefined")
        return to_float64(self._mean)

    def covariance(self, ddof: int = 1) -> np.ndarray:
        """Covariance, the centred scatter divided by (count − ddof); float64 numpy (d, d)."""
        if self._scatter is None or self._count <= ddof:
            raise UndefinedStatistic(
                f"covariance of {self._count} sample(s) is undefined with ddof={ddof}"
            )
        cov = to_float64(self._scatter) / (self._count - ddof)
        return _symmetrize(cov)

    def update(self, samples: ArrayLike) -> "StreamingCovariance":
        """Add a batch of samples (n, d); returns ``self`` for chaining."""
        device = self._mean.device if self._mean is not None else None
        x = _as_float64_tensor(samples, device)
        if x.ndim != 2 or x.shape[1] != self.dim:
            raise ValueError(f"samples must have shape (n, {self.dim}), got {tuple(x.shape)}")
        n = x.shape[0]
        if n == 0:
            return self
        if not bool(torch.isfinite(x).all()):
            raise ValueError("non-finite values in samples")
        mean = x.mean(dim=0)
        centred = x - mean
        scatter = centred.T @ centred
        self._combine(n, mean, scatter)
        return self

    def update_columns(self, columns: torch.Tensor) -> "StreamingCovariance":
        """Add the samples held as columns of a (B, d, L) tensor (``F.unfold``'s layout).

        Same result as ``update`` on the (B·L, d) rows, without transposing them into
        a copy: the scatter is a batched (d×L)(L×d) product, several times faster.
        """
        x = _as_float64_tensor(columns, self._mean.device if self._mean is not None else None)
        if x.ndim != 3 or x.shape[1] != self.dim:
            raise ValueError(f"samples must have shape (B, {self.dim}, L) as columns, got {tuple(x.shape)}")
        n = x.shape[0] * x.shape[2]
        if n == 0:
            return self
        if not bool(torch.isfinite(x).all()):
            raise ValueError("non-finite values in samples")
        mean = x.mean(dim=(0, 2))
        centred = x - mean[None, :, None]
        scatter = torch.bmm(centred, centred.transpose(1, 2)).sum(dim=0)
        self._combine(n, mean, scatter)
        return self

    def merge(self, other: "StreamingCovariance") -> "StreamingCovariance":
        """Absorb another accumulator (e.g. from another worker); returns ``self``."""
        if not isinstance(other, StreamingCovariance):
            raise TypeError(f"can only merge a StreamingCovariance, not {type(other).__name__}")
        if other.dim != self.dim:
            raise ValueError(
                f"dimension mismatch: cannot merge dim {other.dim} into dim {self.dim}"
            )
        if other._count == 0:
            return self
        assert other._mean is not None and other._scatter is not None
        device = self._mean.device if self._mean is not None else other._mean.device
        self._combine(other._count, other._mean.to(device), other._scatter.to(device))
        return self

    def _combine(self, n_b: int, mean_b: torch.Tensor, scatter_b: torch.Tensor) -> None:
        """Chan et al.: n = na+nb, δ = x̄b − x̄a, x̄ = x̄a + δ·nb/n, S = Sa + Sb + δδᵀ·na·nb/n."""
        if self._count == 0 or self._mean is None or self._scatter is None:
            self._count = n_b
            self._mean = mean_b.clone()
            self._scatter = scatter_b.clone()
            return
        n_a = self._count
        n = n_a + n_b
        delta = mean_b - self._mean
        self._mean = self._mean + delta * (n_b / n)
        self._scatter = self._scatter + scatter_b + torch.outer(delta, delta) * (n_a * n_b / n)
        self._count = n


def _pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    """An int or a pair of ints as a pair, or a ValueError naming the argument."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return int(value), int(value)
    if (
        isinstance(value, (tuple, list))
        and len(value) == 2
        and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value)
    ):
        return int(value[0]), int(value[1])
    raise ValueError(f"{name} must be an int or a pair of ints, got {value!r}")


# Integer dtypes whose values the exact path reads as they are (others are converted first).
_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)
# float32 represents every integer of magnitude <= 2**24 exactly.
_FLOAT32_EXACT = 2**24
# Elements of the padded images, row patches and products of one slice of images (a few
# tens of MiB): memory stays bounded whatever the batch size.
_SLICE_ELEMENTS = 2**23
# Reduction length of one product on the float64 path (no exactness limit there).
_FLOAT64_REDUCTION = 2048


def _buffer(
    workspace: dict, name: str, shape: tuple[int, ...], dtype: torch.dtype, device: torch.device
) -> torch.Tensor:
    """A zero-initialised buffer kept in ``workspace`` and reused while its shape fits.

    Large fresh allocations cost page faults on every batch; reusing them avoids that.
    Callers only rely on the zeros of regions they never write.
    """
    key = (name, tuple(shape), dtype, device)
    buffer = workspace.get(name)
    if buffer is None or buffer[0] != key:
        buffer = (key, torch.zeros(shape, dtype=dtype, device=device))
        workspace[name] = buffer
    return buffer[1]


def _patch_input(batch: ArrayLike) -> torch.Tensor:
    """A batch as a torch tensor that keeps integer pixel values integer.

    Integer and boolean inputs (e.g. uint8 images) stay integer so that the exact path
    of :func:`patch_covariance` applies; dtypes torch handles poorly are widened.
    """
    if isinstance(batch, torch.Tensor):
        if batch.is_complex():
            raise TypeError("complex tensors are not supported")
        t = batch.detach()
        if t.dtype == torch.bool:
            return t.to(torch.uint8)
        if t.dtype in (torch.uint16, torch.uint32):
            return t.to(torch.int64)
        if t.dtype == torch.uint64:
            return t.to(torch.float64)
        return t
    arr = np.asarray(batch)
    if np.iscomplexobj(arr):
        raise TypeError("complex arrays are not supported")
    if arr.dtype == np.bool_:
        arr = arr.astype(np.uint8)
    elif arr.dtype in (np.uint16, np.uint32):
        arr = arr.astype(np.int64)
    elif arr.dtype.kind in "ui" and arr.dtype != np.uint64:
        pass
    elif arr.dtype.kind != "f" or arr.dtype == np.float16:
        arr = arr.astype(np.float64)
    return torch.from_numpy(np.ascontiguousarray(arr))


def _float32_matmul_is_ieee(device: torch.device) -> bool:
    """Whether float32 matmuls on ``device`` run in IEEE float32 (no TF32 / bf16 shortcut).

    Only the CPU is ever answered True: there torch's ``fp32_precision`` settings (or the
    legacy ``set_float32_matmul_precision``) decide whether oneDNN may round the inputs
    to bf16. Any doubt answers False, which only costs speed.
    """
    if device.type != "cpu":
        return False
    try:
        chain = (
            torch.backends.mkldnn.matmul.fp32_precision,
            torch.backends.mkldnn.fp32_precision,
            torch.backends.fp32_precision,
        )
    except AttributeError:
        try:
            return torch.get_float32_matmul_precision() == "highest"
        except RuntimeError:
            return False
    for setting in chain:  # the first explicit setting, leaf first, decides
        if setting != "none":
            return setting == "ieee"
    return True


def _patch_plan(
    x: torch.Tensor, padded: bool, out_width: int
) -> tuple[torch.dtype, torch.Tensor, int]:
    """(compute dtype, per-channel centre (C,) float64, images per product) for a batch.

    Every patch coordinate of channel c is shifted by the same centre m_c (the padding
    zeros too, to −m_c), which leaves the covariance unchanged and keeps the raw sums
    small. Integer pixels use an integer centre (the middle of their range, zero
    included when padding adds zeros), so the shifted values are integers of magnitude
    <= a; a product reducing over K of them sums integers of magnitude <= K·a², exact in
    float32 while K·a² <= 2**24 (uint8: a = 128, K = 1024 — one row of 32 patches of
    32 images). Those float32 products are as exact as float64 ones and several times
    faster. Float pixels (or integers too wide for that) are centred on their per-channel
    mean and computed in float64.
    """
    if x.dtype in _INTEGER_DTYPES:
        if x.dtype in (torch.uint8, torch.int8):  # the dtype's range: no pass over the data
            info = torch.iinfo(x.dtype)
            lo, hi = info.min, info.max
        else:
            lo, hi = (int(v) for v in torch.aminmax(x))
        if padded:
            lo, hi = min(lo, 0), max(hi, 0)
        centre = (lo + hi) // 2
        reach = max(hi - centre, centre - lo, 1)
        per_product = _FLOAT32_EXACT // (reach * reach) // out_width
        centres = torch.full((x.shape[1],), float(centre), dtype=torch.float64, device=x.device)
        if (
            per_product >= 1
            and max(-lo, hi) <= _FLOAT32_EXACT  # pixels and centre exact in float32, so
            and _float32_matmul_is_ieee(x.device)  # is their difference (an integer <= reach)
        ):
            return torch.float32, centres, per_product
        return torch.float64, centres, max(1, _FLOAT64_REDUCTION // out_width)
    if not bool(torch.isfinite(x).all()):
        raise ValueError("non-finite values in samples")
    centres = x.mean(dim=(0, 2, 3), dtype=torch.float64)
    return torch.float64, centres, max(1, _FLOAT64_REDUCTION // out_width)


def _patch_moments(
    x: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
    workspace: dict | None = None,
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """(count, mean (d,), centred scatter (d, d)) of all patches of one (B, C, H, W) batch.

    Works row by row instead of patch by patch. A patch is its kh rows, each the row
    patch R[Y, x] = (x[c, Y, x·sx + j·dx])_{c, j} of one padded image row Y; so the
    scatter block of patch rows (i, i') is Σ over output rows y of
    G_m(y·sy + i·dy) with m = i' − i and G_m(Y) = Σ_{images, x} R[Y, x] R[Y + m·dy, x]ᵀ.
    The G_m(Y) are batched (C·kw)×K by K×(kh·C·kw) products (K = images · output
    columns) over every padded row, about kw times fewer multiply-adds than the d×d
    products of whole patches, and the row patches are kw, not kh·kw, copies of the
    image. Raw sums are taken in the centred coordinates of :func:`_patch_plan` and
    centred once at the end (S = Q − s sᵀ / n).

    Few, large tensor operations per slice of images (each one is a parallel region,
    and on a shared CPU every region can wait for a descheduled thread); the small
    bookkeeping at the end runs in numpy. ``workspace`` (a dict kept across the batches
    of one stream) holds the large buffers so they are allocated once, not per batch.
    """
    batch, channels, height, width = x.shape
    kh, kw = kernel
    sy, sx = stride
    ph, pw = padding
    dy, dx = dilation
    hp, wp = height + 2 * ph, width + 2 * pw
    out_h = (hp - dy * (kh - 1) - 1) // sy + 1
    out_w = (wp - dx * (kw - 1) - 1) // sx + 1
    if out_h < 1 or out_w < 1:
        raise ValueError(
            f"images of size {height}x{width} with padding {padding} are smaller than the "
            f"kernel {kernel} with dilation {dilation}"
        )
    ck = channels * kw  # length of a row patch
    if hp * ck * kh * ck > _SLICE_ELEMENTS:
        # Many channels: one group's products alone would not fit the slice budget, and
        # the rows gain little over whole patches. Unfold and multiply whole patches.
        return _unfolded_moments(x, kernel, stride, padding, dilation)
    dtype, centres, per_product = _patch_plan(x, ph > 0 or pw > 0, out_w)
    device = x.device
    per_image = channels * hp * wp + hp * ck * out_w  # padded image + its row patches
    per_product = max(1, min(per_product, batch, _SLICE_ELEMENTS // per_image))
    reduction = per_product * out_w  # K of one product
    # Elements of the padded images, row patches and products of one group of images.
    per_group = per_product * channels * hp * wp + hp * ck * (reduction + kh * ck)
    groups = max(1, min(_SLICE_ELEMENTS // per_group, -(-batch // per_product)))
    slices = -(-batch // (groups * per_product))
    groups = -(-batch // (slices * per_product))  # slices of about equal size
    per_slice = groups * per_product
    rows = groups * hp  # products per slice: one per (group, padded row)
    halo = (kh - 1) * dy  # zero rows after the last group, read by the shifted operand

    workspace = {} if workspace is None else workspace
    padded = _buffer(workspace, "padded", (per_slice, channels, hp, wp), dtype, device)
    row_patches = _buffer(workspace, "row_patches", (rows + halo, ck, reduction), dtype, device)
    products = _buffer(workspace, "products", (rows, ck, kh * ck), dtype, device)
    strides = padded.stride()
    # row_patches[(g, Y), (c, j), (b, x)] = padded[g·per_product + b, c, Y, x·sx + j·dx]
    source = padded.as_strided(
        (groups, hp, channels, kw, per_product, out_w),
        (per_product * strides[0], strides[2], strides[1], dx * strides[3], strides[0], sx * strides[3]),
    )
    target = row_patches[:rows].view(groups, hp, channels, kw, per_product, out_w)
    shift = centres.to(dtype).view(1, channels, 1, 1)
    # The padding's zeros in centred coordinates. The borders of the padded buffer keep
    # them from slice to slice (and batch to batch, while the centre is the same); only
    # the inside of each image is rewritten.
    border = (padded, tuple(centres.tolist()))  # valid for this very buffer only
    state = workspace.get("border")
    if state is None or state[0] is not padded or state[1] != border[1]:
        workspace["border"], workspace["border_images"] = border, 0

    # Per (group, row) sums of the products over the slices, in float64 (exact for the
    # exact path); summed over groups only once, at the end.
    product_sums = _buffer(workspace, "product_sums", (rows, ck, kh * ck), torch.float64, device)
    for start in range(0, batch, per_slice):
        chunk = x[start : start + per_slice]
        n_chunk = chunk.shape[0]
        used = -(-n_chunk // per_product)  # groups holding images of this slice
        if (ph or pw) and workspace["border_images"] < n_chunk:
            padded[:n_chunk].copy_((-shift).expand(n_chunk, channels, hp, wp))
            workspace["border_images"] = n_chunk
        torch.sub(chunk, shift, out=padded[:n_chunk, :, ph : ph + height, pw : pw + width])
        if n_chunk < used * per_product:  # images past the end add exact zeros
            padded[n_chunk : used * per_product].zero_()
            workspace["border_images"] = min(workspace["border_images"], n_chunk)
        n_rows = used * hp
        target[:used].copy_(source[:used])
        # Rows Y..Y+kh−1 of row patches: with dy = 1 one contiguous (kh·ck)×K operand,
        # read as an overlapping view. Products of rows past a group's end (Y + m·dy >=
        # hp, reading the next group or the zero halo) are computed but never used.
        if dy == 1:
            shifted = row_patches.as_strided((n_rows, kh * ck, reduction), (ck * reduction, reduction, 1))
            torch.bmm(row_patches[:n_rows], shifted.transpose(1, 2), out=products[:n_rows])
        else:
            view = products[:n_rows].view(n_rows, ck, kh, ck)
            for m in range(kh):
                shifted = row_patches[m * dy : m * dy + n_rows]
                view[:, :, m, :] = torch.bmm(row_patches[:n_rows], shifted.transpose(1, 2))
        if start == 0:
            product_sums[:n_rows].copy_(products[:n_rows])
            product_sums[n_rows:].zero_()
        else:
            product_sums[:n_rows].add_(products[:n_rows])
    # Σ over images of each padded pixel, centred: the inputs' sums less n·centre, and
    # −n·centre on the padding (images added as zeros count for nothing).
    wide = x.is_floating_point() or x.dtype == torch.int64  # int64 sums could overflow
    if device.type == "cpu" and x.dtype != torch.bfloat16:  # numpy: one thread, no parallel region
        input_sums = x.numpy().sum(axis=0, dtype=np.float64 if wide else np.int64)
    else:
        input_sums = x.sum(dim=0, dtype=torch.float64 if wide else torch.int64).cpu().numpy()

    # The rest is (d, d)-sized bookkeeping: numpy, float64.
    g = product_sums.cpu().numpy().reshape(groups, hp, ck, kh, ck).sum(axis=0)
    centre = centres.cpu().numpy()[:, None, None]
    pixels = np.broadcast_to(-batch * centre, (channels, hp, wp)).copy()
    pixels[:, ph : ph + height, pw : pw + width] += input_sums.astype(np.float64)
    columns = dx * np.arange(kw)[:, None] + sx * np.arange(out_w)  # (j, x) → padded column
    # r[Y, c, j] = Σ_{images, x} R[Y, x][c, j]
    r = pixels[:, :, columns].sum(axis=3).transpose(1, 0, 2).reshape(hp, ck)
    last = sy * (out_h - 1) + 1
    q = np.zeros((kh, ck, kh, ck))
    s = np.empty((kh, ck))
    for i in range(kh):
        window = slice(i * dy, i * dy + last, sy)  # the padded rows patch row i visits
        block = g[window].sum(axis=0)  # (ck, kh, ck): m = i' − i
        s[i] = r[window].sum(axis=0)
        for m in range(kh - i):
            q[i, :, i + m, :] = block[:, m, :]
            q[i + m, :, i, :] = block[:, m, :].T
    # (i, c, j) → the weight's (c, i, j) order.
    d = channels * kh * kw
    q = q.reshape(kh, channels, kw, kh, channels, kw).transpose(1, 0, 2, 4, 3, 5).reshape(d, d)
    s = s.reshape(kh, channels, kw).transpose(1, 0, 2).reshape(d)
    count = batch * out_h * out_w
    offset = np.zeros(d)
    if x.dtype in _INTEGER_DTYPES:
        # q and s are exact integers. Move them, still exactly, to the integer vector t
        # nearest the patches' mean (the padding pulls border coordinates away from the
        # channel centre, and a far centre would cancel digits in q − s sᵀ/n):
        # Σ(x−t)(x−t)ᵀ = q − s tᵀ − t sᵀ + n t tᵀ, Σ(x−t) = s − n t.
        t = np.round(s / count)
        t_max = np.abs(t).max()
        if np.abs(q).max() + 2 * np.abs(s).max() * t_max + count * t_max**2 < 2.0**53:
            q = q - np.outer(s, t) - np.outer(t, s) + count * np.outer(t, t)  # all exact
            s = s - count * t
            offset = t
    mean = s / count
    scatter = q - np.outer(s, mean)
    mean = mean + offset + np.repeat(centres.cpu().numpy(), kh * kw)
    as_tensor = lambda a: torch.from_numpy(a).to(device)  # noqa: E731
    return count, as_tensor(mean), as_tensor(scatter)


def _unfolded_moments(
    x: torch.Tensor,
    kernel: tuple[int, int],
    stride: tuple[int, int],
    padding: tuple[int, int],
    dilation: tuple[int, int],
) -> tuple[int, torch.Tensor, torch.Tensor]:
    """:func:`_patch_moments` by unfolding whole patches, in float64, slice by slice."""
    if x.is_floating_point() and not bool(torch.isfinite(x).all()):
        raise ValueError("non-finite values in samples")
    dim = x.shape[1] * kernel[0] * kernel[1]
    acc = StreamingCovariance(dim)
    per_slice = max(1, _SLICE_ELEMENTS // (dim * x.shape[2] * x.shape[3]))
    for start in range(0, x.shape[0], per_slice):
        chunk = x[start : start + per_slice].to(torch.float64)
        acc.update_columns(F.unfold(chunk, kernel, dilation=dilation, padding=padding, stride=stride))
    assert acc._mean is not None and acc._scatter is not None
    return acc.count, acc._mean, acc._scatter


def patch_covariance(
    batches: Iterable[ArrayLike],
    kernel_size: int | tuple[int, int],
    stride: int | tuple[int, int] = 1,
    padding: int | tuple[int, int] = 0,
    dilation: int | tuple[int, int] = 1,
) -> StreamingCovariance:
    """Σx of a conv layer: streaming covariance of every patch a Conv2d would see.

    Each (B, C, H, W) batch is unfolded exactly as ``torch.nn.Conv2d`` with the same
    kernel_size/stride/padding/dilation would (zero padding included, so border patches
    count with their zeros); each patch, flattened in the weight's (C_in, kh, kw) order,
    is one sample. Batches are merged into the accumulator one at a time, so memory
    stays bounded by a batch (and within a batch by slices of images).

    Integer batches (e.g. uint8 images, in any memory layout) take an exact path: sums
    of products of the integer pixels are exact (float32 products where they provably
    are, float64 otherwise), so only the centring and the merging of batches round.
    Float batches are computed in float64. Both use the row decomposition of
    :func:`_patch_moments` (images with many channels: whole unfolded patches).
    """
    kernel = _pair("kernel_size", kernel_size)
    stride_ = _pair("stride", stride)
    padding_ = _pair("padding", padding)
    dilation_ = _pair("dilation", dilation)
    if min(kernel) < 1 or min(stride_) < 1 or min(dilation_) < 1 or min(padding_) < 0:
        raise ValueError(
            "kernel_size, stride and dilation must be >= 1 and padding >= 0, got "
            f"{kernel}, {stride_}, {dilation_}, {padding_}"
        )
    acc: StreamingCovariance | None = None
    workspace: dict = {}
    for batch in batches:
        x = _patch_input(batch)
        if x.ndim != 4:
            raise ValueError(f"batches must have shape (B, C, H, W), got {tuple(x.shape)}")
        dim = x.shape[1] * kernel[0] * kernel[1]
        if acc is None:
            acc = StreamingCovariance(dim)
        elif dim != acc.dim:
            raise ValueError(
                f"samples must have shape (n, {acc.dim}): a batch with {x.shape[1]} channels "
                f"gives {dim}-dimensional patches"
            )
        if x.shape[0] == 0:
            continue
        if acc._mean is not None:
            x = x.to(acc._mean.device)
        count, mean, scatter = _patch_moments(x, kernel, stride_, padding_, dilation_, workspace)
        acc._combine(count, mean, scatter)
    if acc is None:
        raise ValueError("patch_covariance needs at least one batch")
    return acc
