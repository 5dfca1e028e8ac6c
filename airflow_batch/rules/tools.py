"""The ``tools`` a request may declare: Anthropic-defined (server) tools by type, and custom tools.

Part of the request rules of :mod:`airflow_batch.rules.params`: a ``tools`` entry is checked
here rather than by a type, so that a job sending beta headers can let a tool type this table
does not know yet pass.

Pure: no I/O, no Airflow.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

#: Anthropic-defined tools by ``type``, with the ``name`` each must carry.
SERVER_TOOL_NAMES: dict[str, str] = {
    **{f"web_search_{v}": "web_search" for v in ("20250305", "20260209", "20260318")},
    **{f"web_fetch_{v}": "web_fetch" for v in ("20250910", "20260209", "20260309", "20260318")},
    **{f"code_execution_{v}": "code_execution" for v in ("20250522", "20250825", "20260120", "20260521")},
    "bash_20250124": "bash",
    "memory_20250818": "memory",
    "text_editor_20250124": "str_replace_based_edit_tool",
    "text_editor_20250429": "str_replace_based_edit_tool",
    "text_editor_20250728": "str_replace_based_edit_tool",
    "tool_search_tool_bm25_20251119": "tool_search_tool_bm25",
    "tool_search_tool_bm25": "tool_search_tool_bm25",
    "tool_search_tool_regex_20251119": "tool_search_tool_regex",
    "browser_toolset_20260801": "browser",
    "computer_toolset_20260801": "computer",
}
_TOOL_NAME = re.compile(r"[a-zA-Z0-9_-]{1,128}")
_CUSTOM_TOOL_KEYS = frozenset(
    {
        "type",
        "name",
        "description",
        "input_schema",
        "cache_control",
        "strict",
        "defer_loading",
        "eager_input_streaming",
        "input_examples",
        "allowed_callers",
    }
)


def check_tool(tool: Any, *, lenient: bool) -> str | None:
    """Return why one ``tools`` entry is not a tool the API accepts, or None."""
    if not isinstance(tool, Mapping):
        return "must be an object"
    kind = tool.get("type")
    if kind in SERVER_TOOL_NAMES:
        expected = SERVER_TOOL_NAMES[kind]
        if tool.get("name") != expected:
            return f"a {kind} tool must be named {expected!r}, got {tool.get('name')!r}"
        return None
    if kind not in (None, "custom"):
        if lenient:
            return None
        return (
            f"type {kind!r} is not a tool type the API knows (custom tools need no type; server tools "
            "are e.g. web_search_20250305, web_fetch_20250910, code_execution_20250825); if a beta adds "
            "it, pass betas= so the job sends the beta header"
        )
    name = tool.get("name")
    if not isinstance(name, str) or not _TOOL_NAME.fullmatch(name):
        return f"name must match ^[a-zA-Z0-9_-]{{1,128}}$, got {name!r}"
    schema = tool.get("input_schema")
    if not isinstance(schema, Mapping) or schema.get("type") != "object":
        return f"tool {name!r}: input_schema must be a JSON Schema object with type 'object'"
    unknown = sorted(set(tool) - _CUSTOM_TOOL_KEYS)
    if unknown and not lenient:
        return f"tool {name!r}: unknown field {unknown[0]!r}"
    if "description" in tool and not isinstance(tool["description"], str):
        return f"tool {name!r}: description must be a string"
    return None


# ---- the rules a type cannot state -----------------------------------------------------------
