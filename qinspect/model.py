"""The normalised checkpoint: frozen dataclasses and enums, no I/O, no torch.

A loader turns a file into a :class:`Checkpoint`. Every key of the file ends up in
exactly one place: in a :class:`Layer` (with its :class:`Role`) or in
:attr:`Checkpoint.unrecognised`. Roles are decided by the loader, never at render time.

Quantization vocabulary follows PyTorch:

* affine quantization maps a real value ``x`` to an integer
  ``q = clamp(round(x / scale) + zero_point, qmin, qmax)`` and back as
  ``x' = (q - zero_point) * scale``;
* ``per_tensor_affine``: one ``scale`` / ``zero_point`` for the whole tensor;
* ``per_channel_affine``: one pair per slice along ``axis`` (output channels for weights);
* ``per_channel_affine_float_qparams``: per row, with a *float* zero point
  (weight-only embeddings): ``x' = (q - zero_point) * scale`` likewise.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import Enum
from typing import Protocol

import numpy as np


class Role(str, Enum):
    """What a key of the file means."""

    WEIGHT = "weight"
    """The layer's weight: int values + qparams when quantized, float otherwise."""
    WEIGHT_QPARAMS = "weight_qparams"
    """Scale / zero point a prepared model will quantize the weight with (fake-quant)."""
    BIAS = "bias"
    """Float bias; quantized at run time to int32 with scale = input_scale x weight_scale."""
    INPUT_QPARAMS = "input_qparams"
    """Scale / zero point that quantize the float input of the model (QuantStub)."""
    OUTPUT_QPARAMS = "output_qparams"
    """Scale / zero point of the layer's quantized output activation."""
    OBSERVER_STATS = "observer_stats"
    """Statistics an observer collected (min_val, max_val, eps, histogram)."""
    FAKE_QUANT_FLAGS = "fake_quant_flags"
    """``fake_quant_enabled`` / ``observer_enabled`` switches of a prepared model."""
    PACKED_DTYPE = "packed_dtype"
    """The dtype recorded beside packed params (``_packed_params.dtype``)."""
    NORM_STATS = "norm_stats"
    """BatchNorm running statistics."""
    PARAM = "param"
    """Another float parameter (normalisation affine weights, float layers)."""
    UNUSED = "unused"
    """Stored by torch but not used at run time (e.g. scale/zero_point of dynamic layers)."""
    WEIGHT_SCALE = "weight_scale"
    """A tensor that decodes a packed weight: scale, zero point, global scale, group index,
    shape or quant state (Hugging Face formats; its plain meaning is in ``PackedQuant``)."""
    KV_CACHE_QPARAMS = "kv_cache_qparams"
    """Scale of the attention key or value cache (``k_scale`` / ``v_scale``)."""


class Mode(str, Enum):
    """How a layer is quantized."""

    STATIC = "static"
    """Converted static quantization: int weights, fixed input and output qparams."""
    DYNAMIC = "dynamic"
    """Converted dynamic quantization: int weights, activations quantized per batch."""
    WEIGHT_ONLY = "weight_only"
    """Only the weight is quantized (embeddings); outputs are float."""
    QAT_PREPARED = "qat_prepared"
    """Prepared for QAT: float weights plus fake-quant modules; not converted yet."""
    PTQ_PREPARED = "ptq_prepared"
    """Prepared for post-training calibration: float weights plus observers."""
    QUANTIZE = "quantize"
    """A QuantStub after convert: quantizes the float input."""
    FLOAT = "float"
    """Not quantized."""


class SourceKind(str, Enum):
    """Where a layer's input quantization comes from."""

    QUANT_STUB = "quant_stub"
    PREVIOUS_LAYER = "previous_layer"
    DYNAMIC = "dynamic"
    NOT_QUANTIZED = "not_quantized"
    UNKNOWN = "unknown"
    OWN_SCALE = "own_scale"
    """The layer quantizes its float input itself with a stored static scale
    (``input_scale`` of Hugging Face W8A8 / FP8 checkpoints)."""


