"""Keep Hugging Face tokens out of every log line hubkit or its libraries write."""

from __future__ import annotations

import logging
import os
import re

_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{8,}\b")


def redact(text: str) -> str:
    text = _TOKEN.sub("hf_***", text)
    secret = os.environ.get("HF_TOKEN")
    if secret and len(secret) >= 8:
        text = text.replace(secret, "***")
    return text


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True


def install_redaction() -> None:
    """Add the filter to every handler of the root logger (idempotent)."""
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
