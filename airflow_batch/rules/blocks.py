"""The content blocks a message may carry, as the API accepts them (msgspec types, told apart by ``type``).

Part of the request rules of :mod:`airflow_batch.rules.params`: a ``messages`` entry's
``content`` and the ``system`` prompt decode through these.

Pure: no I/O, no Airflow.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec


class CacheControl(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """``cache_control``: an ephemeral prompt-cache breakpoint, 5 minutes or 1 hour."""

    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class _Block(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    """A content block, told apart by its ``type``."""


class TextBlock(_Block, tag="text"):
    text: str
    cache_control: CacheControl | None = None
    citations: list[Any] | None = None


class _Source(msgspec.Struct, tag_field="type", forbid_unknown_fields=True, omit_defaults=True):
    """Where an image or document comes from, told apart by its ``type``."""


class Base64ImageSource(_Source, tag="base64"):
    media_type: Literal["image/jpeg", "image/png", "image/gif", "image/webp"]
    data: str


class UrlSource(_Source, tag="url"):
    url: str


class FileSource(_Source, tag="file"):
    file_id: str


class ImageBlock(_Block, tag="image"):
    source: Base64ImageSource | UrlSource | FileSource
    cache_control: CacheControl | None = None
    transformations: dict[str, Any] | None = None


class Base64PdfSource(_Source, tag="base64"):
    media_type: Literal["application/pdf"]
    data: str


class PlainTextSource(_Source, tag="text"):
    media_type: Literal["text/plain"]
    data: str


class ContentSource(_Source, tag="content"):
    content: str | list[TextBlock | ImageBlock]


class CitationsConfig(msgspec.Struct, forbid_unknown_fields=True):
    enabled: bool


class DocumentBlock(_Block, tag="document"):
    source: Base64PdfSource | PlainTextSource | ContentSource | UrlSource | FileSource
    title: str | None = None
    context: str | None = None
    citations: CitationsConfig | None = None
    cache_control: CacheControl | None = None


class SearchResultBlock(_Block, tag="search_result"):
    source: str
    title: str
    content: list[TextBlock]
    citations: CitationsConfig | None = None
    cache_control: CacheControl | None = None


class ThinkingBlock(_Block, tag="thinking"):
    thinking: str
    signature: str


class RedactedThinkingBlock(_Block, tag="redacted_thinking"):
    data: str


class ToolUseBlock(_Block, tag="tool_use"):
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None
    caller: Any = None
    toolset_name: str | None = None


class ToolResultBlock(_Block, tag="tool_result"):
    tool_use_id: str
    content: str | list[TextBlock | ImageBlock | SearchResultBlock | DocumentBlock] | None = None
    is_error: bool | None = None
    cache_control: CacheControl | None = None
    toolset_name: str | None = None


class ServerToolUseBlock(_Block, tag="server_tool_use"):
    id: str
    name: str
    input: dict[str, Any]
    cache_control: CacheControl | None = None
    caller: Any = None


class _ServerToolResult(_Block):
    tool_use_id: str
    content: Any
    cache_control: CacheControl | None = None
    caller: Any = None


class WebSearchToolResultBlock(_ServerToolResult, tag="web_search_tool_result"):
    pass


class WebFetchToolResultBlock(_ServerToolResult, tag="web_fetch_tool_result"):
    pass


class CodeExecutionToolResultBlock(_ServerToolResult, tag="code_execution_tool_result"):
    pass


class BashCodeExecutionToolResultBlock(_ServerToolResult, tag="bash_code_execution_tool_result"):
    pass


class TextEditorCodeExecutionToolResultBlock(_ServerToolResult, tag="text_editor_code_execution_tool_result"):
    pass


class ToolSearchToolResultBlock(_ServerToolResult, tag="tool_search_tool_result"):
    pass


class ContainerUploadBlock(_Block, tag="container_upload"):
    file_id: str
    cache_control: CacheControl | None = None


ContentBlock = (
    TextBlock
    | ImageBlock
    | DocumentBlock
    | SearchResultBlock
    | ThinkingBlock
    | RedactedThinkingBlock
    | ToolUseBlock
    | ToolResultBlock
    | ServerToolUseBlock
    | WebSearchToolResultBlock
    | WebFetchToolResultBlock
    | CodeExecutionToolResultBlock
    | BashCodeExecutionToolResultBlock
    | TextEditorCodeExecutionToolResultBlock
    | ToolSearchToolResultBlock
    | ContainerUploadBlock
)
BLOCK_TYPES = sorted(
    block.__struct_config__.tag  # type: ignore[misc]
    for block in ContentBlock.__args__  # type: ignore[attr-defined]
)
