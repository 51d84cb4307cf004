from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional

DESCRIPTOR: _descriptor.FileDescriptor

class GetModelRequest(_message.Message):
    __slots__ = ("min_version", "chunk_bytes")
    MIN_VERSION_FIELD_NUMBER: _ClassVar[int]
    CHUNK_BYTES_FIELD_NUMBER: _ClassVar[int]
    min_version: int
    chunk_bytes: int
    def __init__(self, min_version: _Optional[int] = ..., chunk_bytes: _Optional[int] = ...) -> None: ...

class ModelChunk(_message.Message):
    __slots__ = ("newer", "version", "total_bytes", "offset", "data", "sha256")
    NEWER_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    newer: bool
    version: int
    total_bytes: int
    offset: int
    data: bytes
    sha256: str
    def __init__(self, newer: bool = ..., version: _Optional[int] = ..., total_bytes: _Optional[int] = ..., offset: _Optional[int] = ..., data: _Optional[bytes] = ..., sha256: _Optional[str] = ...) -> None: ...