class OpKind(str, Enum):
    """What a layer computes, decided by the loader (``Layer.kind`` is the label shown)."""

    LINEAR = "linear"
    """``y = x W^T + b`` (nn.Linear, dynamic Linear, F.linear, HF Linear layers)."""
    CONV = "conv"
    """Convolution, 1-D to 3-D (Conv1d/2d/3d, fused ConvReLU, F.conv)."""
    CONV_TRANSPOSE = "conv_transpose"
    """Transposed convolution (weight ``[in, out/groups, k...]``, per-channel axis 1)."""
    EMBEDDING = "embedding"
    """A row lookup (Embedding, EmbeddingBag, HF token embeddings)."""
    RNN_GATES = "rnn_gates"
    """The input (ih) or hidden (hh) gates of one cell of an LSTM/GRU/RNN (see ``Layer.rnn``)."""
    BATCH_NORM = "batch_norm"
    """BatchNorm with running statistics (foldable into the conv before it)."""
    NORM = "norm"
    """Another normalisation with an affine weight (LayerNorm, GroupNorm, RMSNorm...)."""
    ACTIVATION = "activation"
    """An activation module with its own output qparams (Hardswish, ELU, Sigmoid...), or a
    prepared module whose output observer may belong to one (QuantStub, FloatFunctional)."""
    FUNCTIONAL = "functional"
    """A QFunctional module (FloatFunctional add/mul/cat after convert): several quantized
    inputs, one requantized output."""
    GRAPH_OP = "graph_op"
    """A quantized op with no module of its own, known from the graph or its buffers (FX
    ``torch.ops.quantized.add``..., an op written in a TorchScript archive's code)."""
    QUANTIZE = "quantize"
    """Quantizes a float tensor (QuantStub, FX ``quantize_per_tensor``, a requantize)."""
    ATTENTION_KV = "attention_kv"
    """Scales of an attention layer's key/value cache (no weight)."""
    EXPERTS = "experts"
    """A group of mixture-of-experts weights stored as one ``[E, O, I]`` tensor."""
    PARAMETERS = "parameters"
    """Loose float parameters of a module (attention sinks, biases alone...)."""
    OTHER = "other"
    """Anything else, including modules the file cannot tell apart (a 2-D float weight
    without bias may be a Linear or an Embedding); the label says what is known."""


class RnnCell(str, Enum):
    """The recurrent cell, from the gate count (rows of a gate weight / hidden size: 4, 3
    or 1); the value is torch's class name."""

    LSTM = "LSTM"
    GRU = "GRU"
    RNN = "RNN"


@dataclass(frozen=True)
class RnnGates:
    """Which gates of which recurrent cell a ``RNN_GATES`` layer holds."""

    cell: RnnCell
    gate: str
    """``ih`` (input-to-hidden) or ``hh`` (hidden-to-hidden)."""
    layer: int
    reverse: bool
    """The reverse direction of a bidirectional RNN."""

    @property
    def input_side(self) -> bool:
        return self.gate == "ih"


class Family(str, Enum):
    """Which kind of file a checkpoint was read from (``Checkpoint.format`` describes it)."""

    EAGER = "eager"
    """An eager-mode ``state_dict`` (torch.save)."""
    FX = "fx"
    """An FX graph mode ``state_dict`` (root buffers named after the ops they serve)."""
    FX_PICKLE = "fx_pickle"
    """A whole pickled FX ``GraphModule`` (torch.save(model)), read as data."""
    TORCHSCRIPT = "torchscript"
    """A TorchScript archive (torch.jit.save)."""
    EXPORT = "export"
    """A torch.export archive (.pt2), float or PT2E-quantized."""
    TORCHAO = "torchao"
    """A torchao ``quantize_`` state_dict (tensor subclasses)."""
    HUGGING_FACE = "hugging_face"
    """Hugging Face safetensors (a file, an index or a folder)."""


