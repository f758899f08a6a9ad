from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class TrackedUrlItem(_message.Message):
    __slots__ = ("campaign", "recipient", "url")
    CAMPAIGN_FIELD_NUMBER: _ClassVar[int]
    RECIPIENT_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    campaign: str
    recipient: str
    url: str
    def __init__(self, campaign: _Optional[str] = ..., recipient: _Optional[str] = ..., url: _Optional[str] = ...) -> None: ...

class MakeTrackedUrlsRequest(_message.Message):
    __slots__ = ("items", "sent_at")
    ITEMS_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    items: _containers.RepeatedCompositeFieldContainer[TrackedUrlItem]
    sent_at: int
    def __init__(self, items: _Optional[_Iterable[_Union[TrackedUrlItem, _Mapping]]] = ..., sent_at: _Optional[int] = ...) -> None: ...

class TrackedUrlResult(_message.Message):
    __slots__ = ("url", "error")
    URL_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    url: str
    error: str
    def __init__(self, url: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class MakeTrackedUrlsResponse(_message.Message):
    __slots__ = ("results",)
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    results: _containers.RepeatedCompositeFieldContainer[TrackedUrlResult]
    def __init__(self, results: _Optional[_Iterable[_Union[TrackedUrlResult, _Mapping]]] = ...) -> None: ...
