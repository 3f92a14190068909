"""Instruction data (the shape of OIG/COIG that FLM-101B mixed into pre-training): which parts of a sample
take the loss.

Two JSONL forms, besides ``{"prompt", "completion"}``:
- ``{"prompt": ..., "response": ...}``: the response (and the EOS after it) is trained on, the prompt not;
- ``{"messages": [{"role": "system"|"user"|"assistant", "content": ...}, ...]}``: rendered as
  "System: ...", "User: ...", "Assistant: ..." turns; only the assistants' contents (and the final EOS) are
  trained on. Message text is always plain text: a "<|endoftext|>" inside it is not the EOS token.
"""

from __future__ import annotations

from typing import Any

from flm.errors import FlmError

ROLES = {"system": "System", "user": "User", "assistant": "Assistant"}


def chat_segments(messages: Any, loc: str) -> list[tuple[str, bool]]:
    """(text, supervised) segments of a chat; the sample ends with an assistant turn."""
    if not isinstance(messages, list) or not messages:
        raise FlmError(f'{loc}: "messages" must be a non-empty list of {{"role", "content"}} objects')
    out: list[tuple[str, bool]] = []
    for i, m in enumerate(messages):
        role = m.get("role") if isinstance(m, dict) else None
        content = m.get("content") if isinstance(m, dict) else None
        if role not in ROLES or not isinstance(content, str):
            raise FlmError(
                f'{loc}: messages[{i}] must be {{"role": "system"|"user"|"assistant", "content": "..."}}, got {m!r:.60}'
            )
        head = ("\n\n" if out else "") + f"{ROLES[role]}:"
        if role == "assistant":
            out += [(head, False), (" " + content, True)]
        else:
            out.append((f"{head} {content}", False))
    if messages[-1]["role"] != "assistant":
        raise FlmError(f"{loc}: the last message must be the assistant's (the part that is trained on)")
    return out