class Stage(str, Enum):
    """How far a checkpoint is through the quantization flow (the value is what is shown
    and written to JSON; render with ``.value``)."""

    FLOAT = "float"
    QAT_PREPARED = "qat-prepared"
    PTQ_PREPARED = "ptq-prepared"
    CONVERTED = "converted"

    @property
    def prepared(self) -> bool:
        return self in (Stage.QAT_PREPARED, Stage.PTQ_PREPARED)


class Level(str, Enum):
    INFO = "info"
    WARNING = "warning"


@dataclass(frozen=True)
class Note:
    """Something the loader or analysis wants a reader to look at."""

    level: Level
    message: str


@dataclass(frozen=True)
class KeyRef:
    """One key of the file and the role it plays in its layer."""

    key: str
    role: Role


# --- Granularity: which values share a scale --------------------------------------------
#
# Following torchao (``torchao/quantization/granularity.py``), granularity is data: the
# scale's shape follows from it. Torch-side weights (``TensorQuant``) and packed Hugging
# Face weights (``PackedQuant``) both describe their scale layout with it.


@dataclass(frozen=True)
class PerTensor:
    """One scale for the whole tensor: scale shape ``[1]`` or ``[]``."""

    def describe(self) -> str:
        return "per-tensor"


@dataclass(frozen=True)
class PerAxis:
    """One scale per slice along ``axis`` (per output channel for ``axis=0``): scale shape
    ``[O, 1]`` for a ``[O, I]`` weight."""

    axis: int

    def describe(self) -> str:
        return "per-channel" if self.axis == 0 else f"per-axis {self.axis}"


@dataclass(frozen=True)
class PerGroup:
    """One scale per group of ``size`` consecutive values along ``axis`` (``[O, I/size]``
    scales for a ``[O, I]`` weight and ``axis=1``). ``axis=None``: groups of ``size``
    consecutive values of the row-major flattened tensor, which may span rows
    (bitsandbytes blocks)."""

    size: int
    axis: int | None = 1

    def describe(self) -> str:
        where = "flattened" if self.axis is None else "along the input"
        return f"per-group of {self.size} ({where})"


@dataclass(frozen=True)
class PerBlock:
    """One scale per tile of ``shape`` (``[ceil(O/128), ceil(I/128)]`` scales for 128x128
    FP8 blocks; edge tiles are partial)."""

    shape: tuple[int, ...]

    def describe(self) -> str:
        return "per-block " + "x".join(map(str, self.shape))


Granularity = PerTensor | PerAxis | PerGroup | PerBlock


def axis_granularity(axis: int | None) -> Granularity:
    """torch's own schemes: per-channel along ``axis``, or per-tensor when it is None."""
    return PerTensor() if axis is None else PerAxis(axis)


@dataclass(frozen=True)
class TensorQuant:
    """How one tensor is quantized.

    ``scale`` and ``zero_point`` are 1-D arrays: length 1 for per-tensor schemes, one
    entry per slice along ``axis`` for per-channel schemes. Zero points are integers
    except for ``per_channel_affine_float_qparams``.
    """

    dtype: str
    qscheme: str
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None
    block_size: tuple[int, ...] | None = None
    """torchao block-wise quantization: one scale per block of this shape (e.g.
    ``(1, 32)``: per group of 32 along a row; ``(1, in_features)``: per row); ``scale``
    and ``zero_point`` are then flattened over the grid of blocks."""
    quant_min: int | None = None
    quant_max: int | None = None
    """Explicit integer range when the format records one (PT2E ``quant_min``/``quant_max``,
    e.g. -127..127 for symmetric XNNPACK weights); None: the dtype's full range."""
    granularity: Granularity = field(kw_only=True)
    """The scale layout as data, decided by the loader: per-tensor or per-axis for torch's
    schemes (:func:`axis_granularity`); for torchao blocks, per-tensor, per-axis 0 (blocks
    ``(1, I)``), per-group (``(1, g)``) or per-block."""

    @property
    def per_channel(self) -> bool:
        return self.axis is not None


