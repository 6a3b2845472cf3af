from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ImageKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    IMAGE_KIND_UNSPECIFIED: _ClassVar[ImageKind]
    IMAGE_KIND_AVATAR: _ClassVar[ImageKind]
    IMAGE_KIND_POST: _ClassVar[ImageKind]
IMAGE_KIND_UNSPECIFIED: ImageKind
IMAGE_KIND_AVATAR: ImageKind
IMAGE_KIND_POST: ImageKind

class RenderImageRequest(_message.Message):
    __slots__ = ("prompt", "style", "seed", "width", "height", "kind")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    STYLE_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    style: str
    seed: int
    width: int
    height: int
    kind: ImageKind
    def __init__(self, prompt: _Optional[str] = ..., style: _Optional[str] = ..., seed: _Optional[int] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., kind: _Optional[_Union[ImageKind, str]] = ...) -> None: ...

class RenderImageReply(_message.Message):
    __slots__ = ("png", "width", "height", "mime_type", "renderer", "seed", "render_ms")
    PNG_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    MIME_TYPE_FIELD_NUMBER: _ClassVar[int]
    RENDERER_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    RENDER_MS_FIELD_NUMBER: _ClassVar[int]
    png: bytes
    width: int
    height: int
    mime_type: str
    renderer: str
    seed: int
    render_ms: int
    def __init__(self, png: _Optional[bytes] = ..., width: _Optional[int] = ..., height: _Optional[int] = ..., mime_type: _Optional[str] = ..., renderer: _Optional[str] = ..., seed: _Optional[int] = ..., render_ms: _Optional[int] = ...) -> None: ...
