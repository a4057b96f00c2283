"""Depth Space: a base depth model beside the same model with LoRA adapters, plus 16-bit PNG / .npy / .ply files.

Run alone with `python spaces/depth/app.py`, or with every other Space under `hubkit serve`.
Models load on the first request, not at import; the logic lives in hubkit.spaces_support.DepthDemo.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from gradio_client import handle_file

from hubkit.errors import HubkitError, InvalidImageError
from hubkit.gradio_fixes import atomic_cache_writes
from hubkit.spaces_support import (
    DEPTH_TASK,
    DepthDemo,
    back_link,
    build_time_menus,
    check_upload,
    clean_on_shutdown,
    parse_intrinsics,
    query_choice,
)
from hubkit.tasks import get_task

EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / "examples").glob("*.png"))
EXAMPLE_URL = "https://raw.githubusercontent.com/gradio-app/gradio/main/test/test_files/bus.png"
MAX_BATCH = 8  # requests per forward pass (each brings its base row and one row per adapter)
IMAGE_FORMAT = "png"
depth = DepthDemo(max_batch_size=MAX_BATCH)


def menus(base: str | None = None, request: gr.Request = None):
    """Bases and adapters in the store, for the two dropdowns; `?base=&adapter=` in the URL preselects them."""
    bases = depth.available_bases()
    linked = base is None  # the page load; a refresh passes the current base and keeps it
    base = (linked and query_choice(request, "base", bases)) or (base if base in bases else bases[0])
    wanted = query_choice(request, "adapter", depth.available_adapters(base)) if linked else None
    return gr.Dropdown(choices=bases, value=base), adapters_for(base, wanted)


def adapters_for(base: str | None, wanted: str | None = None):
    """The adapters trained on `base`; `wanted` (when offered) or the first is preselected so a first Run
    already compares."""
    adapters = depth.available_adapters(base)
    return gr.Dropdown(choices=adapters, value=[wanted] if wanted in adapters else adapters[:1])


def preview(image):
    """The upload as the model will see it (16-bit, greyscale and RGBA converted), or a clear error now."""
    if image is None:
        return None
    try:
        return check_upload(image)
    except InvalidImageError as err:
        raise gr.Error(f"{err}", title="Not a usable image") from None


def make_predict(batch: bool):
    """The Run handler. batch=True: requests arriving together share forward passes (depth.submit, a micro-batcher
    that answers each request on its own, so one bad upload never fails its neighbours); False: one at a time."""

    def predict(image, base, adapters, fx, fy, cx, cy, make_files=False):
        try:
            request = depth.check(image, base, adapters or [], parse_intrinsics(fx, fy, cx, cy), files=make_files)
            if not depth.is_loaded(request.base):
                gr.Info(f"Loading {request.base}: the first request loads the model (a few seconds; later ones don't).")
            result = depth.submit(request, batch=batch)
        except InvalidImageError as err:
            raise gr.Error(f"{err}", title="Not a usable image") from None
        except HubkitError as err:
            raise gr.Error(
                f"{err} Pick another base or adapter, or run `hubkit bootstrap` for offline demo models."
            ) from None
        first = result["adapted_id"]
        others = [(img, name) for name, img in result["adapters"].items() if name != first]
        # Plain values, not component updates: an update makes gradio rebuild the component's config on every
        # request, and the browser's run history shows an update's image as a broken thumbnail. The labels follow
        # in `label_outputs`, a browser-only step.
        return (
            result["base"],
            result["adapted"],
            others or None,
            [str(p) for p in result["files"]] or None,
            depth.summary(result),
        )

    return predict


def label_outputs(adapters):
    """After a Run in the browser: the Adapted panel names its adapter; "Other adapters" shows when there are."""
    adapters = [a for a in (adapters or []) if isinstance(a, str) and a]
    first = adapters[0] if adapters else None
    return (
        gr.Image(label=f"Adapted: {first}" if first else "Adapted (pick an adapter)"),
        gr.Gallery(visible=len(adapters) > 1),
    )


def loading_note(base):
    """A status line before Run answers: the first request for a base loads it, which takes seconds."""
    if base and not depth.is_loaded(base):
        return f"⏳ Loading `{base}`: the first request loads the model (a few seconds), later ones reuse it."
    return "⏳ Running…"


def _string_api(component, *, many: bool, example):
    """API docs type the menu as plain strings with a real example: its build-time choices go stale as the store
    changes (or are empty, and gradio would show `Literal[]`). What a request may load is checked in hubkit."""
    schema = {"type": "string"}
    component.api_info = lambda: {"type": "array", "items": schema} if many else schema
    component.example_payload = component.example_value = lambda: example
    return component


def _clear_number(component):
    """A number field whose API value is not a number gets a one-line message, not gradio's generic error."""
    preprocess = component.preprocess

    def checked(payload):
        try:
            return preprocess(payload)
        except (TypeError, ValueError):
            raise gr.Error(f"{component.label} must be a number (pixels) or empty; got {payload!r}.") from None

    component.preprocess = checked
    return component


