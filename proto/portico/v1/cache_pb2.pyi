from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class PurgeRequest(_message.Message):
    __slots__ = ("url", "prefix", "all")
    URL_FIELD_NUMBER: _ClassVar[int]
    PREFIX_FIELD_NUMBER: _ClassVar[int]
    ALL_FIELD_NUMBER: _ClassVar[int]
    url: str
    prefix: str
    all: bool
    def __init__(self, url: _Optional[str] = ..., prefix: _Optional[str] = ..., all: _Optional[bool] = ...) -> None: ...

class PurgeResponse(_message.Message):
    __slots__ = ("purged",)
    PURGED_FIELD_NUMBER: _ClassVar[int]
    purged: int
    def __init__(self, purged: _Optional[int] = ...) -> None: ...

class CacheStatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class CacheStatsResponse(_message.Message):
    __slots__ = ("objects", "bytes", "max_size", "blobs", "logical_bytes", "physical_bytes", "dedup_ratio", "hit_ratio", "bytes_saved", "counters")
    class CountersEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    OBJECTS_FIELD_NUMBER: _ClassVar[int]
    BYTES_FIELD_NUMBER: _ClassVar[int]
    MAX_SIZE_FIELD_NUMBER: _ClassVar[int]
    BLOBS_FIELD_NUMBER: _ClassVar[int]
    LOGICAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    DEDUP_RATIO_FIELD_NUMBER: _ClassVar[int]
    HIT_RATIO_FIELD_NUMBER: _ClassVar[int]
    BYTES_SAVED_FIELD_NUMBER: _ClassVar[int]
    COUNTERS_FIELD_NUMBER: _ClassVar[int]
    objects: int
    bytes: int
    max_size: int
    blobs: int
    logical_bytes: int
    physical_bytes: int
    dedup_ratio: float
    hit_ratio: float
    bytes_saved: int
    counters: _containers.ScalarMap[str, int]
    def __init__(self, objects: _Optional[int] = ..., bytes: _Optional[int] = ..., max_size: _Optional[int] = ..., blobs: _Optional[int] = ..., logical_bytes: _Optional[int] = ..., physical_bytes: _Optional[int] = ..., dedup_ratio: _Optional[float] = ..., hit_ratio: _Optional[float] = ..., bytes_saved: _Optional[int] = ..., counters: _Optional[_Mapping[str, int]] = ...) -> None: ...
