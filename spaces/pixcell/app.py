"""PixCell Space: an H&E patch conditions a diffusion model through a pathology encoder's embedding; N samples from
the base beside N from the base + a stain-domain adapter (LoRA + condition MLP), with each set's colour distance to
the adapter's target domain.

Run alone with `python spaces/pixcell/app.py`, or with every other Space under `hubkit serve`.
Models load on the first request, not at import; the logic lives in hubkit.pixcell.demo.PixCellDemo.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from gradio_client import handle_file

from hubkit.errors import HubkitError, InvalidImageError
from hubkit.gradio_fixes import atomic_cache_writes
from hubkit.pixcell.demo import MAX_IMAGES, MAX_STEPS, PixCellDemo
from hubkit.pixcell.sampling import SAMPLERS
from hubkit.spaces_support import back_link, build_time_menus, check_upload, clean_on_shutdown, query_choice

EXAMPLE_URL = "https://raw.githubusercontent.com/gradio-app/gradio/main/test/test_files/bus.png"  # for the API page
EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / "examples").glob("*.png"))
pixcell = PixCellDemo()


def menus(base: str | None = None, request: gr.Request = None):
    """Bases and adapters in the store; on page load `?base=&adapter=` in the URL preselects offered ones."""
    bases = pixcell.available_bases()
    linked = base is None  # the page load; a refresh passes the current base and keeps it
    base = (linked and query_choice(request, "base", bases)) or (base if base in bases else bases[0])
    wanted = query_choice(request, "adapter", pixcell.available_adapters(base)) if linked else None
    return gr.Dropdown(choices=bases, value=base), adapters_for(base, wanted)


NO_ADAPTER = ("(none: base only)", "")


def adapters_for(base: str | None, wanted: str | None = None):
    adapters = pixcell.available_adapters(base)
    return gr.Dropdown(choices=[NO_ADAPTER, *((a, a) for a in adapters)],
                       value=wanted if wanted in adapters else (adapters[0] if adapters else ""))  # fmt: skip


def store_menus() -> tuple[list[str], list[tuple[str, str]]]:
    """The menus' build-time choices (see hubkit.spaces_support.build_time_menus), "(none)" first."""
    bases, adapters = build_time_menus(pixcell.available_bases, pixcell.available_adapters)
    return bases, [NO_ADAPTER, *((a, a) for a in adapters)]


def repo_id_in_api(dropdown: gr.Dropdown, what: str, example: str) -> gr.Dropdown:
    """The API page shows a menu refilled at page load as a repo id string (its build-time choices go stale)."""
    dropdown.api_info = lambda: {"type": "string", "description": what}
    dropdown.example_payload = dropdown.example_value = lambda: example
    return dropdown


def preview(image):
    if image is None:
        return None
    try:
        return check_upload(image)
    except InvalidImageError as err:
        raise gr.Error(f"{err}", title="Not a usable image") from None


def generate(image, base, adapter, sampler, steps, guidance, count, seed, progress=gr.Progress()):  # noqa: B008
    if pixcell.pool.peek("histology-generation", base or pixcell.default_base(), device=pixcell.device) is None:
        progress(0.0, desc="Loading the model (first request only)…")
    try:
        run = pixcell.run(image, base=base or None, adapter=adapter or None, sampler=sampler,
                          num_inference_steps=int(steps), guidance_scale=float(guidance), num_images=int(count),
                          seed=int(seed), progress=lambda share, what: progress(share, desc=what))  # fmt: skip
    except InvalidImageError as err:
        raise gr.Error(f"{err}", title="Not a usable image") from None
    except HubkitError as err:
        raise gr.Error(f"{err}") from None
    return run.base_images, run.adapted_images or None, pixcell.summary(run), [str(p) for p in run.files]


def build_demo() -> gr.Blocks:
    atomic_cache_writes()  # concurrent identical answers share a cache file: never hand out a half-written one
    base_choices, adapter_choices = store_menus()
    with gr.Blocks(title="hubkit · PixCell") as demo:
        gr.HTML(back_link(), elem_id="hubkit-back")
        gr.Markdown(
            "# PixCell: H&E patches in your stain style\n"
            "Upload a histology patch (or pick an example). Its pathology-encoder embedding conditions the diffusion "
            "model; compare N samples from the base with N from the base + your adapter (LoRA + condition MLP)."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.File(label="H&E patch", file_types=["image"], type="filepath", elem_id="pixcell-upload")
                image.example_payload = lambda: handle_file(EXAMPLE_URL)  # the API page's example: an image,
                image.example_value = lambda: EXAMPLE_URL  # not gradio's sample PDF
                shown = gr.Image(label="Input", interactive=False, height=200, format="png")
                gr.Examples(examples=EXAMPLES, inputs=image, cache_examples=False)
                # allow_custom_value: the menus refill on page load (what a request may load is checked in hubkit)
                base = repo_id_in_api(gr.Dropdown(label="Base model", choices=base_choices, value=None,
                                                  allow_custom_value=True, elem_id="pixcell-base"),
                                      "a base repo id from /menus", "hubkit-tiny/pixcell")  # fmt: skip
                adapter = repo_id_in_api(gr.Dropdown(label="Adapter", choices=adapter_choices, value=None,
                                                     allow_custom_value=True, elem_id="pixcell-adapter"),
                                         'an adapter repo id from /menus, or "" for the base only', "")  # fmt: skip
                with gr.Row():
                    sampler = gr.Dropdown(label="Sampler", choices=list(SAMPLERS), value="dpm++")
                    steps = gr.Slider(1, MAX_STEPS, value=20, step=1, label="Steps", elem_id="pixcell-steps")
                with gr.Row():
                    guidance = gr.Slider(0, 10, value=1.5, step=0.1, label="Guidance")
                    count = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Samples (N)", elem_id="pixcell-count")
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
                refresh = gr.Button("↻ Refresh models")
                run = gr.Button("Generate", variant="primary", elem_id="pixcell-run")
            with gr.Column(scale=2):
                base_out = gr.Gallery(label="Base samples", columns=4, height=260, format="png",
                                      elem_id="pixcell-base-samples")  # fmt: skip
                adapted_out = gr.Gallery(label="Adapted samples", columns=4, height=260, format="png",
                                         elem_id="pixcell-adapted-samples")  # fmt: skip
                info = gr.Markdown(label="Summary", elem_id="pixcell-info")
                files = gr.File(label="Downloads (PNG)", file_count="multiple", elem_id="pixcell-files")

        image.change(preview, inputs=image, outputs=shown, api_name="preview")
        demo.load(menus, outputs=[base, adapter], api_name="menus")
        refresh.click(menus, inputs=base, outputs=[base, adapter], api_name="refresh")
        base.input(adapters_for, inputs=base, outputs=adapter, api_name="adapters")
        run.click(
            generate,
            inputs=[image, base, adapter, sampler, steps, guidance, count, seed],
            outputs=[base_out, adapted_out, info, files],
            api_name="generate",
            concurrency_limit=2,  # sampling is long and CPU-bound: more at once only slows every request down
        )
    clean_on_shutdown(demo, pixcell.outputs)
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.launch()