def build_demo(batch: bool = True, concurrency_limit: int = 2 * MAX_BATCH) -> gr.Blocks:
    """The Space. `batch`: concurrent Run requests share forward passes (up to 8, mixed adapters); False runs each
    request's pass alone. `concurrency_limit`: Run requests handled at once (1 is gradio's default: one request at a
    time, upload decoding and image encoding included). The last two are for comparison: the API is the same."""
    atomic_cache_writes()  # concurrent identical answers share a cache file: never hand out a half-written one
    default_base = get_task(DEPTH_TASK).default_base
    base_choices, adapter_choices = build_time_menus(depth.available_bases, depth.available_adapters)
    with gr.Blocks(title="hubkit · depth") as demo:
        gr.HTML(back_link(), elem_id="hubkit-back")
        gr.Markdown(
            "# Depth estimation with LoRA adapters\n"
            "Upload a photo or pick an example, choose a base model and one or more adapters, and compare the "
            "base's depth map with the adapted one. Warm colours are near. The first Run loads the model "
            "(a few seconds)."
        )
        with gr.Row():
            with gr.Column(scale=1):
                # A file input, not gr.Image: gr.Image decodes uploads before our code runs, so a broken file
                # would end in an opaque server error instead of the message check_upload gives.
                image = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="depth-upload")
                # gr.File's API example is a PDF; ours is a photo (the one gr.Image's docs use).
                image.example_payload = lambda: handle_file(EXAMPLE_URL)
                image.example_value = lambda: EXAMPLE_URL
                shown = gr.Image(label="Input", interactive=False, height=240, format="png")
                gr.Examples(examples=EXAMPLES, inputs=image, cache_examples=False)
                with gr.Row():
                    # allow_custom_value: the menus refill on page load, and gradio 6 checks a value against the
                    # choices its session has seen. What a request may load is checked in hubkit (the allow-lists).
                    base = gr.Dropdown(
                        label="Base model", choices=base_choices, value=None, allow_custom_value=True, scale=4
                    )
                    refresh = gr.Button("↻ Refresh", scale=1, min_width=60)
                adapters = gr.Dropdown(
                    label="Adapters", choices=adapter_choices, value=[], multiselect=True, allow_custom_value=True
                )
                _string_api(base, many=False, example=default_base)
                _string_api(adapters, many=True, example=[])
                with gr.Accordion("Camera intrinsics (for a point cloud)", open=False):
                    gr.Markdown("Pixels. Leave cx / cy empty for the image centre; leave fx / fy empty for no .ply.")
                    with gr.Row():
                        fx = gr.Number(label="fx", value=None, minimum=0)
                        fy = gr.Number(label="fy", value=None, minimum=0)
                        cx = gr.Number(label="cx", value=None)
                        cy = gr.Number(label="cy", value=None)
                    for number in (fx, fy, cx, cy):
                        _clear_number(number)
                make_files = gr.Checkbox(
                    label="Make download files (16-bit PNG, .npy)", value=False, elem_id="depth-make-files"
                )
                run = gr.Button("Run", variant="primary")
            with gr.Column(scale=2):
                with gr.Row(equal_height=True):
                    base_out = gr.Image(label="Base", type="numpy", format=IMAGE_FORMAT, elem_id="depth-base")
                    adapted_out = gr.Image(label="Adapted", type="numpy", format=IMAGE_FORMAT, elem_id="depth-adapted")
                # Two columns, like Base / Adapted above; "contain" keeps the legend and the caption whole.
                more = gr.Gallery(
                    label="Other adapters", visible=False, columns=2, format=IMAGE_FORMAT, object_fit="contain",
                    height="auto", elem_id="depth-more",
                )  # fmt: skip
                info = gr.Markdown(label="Summary", elem_id="depth-info")
                files = gr.File(
                    label="Downloads (tick “Make download files”)", file_count="multiple", elem_id="depth-files"
                )

        image.change(preview, inputs=image, outputs=shown, api_name="preview")
        demo.load(menus, outputs=[base, adapters], api_name="menus")
        refresh.click(menus, inputs=base, outputs=[base, adapters], api_name="refresh")
        base.input(adapters_for, inputs=base, outputs=adapters, api_name="adapters")
        run.click(loading_note, inputs=base, outputs=info, queue=False, api_visibility="private").then(
            make_predict(batch),
            inputs=[image, base, adapters, fx, fy, cx, cy, make_files],
            outputs=[base_out, adapted_out, more, files, info],
            api_name="predict",
            # batch: enough requests in flight to fill a pass of 8 while the previous one runs; the model itself
            # is used by one pass at a time (the pool's lease). Unbatched: the same limit, passes one by one.
            concurrency_limit=concurrency_limit,
        ).success(label_outputs, inputs=adapters, outputs=[adapted_out, more], queue=False, api_visibility="private")
    clean_on_shutdown(demo, depth.outputs)  # the request folders go when the server stops
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.launch()
