"""Fixes to gradio 6.31 (the pinned version) that the Spaces need; re-check them when the pin moves.

Each replaces a `gradio.processing_utils` function that gradio looks up at call time, once per process.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

_lock = threading.Lock()


def atomic_cache_writes() -> None:
    """Gradio saves every returned image to `<cache>/<hash of its bytes>/image.<format>`, rewriting the file on each
    request (truncate, then write): when concurrent requests return the same image, a client downloading it while
    another request rewrites it gets a cut-off file. Here a file already there (same name, so same bytes) is left
    alone, and a new one appears whole (written beside, then renamed)."""
    from gradio import processing_utils

    with _lock:
        if getattr(processing_utils.save_pil_to_cache, "hubkit_atomic", False):
            return

        def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
            data = processing_utils.encode_pil_to_bytes(img, format)
            folder = Path(cache_dir) / processing_utils.hash_bytes(data)
            folder.mkdir(exist_ok=True, parents=True)
            target = (folder / f"{name}.{format}").resolve()
            if not (target.is_file() and target.stat().st_size == len(data)):
                partial = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.part")
                partial.write_bytes(data)
                os.replace(partial, target)
            return str(target)

        save_pil_to_cache.hubkit_atomic = True
        save_pil_to_cache.gradio_original = processing_utils.save_pil_to_cache
        processing_utils.save_pil_to_cache = save_pil_to_cache


def upload_check_without_server_paths() -> None:
    """Gradio refuses a file path a client names that it did not upload, in a message naming the absolute path it
    resolved, i.e. the server's working directory; answer with the path as the client sent it (gradio 6.31's
    `processing_utils._check_allowed`, looked up at call time)."""
    from gradio import processing_utils
    from gradio.exceptions import InvalidPathError

    check = processing_utils._check_allowed
    if getattr(check, "hubkit_wrapped", False):
        return

    def checked(path, check_in_upload_folder: bool):
        try:
            return check(path, check_in_upload_folder)
        except InvalidPathError:
            reason = "it was not uploaded by a user" if check_in_upload_folder else "it is outside the allowed folders"
            raise InvalidPathError(f"Cannot use the file {str(path)!r}: {reason}.") from None

    checked.hubkit_wrapped = True
    processing_utils._check_allowed = checked
