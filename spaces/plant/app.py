"""Plant disease Space: a leaf photo (upload or camera) and an optional symptom text through two PlantVLM models side
by side: top-k classes as bars, the generated description and the top class's reference text.

Run alone with `python spaces/plant/app.py`, or with every other Space under `hubkit serve`.
Models load on the first request, not at import; the logic lives in hubkit.plant.demo.PlantDemo.
"""

from __future__ import annotations

import functools
from pathlib import Path

import gradio as gr
from gradio_client import handle_file

from hubkit.errors import HubkitError, InvalidImageError
from hubkit.gradio_fixes import atomic_cache_writes
from hubkit.plant.demo import CONCURRENCY, MAX_TOP_K, PlantDemo
from hubkit.spaces_support import back_link, check_upload, clean_on_shutdown, query_choice

EXAMPLE_URL = "https://raw.githubusercontent.com/gradio-app/gradio/main/test/test_files/bus.png"  # for the API page
EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / "examples").glob("*.png"))
plant = PlantDemo()


def menus(request: gr.Request = None):
    """Both model menus; on page load `?base=` (Model A) and `?adapter=` (Model B) preselect offered models."""
    models = plant.available_models()
    first, second = (plant.default_models() + [None, None])[:2]
    first, second = query_choice(request, "base", models) or first, query_choice(request, "adapter", models) or second
    return gr.Dropdown(choices=models, value=first), gr.Dropdown(choices=models, value=second)


def store_models() -> list[str]:
    """The models in the store now, as the menus' build-time choices: the run-history page (/gradio_api/runs) shows
    a recorded run with these, so a model missing from them shows blank there. Pages refill the menus on load, so
    later additions reach the Space (their history entries show blank until a restart)."""
    try:
        return plant.available_models()
    except HubkitError:  # an unreadable store: empty menus now; the page load reports it
        return []


def model_id_in_api(dropdown: gr.Dropdown) -> gr.Dropdown:
    """The API page shows a model menu as a repo id string: its choices refill from the store at page load (the
    build-time ones go stale)."""
    dropdown.api_info = lambda: {"type": "string", "description": "a PlantVLM repo id from /menus"}
    dropdown.example_payload = dropdown.example_value = lambda: "hubkit-tiny/plant-vlm"
    return dropdown


def preview(image):
    if image is None:
        return None
    try:
        return check_upload(image)
    except InvalidImageError as err:
        raise gr.Error(f"{err}", title="Not a usable image") from None


def predict(image, camera, text, model_a, model_b, top_k, describe, batch=True, progress=gr.Progress()):  # noqa: B008
    if not plant.loaded(model_a, model_b):
        progress(0.0, desc="Loading the models (first request only)…")
    try:
        run = plant.run(camera if camera is not None else image, text=text, models=[model_a, model_b],
                        top_k=int(top_k), describe=bool(describe), batch=batch)  # fmt: skip
    except InvalidImageError as err:
        raise gr.Error(f"{err}", title="Not a usable image") from None
    except HubkitError as err:
        raise gr.Error(f"{err}") from None
    # Plain values, not component updates: an update makes gradio rebuild the component's config on every request,
    # and the browser's run history shows an update's label (the model) instead of its value (the classes). The
    # panels' titles follow in `label_outputs`, a browser-only step.
    outputs = []
    for answer in run.answers + [None] * (2 - len(run.answers)):
        outputs += [None, ""] if answer is None else [plant.label_values(answer), plant.summary(answer)]
    return (*outputs, [str(p) for p in run.files])


def label_outputs(model_a, model_b):
    """After a Run in the browser: each panel is titled with its model (the same model twice ran once)."""
    picked = list(dict.fromkeys(m for m in (model_a, model_b) if isinstance(m, str) and m))
    titles = (picked + ["(no second model)"] * 2)[:2] if picked else ["Model A", "Model B"]
    return gr.Label(label=titles[0]), gr.Label(label=titles[1])


def build_demo(batch: bool = True) -> gr.Blocks:
    """The Space. `batch`: concurrent Run requests for one model share forward passes (up to 8; each still gets its
    own answer or error); False runs each request's forward pass on its own."""
    atomic_cache_writes()  # concurrent identical answers share a cache file: never hand out a half-written one
    models = store_models()
    with gr.Blocks(title="hubkit · plant disease") as demo:
        gr.HTML(back_link(), elem_id="hubkit-back")
        gr.Markdown(
            "# Plant disease: leaf photo + symptoms\n"
            "Upload a leaf photo or take one with the camera, add what you see (optional), and compare two models' "
            "top classes. The symptom text helps where two diseases look alike."
        )
        with gr.Row():
            with gr.Column(scale=1):
                # A file input for uploads: gr.Image would decode a broken file before our code could explain it.
                image = gr.File(label="Leaf photo", file_types=["image"], type="filepath", elem_id="plant-upload")
                image.example_payload = lambda: handle_file(EXAMPLE_URL)  # the API page's example: an image,
                image.example_value = lambda: EXAMPLE_URL  # not gradio's sample PDF
                camera = gr.Image(label="…or the camera", sources=["webcam"], type="pil", height=200)
                shown = gr.Image(label="Input", interactive=False, height=200, format="png")
                if EXAMPLES:
                    gr.Examples(examples=EXAMPLES, inputs=image, cache_examples=False)
                text = gr.Textbox(label="Symptoms (optional)", lines=2, max_lines=6,
                                  placeholder="e.g. brown spots with concentric rings on the older leaves")  # fmt: skip
                with gr.Row():  # allow_custom_value: the menus refill on page load (hubkit checks what may load)
                    model_a = model_id_in_api(gr.Dropdown(label="Model A (base)", choices=models, value=None,
                                              allow_custom_value=True, elem_id="plant-model-a"))  # fmt: skip
                    model_b = model_id_in_api(gr.Dropdown(label="Model B (fine-tuned)", choices=models, value=None,
                                              allow_custom_value=True, elem_id="plant-model-b"))  # fmt: skip
                with gr.Row():
                    top_k = gr.Slider(1, MAX_TOP_K, value=5, step=1, label="Top k")
                    describe = gr.Checkbox(value=True, label="Generate a description")
                refresh = gr.Button("↻ Refresh models")
                run = gr.Button("Run", variant="primary", elem_id="plant-run")
            with gr.Column(scale=2):
                with gr.Row():
                    with gr.Column():
                        label_a = gr.Label(label="Model A", elem_id="plant-a", show_heading=False)
                        info_a = gr.Markdown(label="Summary A", elem_id="plant-info-a")
                    with gr.Column():
                        label_b = gr.Label(label="Model B", elem_id="plant-b", show_heading=False)
                        info_b = gr.Markdown(label="Summary B", elem_id="plant-info-b")
                files = gr.File(label="Download: prediction.json", file_count="multiple", elem_id="plant-files")

        image.change(preview, inputs=image, outputs=shown, api_name="preview")
        demo.load(menus, outputs=[model_a, model_b], api_name="menus")
        refresh.click(menus, outputs=[model_a, model_b], api_name="refresh")
        run.click(
            predict if batch else functools.partial(predict, batch=False),
            inputs=[image, camera, text, model_a, model_b, top_k, describe],
            outputs=[label_a, info_a, label_b, info_b, files],
            api_name="predict",
            concurrency_limit=CONCURRENCY,  # enough requests in flight to fill a pass of 8 while the previous one runs
        ).success(label_outputs, inputs=[model_a, model_b], outputs=[label_a, label_b], queue=False,
                  api_visibility="private")  # fmt: skip
    clean_on_shutdown(demo, plant.outputs)
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.launch()
