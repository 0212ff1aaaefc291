from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tensor(_message.Message):
    __slots__ = ("shape", "values", "raw")
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    shape: _containers.RepeatedScalarFieldContainer[int]
    values: _containers.RepeatedScalarFieldContainer[float]
    raw: bytes
    def __init__(self, shape: _Optional[_Iterable[int]] = ..., values: _Optional[_Iterable[float]] = ..., raw: _Optional[bytes] = ...) -> None: ...

class ModelRef(_message.Message):
    __slots__ = ("name", "version")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ...) -> None: ...

class PredictRequest(_message.Message):
    __slots__ = ("model", "inputs")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    inputs: Tensor
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class PredictResponse(_message.Message):
    __slots__ = ("model", "weights", "means", "scales")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    MEANS_FIELD_NUMBER: _ClassVar[int]
    SCALES_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    weights: Tensor
    means: Tensor
    scales: Tensor
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., weights: _Optional[_Union[Tensor, _Mapping]] = ..., means: _Optional[_Union[Tensor, _Mapping]] = ..., scales: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SampleRequest(_message.Message):
    __slots__ = ("model", "inputs", "num_samples", "seed", "temperature", "scale_temperature")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    SCALE_TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    inputs: Tensor
    num_samples: int
    seed: int
    temperature: float
    scale_temperature: float
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., num_samples: _Optional[int] = ..., seed: _Optional[int] = ..., temperature: _Optional[float] = ..., scale_temperature: _Optional[float] = ...) -> None: ...

class SampleResponse(_message.Message):
    __slots__ = ("model", "samples")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SAMPLES_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    samples: Tensor
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., samples: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class ModesRequest(_message.Message):
    __slots__ = ("model", "inputs", "max_modes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    MAX_MODES_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    inputs: Tensor
    max_modes: int
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., inputs: _Optional[_Union[Tensor, _Mapping]] = ..., max_modes: _Optional[int] = ...) -> None: ...

class ModesResponse(_message.Message):
    __slots__ = ("model", "modes", "log_density", "mass", "num_modes")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    MODES_FIELD_NUMBER: _ClassVar[int]
    LOG_DENSITY_FIELD_NUMBER: _ClassVar[int]
    MASS_FIELD_NUMBER: _ClassVar[int]
    NUM_MODES_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    modes: Tensor
    log_density: Tensor
    mass: Tensor
    num_modes: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., modes: _Optional[_Union[Tensor, _Mapping]] = ..., log_density: _Optional[_Union[Tensor, _Mapping]] = ..., mass: _Optional[_Union[Tensor, _Mapping]] = ..., num_modes: _Optional[_Iterable[int]] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "versions", "input_dim", "output_dim", "components", "input_names", "output_names", "metadata_json")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    INPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_DIM_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    INPUT_NAMES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_NAMES_FIELD_NUMBER: _ClassVar[int]
    METADATA_JSON_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: str
    versions: _containers.RepeatedScalarFieldContainer[str]
    input_dim: int
    output_dim: int
    components: int
    input_names: _containers.RepeatedScalarFieldContainer[str]
    output_names: _containers.RepeatedScalarFieldContainer[str]
    metadata_json: str
    def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., versions: _Optional[_Iterable[str]] = ..., input_dim: _Optional[int] = ..., output_dim: _Optional[int] = ..., components: _Optional[int] = ..., input_names: _Optional[_Iterable[str]] = ..., output_names: _Optional[_Iterable[str]] = ..., metadata_json: _Optional[str] = ...) -> None: ...

class SolveRequest(_message.Message):
    __slots__ = ("model", "targets", "max_solutions", "refine", "tolerance", "seed", "num_samples", "orientation_tolerance", "seed_state")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TARGETS_FIELD_NUMBER: _ClassVar[int]
    MAX_SOLUTIONS_FIELD_NUMBER: _ClassVar[int]
    REFINE_FIELD_NUMBER: _ClassVar[int]
    TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    ORIENTATION_TOLERANCE_FIELD_NUMBER: _ClassVar[int]
    SEED_STATE_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    targets: Tensor
    max_solutions: int
    refine: bool
    tolerance: float
    seed: int
    num_samples: int
    orientation_tolerance: float
    seed_state: Tensor
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., targets: _Optional[_Union[Tensor, _Mapping]] = ..., max_solutions: _Optional[int] = ..., refine: _Optional[bool] = ..., tolerance: _Optional[float] = ..., seed: _Optional[int] = ..., num_samples: _Optional[int] = ..., orientation_tolerance: _Optional[float] = ..., seed_state: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...

class SolveResponse(_message.Message):
    __slots__ = ("model", "solutions", "position_error", "within_limits", "num_solutions", "status", "score", "orientation_error")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    SOLUTIONS_FIELD_NUMBER: _ClassVar[int]
    POSITION_ERROR_FIELD_NUMBER: _ClassVar[int]
    WITHIN_LIMITS_FIELD_NUMBER: _ClassVar[int]
    NUM_SOLUTIONS_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    ORIENTATION_ERROR_FIELD_NUMBER: _ClassVar[int]
    model: ModelRef
    solutions: Tensor
    position_error: Tensor
    within_limits: Tensor
    num_solutions: _containers.RepeatedScalarFieldContainer[int]
    status: _containers.RepeatedScalarFieldContainer[str]
    score: Tensor
    orientation_error: Tensor
    def __init__(self, model: _Optional[_Union[ModelRef, _Mapping]] = ..., solutions: _Optional[_Union[Tensor, _Mapping]] = ..., position_error: _Optional[_Union[Tensor, _Mapping]] = ..., within_limits: _Optional[_Union[Tensor, _Mapping]] = ..., num_solutions: _Optional[_Iterable[int]] = ..., status: _Optional[_Iterable[str]] = ..., score: _Optional[_Union[Tensor, _Mapping]] = ..., orientation_error: _Optional[_Union[Tensor, _Mapping]] = ...) -> None: ...