@dataclass(frozen=True)
class Weight:
    """A layer's weight as stored.

    ``values`` holds the integer values (``q``) when ``quant`` is set and the stored
    weight is quantized, and float values otherwise (float layers, and prepared layers
    whose ``quant`` describes the fake-quant that *will* be applied).
    """

    key: str
    shape: tuple[int, ...]
    stored_dtype: str
    values: np.ndarray
    quant: TensorQuant | None = None
    declared_dtype: str | None = None

    @property
    def is_quantized(self) -> bool:
        return self.quant is not None and self.stored_dtype == self.quant.dtype


class ScaleOp(str, Enum):
    """How a stored scale is applied when dequantizing."""

    MULTIPLY = "multiply"
    """``x = code * scale`` (every per-group / per-channel scale of every format)."""
    DIVIDE = "divide"
    """``x = code * (scale / global_scale)``: compressed-tensors stores NVFP4 global scales
    as divisors (``weight_global_scale``, ``input_global_scale``)."""


@dataclass(frozen=True)
class ActQuant:
    """Per-tensor activation quantization: an activation byte ``q`` means
    ``(q - zero_point) * scale``."""

    scale: float
    zero_point: int
    dtype: str
    dtype_assumed: bool
    keys: tuple[str, ...]
    op: ScaleOp = ScaleOp.MULTIPLY
    """DIVIDE: the stored value is a divisor (compressed-tensors NVFP4 ``input_global_scale``)."""

    def real_range(self, qmin: int, qmax: int) -> tuple[float, float]:
        return ((qmin - self.zero_point) * self.scale, (qmax - self.zero_point) * self.scale)


@dataclass(frozen=True)
class ObserverStats:
    """What an observer saw (prepared models): the real range of a tensor."""

    min_val: np.ndarray
    max_val: np.ndarray
    keys: tuple[str, ...]


@dataclass(frozen=True)
class InputSource:
    kind: SourceKind
    layer: str | None
    inferred: bool
    explanation: str


@dataclass(frozen=True)
class Layer:
    """One module of the checkpoint with everything the file says about it."""

    name: str
    kind: str
    """The label shown to people (``Linear``, ``ConvReLU2d``, ``LSTM gates (ih)``...);
    decisions use ``op`` and the typed details below, never this text."""
    op: OpKind
    mode: Mode
    keys: tuple[KeyRef, ...]
    weight: Weight | None = None
    bias: np.ndarray | None = None
    bias_key: str | None = None
    input: ActQuant | None = None
    input_source: InputSource | None = None
    output: ActQuant | None = None
    output_observer: ObserverStats | None = None
    weight_observer: ObserverStats | None = None
    converts_to: tuple[tuple[str, str], ...] = ()
    notes: tuple[Note, ...] = ()
    extras: Mapping[str, np.ndarray] = field(default_factory=dict)
    """Raw values of keys that have a role but no field of their own, by local key name:
    ``running_mean`` / ``running_var`` of a BatchNorm (role NORM_STATS), and
    ``weight_fake_quant.observer_enabled`` / ``weight_fake_quant.fake_quant_enabled``
    of a QAT layer (role FAKE_QUANT_FLAGS)."""
    missing_keys: tuple[str, ...] = ()
    """Keys torch's own module of this type needs to load (its ``_load_from_state_dict``)
    that the file lacks: ``load_state_dict(strict=True)`` fails on them."""
    missing_error: str = ""
    """What torch raises for the first missing key, e.g. ``KeyError: 'fc1.zero_point'``
    (modules that read their keys by hand) or ``RuntimeError: ... Missing key(s) in
    state_dict: "bn.weight"`` (parameters and buffers); "" when nothing is missing."""

    packed: PackedWeight | None = None
    """A packed / float-coded weight (Hugging Face formats); ``weight`` is None then."""

    fused_relu: bool = False
    """The file says a ReLU is fused into the op (its class is ``ConvReLU2d``,
    ``LinearReLU``...); False when unknown (an eager state_dict stores the same keys)."""
    functional: bool = False
    """Called as a function on a stored packed weight (FX ``F.linear`` / ``F.conv``), not
    through a module."""
    rnn: RnnGates | None = None
    """``RNN_GATES`` layers: the cell type, gate side, layer index and direction."""
    tensor_class: str | None = None
    """torchao: the tensor subclass holding the weight (``Int8Tensor``,
    ``IntxUnpackedToInt8Tensor``...)."""

    @property
    def quantized(self) -> bool:
        return self.mode not in (Mode.FLOAT,)


