"""Visual search Space: "take a photo, find similar items" over a garment catalogue (FastAPI + a plain JS page).

Run alone with `uvicorn spaces.search.app:app` (from the repository root) or `python spaces/search/app.py`, or
with every other Space under `hubkit serve` (at /spaces/search/). The model and the index load in the
background when the server starts (GET api/health answers 503 until then); all the logic is hubkit.search.
"""

from __future__ import annotations

import os
from pathlib import Path

from hubkit.search import create_app

STATIC = Path(__file__).resolve().parent / "static"
app = create_app(
    static_dir=STATIC,
    max_upload_bytes=int(float(os.environ.get("HUBKIT_SEARCH_MAX_UPLOAD_MB", "8")) * 1024 * 1024),
)

if __name__ == "__main__":
    import uvicorn

    uvicorn.run(app, host=os.environ.get("HOST", "127.0.0.1"), port=int(os.environ.get("PORT", "7860")))
