"""Depth Space: a base depth model beside the same model with LoRA adapters, plus 16-bit PNG / .npy / .ply files.

Run alone with `python spaces/depth/app.py`, or with every other Space under `hubkit serve`.
Models load on the first request, not at import; the logic lives in hubkit.spaces_support.DepthDemo.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from hubkit.errors import HubkitError, InvalidImageError
from hubkit.spaces_support import DepthDemo, check_upload, clean_on_shutdown, parse_intrinsics

EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / "examples").glob("*.png"))
depth = DepthDemo()


def menus(base: str | None = None):
    """Bases and adapters in the store, for the two dropdowns."""
    bases = depth.available_bases()
    base = base if base in bases else bases[0]
    return gr.Dropdown(choices=bases, value=base), adapters_for(base)


def adapters_for(base: str | None):
    """The adapters trained on `base`; the first is preselected so a first Run already compares."""
    adapters = depth.available_adapters(base)
    return gr.Dropdown(choices=adapters, value=adapters[:1])


def preview(image):
    """The upload as the model will see it (16-bit, greyscale and RGBA converted), or a clear error now."""
    if image is None:
        return None
    try:
        return check_upload(image)
    except InvalidImageError as err:
        raise gr.Error(f"{err}", title="Not a usable image") from None


def predict(image, base, adapters, fx, fy, cx, cy):
    try:
        result = depth.run(image, base, adapters or [], parse_intrinsics(fx, fy, cx, cy))
    except InvalidImageError as err:
        raise gr.Error(f"{err}", title="Not a usable image") from None
    except HubkitError as err:
        raise gr.Error(
            f"{err} Pick another base or adapter, or run `hubkit bootstrap` for offline demo models."
        ) from None
    first = result["adapted_id"]
    others = [(img, name) for name, img in result["adapters"].items() if name != first]
    return (
        result["base"],
        gr.Image(value=result["adapted"], label=f"Adapted: {first}" if first else "Adapted (pick an adapter)"),
        gr.Gallery(value=others or None, visible=bool(others)),
        [str(p) for p in result["files"]],
        depth.summary(result),
    )


def build_demo() -> gr.Blocks:
    with gr.Blocks(title="hubkit · depth") as demo:
        gr.Markdown(
            "# Depth estimation with LoRA adapters\n"
            "Upload a photo or pick an example, choose a base model and one or more adapters, and compare the "
            "base's depth map with the adapted one. Warm colours are near."
        )
        with gr.Row():
            with gr.Column(scale=1):
                # A file input, not gr.Image: gr.Image decodes uploads before our code runs, so a broken file
                # would end in an opaque server error instead of the message check_upload gives.
                image = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="depth-upload")
                shown = gr.Image(label="Input", interactive=False, height=240, format="png")
                gr.Examples(examples=EXAMPLES, inputs=image, cache_examples=False)
                with gr.Row():
                    # allow_custom_value: the menus fill on page load, and gradio 6 checks a value against the choices
                    # its session has seen. What a request may load is checked in hubkit (the allow-lists).
                    base = gr.Dropdown(label="Base model", choices=[], value=None, allow_custom_value=True, scale=4)
                    refresh = gr.Button("↻ Refresh", scale=1, min_width=60)
                adapters = gr.Dropdown(
                    label="Adapters", choices=[], value=[], multiselect=True, allow_custom_value=True
                )
                with gr.Accordion("Camera intrinsics (for a point cloud)", open=False):
                    gr.Markdown("Pixels. Leave cx / cy empty for the image centre; leave fx / fy empty for no .ply.")
                    with gr.Row():
                        fx = gr.Number(label="fx", value=None, minimum=0)
                        fy = gr.Number(label="fy", value=None, minimum=0)
                        cx = gr.Number(label="cx", value=None)
                        cy = gr.Number(label="cy", value=None)
                run = gr.Button("Run", variant="primary")
            with gr.Column(scale=2):
                with gr.Row():
                    base_out = gr.Image(label="Base", type="numpy", format="png", elem_id="depth-base")
                    adapted_out = gr.Image(label="Adapted", type="numpy", format="png", elem_id="depth-adapted")
                more = gr.Gallery(label="Other adapters", visible=False, columns=2, format="png")
                info = gr.Markdown()
                files = gr.File(label="Downloads: 16-bit PNG, .npy, .ply", file_count="multiple")

        image.change(preview, inputs=image, outputs=shown, api_name="preview")
        demo.load(menus, outputs=[base, adapters], api_name="menus")
        refresh.click(menus, inputs=base, outputs=[base, adapters], api_name="refresh")
        base.input(adapters_for, inputs=base, outputs=adapters, api_name="adapters")
        run.click(
            predict,
            inputs=[image, base, adapters, fx, fy, cx, cy],
            outputs=[base_out, adapted_out, more, files, info],
            api_name="predict",
        )
    clean_on_shutdown(demo, depth.outputs)  # the request folders go when the server stops
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.launch()