@dataclass(frozen=True)
class Unrecognised:
    """A key qinspect could not attribute: reported, never dropped."""

    key: str
    description: str
    reason: str


@dataclass(frozen=True)
class DeadWeight:
    """A stored tensor nothing reads: ``nbytes`` is what it costs on disk."""

    key: str
    shape: tuple[int, ...]
    dtype: str
    nbytes: int
    reason: str


@dataclass(frozen=True)
class HFInfo:
    """What a Hugging Face checkpoint's config says about its quantization."""

    method: str | None
    """``quant_method`` (None: no config; the format was inferred from tensor names)."""
    producer: str | None
    config_source: str
    model_dtype: str
    shards: tuple[str, ...]
    index: str | None
    quantization_config: Mapping[str, object] = field(default_factory=dict)
    ignored: tuple[str, ...] = ()
    """Patterns of modules the config leaves unquantized (``ignore``,
    ``modules_to_not_convert``, ``llm_int8_skip_modules``...)."""


@dataclass(frozen=True)
class Checkpoint:
    """A normalised checkpoint: what a loader hands to the analyses."""

    path: str
    format: str
    """What the file is, for people (``eager state_dict``, ``TorchScript archive (...)``)."""
    family: Family
    stage: Stage
    file_size: int
    layers: tuple[Layer, ...]
    unrecognised: tuple[Unrecognised, ...] = ()
    wrapper: str | None = None
    module_order_known: bool = False
    notes: tuple[Note, ...] = field(default_factory=tuple)
    dead_weights: tuple[DeadWeight, ...] = ()
    order: str | None = None
    """How ``layers`` are ordered when the file says more than module registration order
    (e.g. "graph order (forward in the archive's code)"); None: see module_order_known."""
    """Tensors stored in the file that the graph never reads (PT2E keeps the float weights
    beside the int8 ones it uses); their keys are also attributed with role UNUSED."""

    hf: HFInfo | None = None
    """Hugging Face checkpoints: producer, config and shards."""

    def layer(self, name: str) -> Layer:
        for layer in self.layers:
            if layer.name == name:
                return layer
        raise KeyError(name)

    @property
    def all_keys(self) -> list[str]:
        keys = [ref.key for layer in self.layers for ref in layer.keys]
        return keys + [u.key for u in self.unrecognised]


# --- Quantization vocabulary for packed / float-coded weights (Hugging Face formats) ----
#
# A weight is stored as *codes* of an :class:`ElementType` (int4, float8_e4m3fn, nf4...),
# grouped by a :class:`Granularity` (above), each group with a scale applied by a
# :class:`ScaleOp`.


class ElementKind(str, Enum):
    INT = "int"
    """Integer codes ``q`` in ``[qmin, qmax]``, real value ``(q - zero_point) * scale``."""
    FLOAT = "float"
    """Small floats (float8 e4m3, float4 e2m1): real value ``code * scale``."""
    CODEBOOK = "codebook"
    """Indices into a table of 2^bits values (NF4, bitsandbytes FP4): ``table[i] * scale``."""


@dataclass(frozen=True)
class ElementType:
    """What one stored code is: its kind, width and the range of its values."""

    name: str
    kind: ElementKind
    bits: int
    qmin: float
    qmax: float
    """Smallest and largest code value (ints) or representable value (floats, codebooks)."""

    @property
    def levels(self) -> int:
        return 1 << self.bits


@dataclass(frozen=True)
class QTensorRef:
    """One stored tensor of a quantized weight, with the role it plays in plain words."""

    key: str
    dtype: str
    shape: tuple[int, ...]
    meaning: str
    op: ScaleOp | None = None


