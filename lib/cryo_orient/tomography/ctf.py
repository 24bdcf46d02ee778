"""The contrast transfer function (CTF) in RELION's convention, and CTF correction of images.

Convention (RELION 3.1, ``src/ctf.h`` and ``src/ctf.cpp``)
---------------------------------------------------------
At the spatial frequency ``(X, Y)`` in 1/Å, ``X`` along the image's columns (``x``) and ``Y``
along its rows (``y``), with ``u² = X² + Y²`` and the azimuth ``φ = atan2(Y, X)``,

    CTF(X, Y) = −scale · sin(γ) · exp(−B u² / 4),
    γ = π λ Δf(φ) u² + (π/2) Cs λ³ u⁴ − φ_shift − atan(Q0 / √(1 − Q0²)),
    Δf(φ) = −[(U + V)/2 + (U − V)/2 · cos(2 (φ − α))],

with the defoci ``U``, ``V`` in Å (positive = underfocus), the astigmatism angle ``α`` from the
``x`` axis towards ``y`` (counter-clockwise in an image displayed with ``y`` up), ``Cs`` in Å
(mm × 10⁷), the phase shift ``φ_shift`` in radians, the amplitude contrast ``Q0`` and the
relativistic electron wavelength ``λ = 12.2643247 / √(V (1 + 0.978466e-6 V))`` Å (``V`` in
volts). At zero frequency the CTF is ``scale · Q0`` (no phase shift); at low frequency it is
positive for underfocus, so a particle denser than the solvent stays bright in a CTF-modulated
image at low resolution (RELION's images; real micrographs have the opposite contrast, which
RELION's preprocessing inverts). RELION clamps ``|CTF| < 1e-8`` to ``±1e-8``; this module does
not (it matters only to a division by the CTF, which nothing here does).

Layout
------
:func:`ctf_values` gives the CTF on the half spectrum of ``np.fft.rfft2(np.fft.ifftshift(image))``
for an image indexed ``[y, x]`` with its centre at pixel ``size // 2``: the layout of
:func:`cryo_orient.tomography.backends.slice_frequencies` and of the NUFFT projector. Row ``i``
has ``Y = fftfreq(size)[i] / pixel_size``, column ``j`` has ``X = rfftfreq(size)[j] / pixel_size``.
For even sizes the Nyquist row (``Y = −1/(2 pixel_size)``) and column each stand for two aliased
frequencies that an astigmatic CTF does not treat alike; RELION's FFTW layout puts the Nyquist
row at ``+1/(2 pixel_size)``. Those coefficients are the ones the reconstruction leaves out
(:func:`cryo_orient.tomography.backends.remove_detector_nyquist`), and in the filters below
``np.fft.irfft2`` resolves them as it does for any half spectrum.

The filters (:func:`apply_ctf`, :func:`phase_flip`, :func:`wiener_filter`) multiply each image's
spectrum by a real, centro-symmetric function of frequency and return real images of the input's
float dtype; they never modify their inputs.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping

import numpy as np

from cryo_orient.data import relion
from cryo_orient.validation import InputError

__all__ = [
    "COLUMNS",
    "CTFParams",
    "REQUIRED_COLUMNS",
    "apply_ctf",
    "check_pixel_size",
    "ctf_values",
    "electron_wavelength",
    "phase_flip",
    "wiener_filter",
]

#: RELION STAR column name -> :class:`CTFParams` field (the columns are those the STAR reader
#: collects, :data:`cryo_orient.data.relion.CTF_COLUMNS`, in its order).
COLUMNS = dict(
    zip(
        relion.CTF_COLUMNS,
        (
            "defocus_u",
            "defocus_v",
            "defocus_angle",
            "voltage",
            "spherical_aberration",
            "amplitude_contrast",
            "phase_shift",
            "bfactor",
            "scale",
        ),
        strict=True,
    )
)
#: The columns :meth:`CTFParams.from_columns` cannot do without.
REQUIRED_COLUMNS = relion.CTF_REQUIRED
_DEFAULTS = {"defocus_angle": 0.0, "phase_shift": 0.0, "bfactor": 0.0, "scale": 1.0}
_FIELDS = tuple(COLUMNS.values())
# Images filtered per batch: bounds the memory of the (batch, size, size // 2 + 1) CTF array.
_BATCH = 512


def electron_wavelength(voltage_kv) -> np.ndarray:
    """Relativistic electron wavelength in Å for an accelerating voltage in kV (RELION's formula)."""
    volts = np.asarray(voltage_kv, dtype=np.float64) * 1e3
    return 12.2643247 / np.sqrt(volts * (1.0 + volts * 0.978466e-6))


def _field_array(value, name) -> np.ndarray:
    try:
        a = np.array(value, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"CTF parameter {name} must be numbers, got {value!r:.80}") from None
    if a.ndim > 1:
        raise InputError(f"CTF parameter {name} must be a scalar or a 1-D array (one value per image), got {a.shape}")
    bad = np.flatnonzero(~np.isfinite(np.atleast_1d(a)))
    if bad.size:
        raise InputError(f"CTF parameter {name} has a NaN or infinite value at image {bad[0]}; give finite values")
    return a


@dataclasses.dataclass(frozen=True, eq=False)
class CTFParams:
    """CTF parameters of ``N`` images, one array of length ``N`` per parameter.

    Units are those of RELION's STAR columns (:data:`COLUMNS`). Scalars are broadcast to the
    common length (1 if every parameter is a scalar); the stored arrays are read-only float64
    copies, so a ``CTFParams`` never changes and never aliases the caller's arrays.

    Attributes
    ----------
    defocus_u, defocus_v : ndarray
        Defocus along the astigmatism's major and minor directions, Å (``rlnDefocusU``,
        ``rlnDefocusV``); positive is underfocus.
    defocus_angle : ndarray
        Astigmatism angle ``α`` in degrees from the image's ``x`` axis towards ``y``
        (``rlnDefocusAngle``).
    voltage : ndarray
        Accelerating voltage, kV (``rlnVoltage``).
    spherical_aberration : ndarray
        Cs, mm (``rlnSphericalAberration``).
    amplitude_contrast : ndarray
        Q0, a fraction in [0, 1] (``rlnAmplitudeContrast``).
    phase_shift : ndarray
        Phase-plate shift, degrees (``rlnPhaseShift``; default 0).
    bfactor : ndarray
        B-factor of the envelope ``exp(−B u²/4)``, Å² (``rlnCtfBfactor``; default 0).
    scale : ndarray
        Overall factor (``rlnCtfScalefactor``; default 1).
    """

    defocus_u: np.ndarray
    defocus_v: np.ndarray
    defocus_angle: np.ndarray
    voltage: np.ndarray
    spherical_aberration: np.ndarray
    amplitude_contrast: np.ndarray
    phase_shift: np.ndarray = 0.0
    bfactor: np.ndarray = 0.0
    scale: np.ndarray = 1.0

    def __post_init__(self):
        arrays = {name: _field_array(getattr(self, name), name) for name in _FIELDS}
        lengths = {a.shape[0] for a in arrays.values() if a.ndim == 1}
        if len(lengths) > 1:
            sizes = {name: a.shape[0] for name, a in arrays.items() if a.ndim == 1}
            raise InputError(f"CTF parameters must all have one value per image (or be scalars), got lengths {sizes}")
        n = lengths.pop() if lengths else 1
        for name, a in arrays.items():
            a = np.array(np.broadcast_to(a, (n,)))  # a fresh, owned copy
            a.flags.writeable = False
            object.__setattr__(self, name, a)
        if np.any(self.voltage <= 0):
            raise InputError(f"CTF voltage must be > 0 kV, got {self.voltage[self.voltage <= 0][0]}")
        q0 = self.amplitude_contrast
        outside = (q0 < 0) | (q0 > 1)
        if np.any(outside):
            raise InputError(
                f"CTF amplitude_contrast must be a fraction in [0, 1], got {q0[outside][0]} "
                f"(image {np.flatnonzero(outside)[0]}); RELION's rlnAmplitudeContrast is e.g. 0.1"
            )

    def __len__(self) -> int:
        return int(self.defocus_u.shape[0])

    def subset(self, index) -> CTFParams:
        """The parameters of the images ``index`` selects (an int, a slice, indices or a mask)."""
        try:
            return CTFParams(**{name: np.atleast_1d(getattr(self, name)[index]) for name in _FIELDS})
        except IndexError as err:
            raise InputError(f"CTF subset index does not fit {len(self)} images: {err}") from None

    def of_images(self, index) -> CTFParams:
        """The parameters of the images ``index`` selects, where one set stands for every image
        (then it is returned as it is)."""
        return self if len(self) == 1 else self.subset(index)

    @classmethod
    def from_columns(cls, columns: Mapping, n: int) -> CTFParams:
        """Parameters of ``n`` images from RELION STAR columns.

        Parameters
        ----------
        columns : Mapping
            Column name (``"rlnDefocusU"`` or ``"_rlnDefocusU"``) -> ``n`` values or a scalar
            (e.g. an optics-group value already given per particle). Other columns are ignored.
        n : int
            The number of images.

        Returns
        -------
        CTFParams
            ``rlnDefocusV`` defaults to ``rlnDefocusU``, ``rlnDefocusAngle``, ``rlnPhaseShift`` and
            ``rlnCtfBfactor`` to 0, ``rlnCtfScalefactor`` to 1.

        Raises
        ------
        InputError
            A required column (:data:`REQUIRED_COLUMNS`) is missing, a column has the wrong
            length, or a value is not a finite number (the message names the column and the
            first bad row, counted from 1).
        """
        n = int(n)
        given = {str(key).lstrip("_"): value for key, value in columns.items()}
        missing = [name for name in REQUIRED_COLUMNS if name not in given]
        if missing:
            raise InputError(
                f"the CTF needs the column(s) {', '.join(missing)}; add them to the STAR file "
                "(particles or optics table) or run without CTF"
            )
        values = {}
        for column, field in COLUMNS.items():
            if column in given:
                values[field] = _column_values(given[column], column, n)
        values.setdefault("defocus_v", values["defocus_u"])
        for field, default in _DEFAULTS.items():
            values.setdefault(field, np.full(n, default))
        return cls(**values)

    def to_columns(self) -> dict[str, np.ndarray]:
        """RELION column name -> array of length ``N`` (copies), for every parameter."""
        return {column: np.array(getattr(self, field)) for column, field in COLUMNS.items()}


def _column_values(value, column, n) -> np.ndarray:
    raw = np.asarray(value, dtype=object)
    if raw.ndim == 0:
        raw = np.full(n, raw.item(), dtype=object)
    if raw.ndim != 1 or len(raw) != n:
        raise InputError(f"STAR column {column} has {raw.shape} values for {n} particles; give one per particle")
    out = np.empty(n)
    for row, item in enumerate(raw):
        try:
            out[row] = float(item)
        except (TypeError, ValueError):
            raise InputError(
                f"STAR column {column} row {row + 1} is not a number ({item!r:.40}); fix or remove that particle"
            ) from None
        if not math.isfinite(out[row]):
            raise InputError(f"STAR column {column} row {row + 1} is {item!r}; fix or remove that particle")
    return out


def check_pixel_size(pixel_size) -> float:
    """``pixel_size`` as a positive finite number of Å per pixel (the check every CTF user makes)."""
    try:
        value = float(pixel_size)
    except (TypeError, ValueError):
        raise InputError(f"pixel_size must be a number of Å per pixel, got {pixel_size!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise InputError(f"pixel_size must be a positive number of Å per pixel, got {pixel_size!r}")
    return value


def _check_params(params) -> CTFParams:
    if not isinstance(params, CTFParams):
        raise InputError(
            f"the CTF must be a CTFParams, got {type(params).__name__}; build one with CTFParams(...) or from_columns"
        )
    return params


def ctf_values(params: CTFParams, size: int, pixel_size: float, *, index=None) -> np.ndarray:
    """The CTF of each image on the half spectrum of ``np.fft.rfft2(np.fft.ifftshift(image))``.

    Parameters
    ----------
    params : CTFParams
        The images' CTF parameters.
    size : int
        Image side in pixels.
    pixel_size : float
        Å per pixel.
    index : int, slice or array, optional
        Only these images (e.g. a batch); default all.

    Returns
    -------
    ndarray, shape (N, size, size // 2 + 1)
        float64; row ``i`` is the frequency ``Y = fftfreq(size)[i] / pixel_size`` (image rows),
        column ``j`` is ``X = rfftfreq(size)[j] / pixel_size`` (image columns), in 1/Å.
    """
    params = _check_params(params)
    if int(size) != size or size < 1:
        raise InputError(f"size must be a positive integer number of pixels, got {size!r}")
    size = int(size)
    pixel_size = check_pixel_size(pixel_size)
    if index is not None:
        params = params.subset(index)
    Y = np.fft.fftfreq(size, d=pixel_size)[:, None]
    X = np.fft.rfftfreq(size, d=pixel_size)[None, :]
    u2 = X * X + Y * Y
    lam = electron_wavelength(params.voltage)[:, None, None]
    cs = params.spherical_aberration[:, None, None] * 1e7
    azimuth = np.radians(params.defocus_angle)[:, None, None]
    mean = 0.5 * (params.defocus_u + params.defocus_v)[:, None, None]
    half_diff = 0.5 * (params.defocus_u - params.defocus_v)[:, None, None]
    # u² cos(2(φ − α)) = (X² − Y²) cos 2α + 2 X Y sin 2α: no atan2, and no special case at 0.
    astig = (X * X - Y * Y) * np.cos(2 * azimuth) + 2 * X * Y * np.sin(2 * azimuth)
    defocus_u2 = -(mean * u2 + half_diff * astig)  # Δf(φ) u²
    q0 = params.amplitude_contrast[:, None, None]
    k3 = np.arctan2(q0, np.sqrt(1.0 - q0 * q0))  # RELION's atan(Q0 / sqrt(1 − Q0²)), defined at Q0 = 1
    gamma = np.pi * lam * defocus_u2 + 0.5 * np.pi * cs * lam**3 * u2 * u2
    gamma -= np.radians(params.phase_shift)[:, None, None] + k3
    envelope = np.exp(-0.25 * params.bfactor[:, None, None] * u2)
    return -params.scale[:, None, None] * np.sin(gamma) * envelope


def _check_images(images, params, name="images"):
    p = np.asarray(images)
    if p.ndim == 2:
        raise InputError(f"{name} must have shape (N, size, size), got {p.shape}; wrap a single image as image[None]")
    if p.ndim != 3 or p.shape[1] != p.shape[2] or p.shape[1] < 1:
        raise InputError(f"{name} must have shape (N, size, size) with square images, got {p.shape}")
    if not np.issubdtype(p.dtype, np.floating):
        p = p.astype(np.float64)
    if not np.all(np.isfinite(p)):
        raise InputError(f"{name} contain NaN or infinite values; fix or drop those images first")
    params = _check_params(params)
    if len(params) not in (1, len(p)):
        raise InputError(f"got {len(p)} images but CTF parameters for {len(params)}; give one set per image (or one)")
    return p


def _filter(images, params, pixel_size, transfer, name="images"):
    """``irfft2(transfer(C) · rfft2(image))`` per image, batched; ``transfer(C, batch)`` -> weights."""
    p = _check_images(images, params, name)
    pixel_size = check_pixel_size(pixel_size)
    size = p.shape[-1]
    out = np.empty(p.shape, dtype=p.dtype)
    for start in range(0, len(p), _BATCH):
        batch = slice(start, min(start + _BATCH, len(p)))
        c = ctf_values(params.of_images(batch), size, pixel_size)
        spectrum = np.fft.rfft2(np.fft.ifftshift(p[batch], axes=(-2, -1)), axes=(-2, -1))
        spectrum *= transfer(c, batch)
        filtered = np.fft.irfft2(spectrum, s=(size, size), axes=(-2, -1))
        out[batch] = np.fft.fftshift(filtered, axes=(-2, -1))
    return out


def apply_ctf(images, params: CTFParams, pixel_size: float) -> np.ndarray:
    """The forward model ``C · P``: each image's spectrum times its CTF.

    Parameters
    ----------
    images : array_like, shape (N, size, size)
        Images indexed ``[y, x]``, centred at pixel ``size // 2`` (e.g. projections). Not modified.
    params : CTFParams
        ``N`` sets of parameters (or one, for every image).
    pixel_size : float
        Å per pixel.

    Returns
    -------
    ndarray, shape (N, size, size)
        The CTF-modulated images, of the input's float dtype (float64 for integer input).
    """
    return _filter(images, params, pixel_size, lambda c, batch: c)


def phase_flip(images, params: CTFParams, pixel_size: float) -> np.ndarray:
    """Phase flipping: each image's spectrum times ``sign(C)`` (``+1`` where ``C = 0``, as RELION).

    Flipping twice gives the image back (up to rounding); the amplitudes are unchanged. Arguments
    and result as in :func:`apply_ctf`.
    """
    return _filter(images, params, pixel_size, lambda c, batch: np.where(c < 0, -1.0, 1.0))


def wiener_filter(images, params: CTFParams, pixel_size: float, snr) -> np.ndarray:
    """Wiener filtering: each image's spectrum times ``C / (C² + 1 / snr)``.

    Parameters
    ----------
    images, params, pixel_size
        As in :func:`apply_ctf`.
    snr : float or array_like of shape (N,)
        Signal-to-noise ratio (> 0) of the images, one for all or one per image; large values
        approach division by the CTF, small ones approach ``snr · C`` (CTF multiplication).

    Returns
    -------
    ndarray, shape (N, size, size)
        The filtered images, of the input's float dtype.
    """
    p = np.asarray(images)
    try:
        s = np.array(snr, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(f"snr must be a positive number (or one per image), got {snr!r:.80}") from None
    if s.ndim > 1 or (s.ndim == 1 and p.ndim == 3 and len(s) != len(p)):
        raise InputError(f"snr must be a scalar or have one value per image ({len(p)}), got shape {s.shape}")
    if not np.all(np.isfinite(s) & (s > 0)):
        raise InputError(f"snr must be positive and finite, got {snr!r:.80}")
    inverse = np.broadcast_to(1.0 / s, (len(p),) if p.ndim == 3 else ())

    def transfer(c, batch):
        noise = inverse[batch][:, None, None] if inverse.ndim else inverse
        return c / (c * c + noise)

    return _filter(images, params, pixel_size, transfer)