class PackedScheme(str, Enum):
    """Which library's layout a packed weight is stored in (``PackedQuant.format`` is the
    label); set by ``qinspect.loaders.hf.formats``."""

    CT_INT = "compressed-tensors int"
    """compressed-tensors int-quantized / pack-quantized (signed codes, ``[O, I/g]`` scales)."""
    CT_FP8 = "compressed-tensors fp8"
    CT_NVFP4 = "compressed-tensors nvfp4"
    """NVFP4 whose global scale is a divisor."""
    CT_MXFP4 = "compressed-tensors mxfp4"
    MODELOPT_NVFP4 = "modelopt nvfp4"
    """NVFP4 whose second-level scale multiplies."""
    MODELOPT_FP8 = "modelopt fp8"
    FP8 = "fp8"
    """transformers FP8: per-tensor, per-channel or 128x128 blocks (``weight_scale_inv``)."""
    GPTOSS_MXFP4 = "gpt-oss mxfp4"
    """gpt-oss experts: ``blocks`` + ``scales``, stored ``[E, out, in/32, 16]``."""
    GPTQ_V1 = "gptq v1"
    """GPTQ with zero points stored as ``zero - 1``."""
    GPTQ_V2 = "gptq v2"
    AWQ_GEMM = "awq gemm"
    BNB_4BIT = "bitsandbytes 4-bit"
    BNB_INT8 = "bitsandbytes int8"
    """LLM.int8: int8 rows with ``SCB`` absmax (``weight_format`` layout flag)."""

    @property
    def gptq(self) -> bool:
        return self in (PackedScheme.GPTQ_V1, PackedScheme.GPTQ_V2)

    @property
    def scales_input_major(self) -> bool:
        """Scales stored ``[G, O]`` (groups along the input first): GPTQ and AWQ."""
        return self.gptq or self is PackedScheme.AWQ_GEMM


@dataclass(frozen=True)
class PackedQuant:
    """How a packed or float-coded weight (Hugging Face formats) decodes to real values.

    ``tensors`` lists every stored tensor of the weight (codes, scales, zero points,
    global scale, group index, shape, quant state) with its meaning; ``formula`` is the
    producing library's dequantization, with its rounding order.
    """

    format: str
    """The label shown (``GPTQ v1 (gptq)``, ``AWQ GEMM``...); decisions use ``scheme``."""
    scheme: PackedScheme
    element: ElementType
    granularity: Granularity
    symmetric: bool
    scale_dtype: str
    tensors: tuple[QTensorRef, ...]
    formula: str
    packing: str
    compute_dtype: str
    act_order: bool = False
    zero_point_offset: int = 0
    """Added to every stored zero point when decoding (GPTQ v1 stores ``zero - 1``)."""


class WeightSource(Protocol):
    """Reads a packed weight's values on demand (nothing is unpacked at load time)."""

    def codes(self) -> np.ndarray:
        """The stored codes, unpacked, in the weight's logical shape: signed or unsigned
        integers (INT), code values as float32 (FLOAT), or table indices (CODEBOOK)."""
        ...

    def scales(self) -> np.ndarray:
        """The effective scale of every group as float32, in its stored layout."""
        ...

    def zero_points(self) -> np.ndarray | None:
        """The effective zero point of every group (after any stored offset), or None."""
        ...

    def dequantize(self) -> np.ndarray:
        """Real values as float32, computed as the producing library computes them."""
        ...

    def element_scales(self) -> np.ndarray:
        """The effective scale of every value, in the weight's logical shape."""
        ...

    def element_zero_points(self) -> np.ndarray | None:
        """The effective zero point of every value (int formats with zero points)."""
        ...


@dataclass(frozen=True)
class PackedWeight:
    """A weight stored as packed or float codes plus scales (Hugging Face formats)."""

    key: str
    shape: tuple[int, ...]
    """Logical shape: ``[O, I]`` for a Linear, ``[E, O, I]`` for a group of experts."""
    stored_dtype: str
    nbytes: int
    """Bytes on disk of every tensor of the weight (codes, scales, zero points...)."""
    quant: PackedQuant
    source: WeightSource = field(compare=False, repr=False)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n
