"""PixCell Space: an H&E patch conditions a diffusion model through a pathology encoder's embedding; N samples from
the base beside N from the base + a stain-domain adapter (LoRA + condition MLP), with each set's colour distance to
the adapter's target domain.

Run alone with `python spaces/pixcell/app.py`, or with every other Space under `hubkit serve`.
Models load on the first request, not at import; the logic lives in hubkit.pixcell.demo.PixCellDemo.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from hubkit.errors import HubkitError, InvalidImageError
from hubkit.pixcell.demo import MAX_IMAGES, MAX_STEPS, PixCellDemo
from hubkit.pixcell.sampling import SAMPLERS
from hubkit.spaces_support import check_upload, clean_on_shutdown

EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / "examples").glob("*.png"))
pixcell = PixCellDemo()


def menus(base: str | None = None):
    bases = pixcell.available_bases()
    base = base if base in bases else bases[0]
    return gr.Dropdown(choices=bases, value=base), adapters_for(base)


def adapters_for(base: str | None):
    adapters = pixcell.available_adapters(base)
    return gr.Dropdown(choices=[("(none: base only)", ""), *((a, a) for a in adapters)],
                       value=adapters[0] if adapters else "")  # fmt: skip


def preview(image):
    if image is None:
        return None
    try:
        return check_upload(image)
    except InvalidImageError as err:
        raise gr.Error(f"{err}", title="Not a usable image") from None


def generate(image, base, adapter, sampler, steps, guidance, count, seed, progress=gr.Progress()):  # noqa: B008
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
    with gr.Blocks(title="hubkit · PixCell") as demo:
        gr.Markdown(
            "# PixCell: H&E patches in your stain style\n"
            "Upload a histology patch (or pick an example). Its pathology-encoder embedding conditions the diffusion "
            "model; compare N samples from the base with N from the base + your adapter (LoRA + condition MLP)."
        )
        with gr.Row():
            with gr.Column(scale=1):
                image = gr.File(label="H&E patch", file_types=["image"], type="filepath", elem_id="pixcell-upload")
                shown = gr.Image(label="Input", interactive=False, height=200, format="png")
                gr.Examples(examples=EXAMPLES, inputs=image, cache_examples=False)
                base = gr.Dropdown(label="Base model", choices=[], value=None, allow_custom_value=True,
                                   elem_id="pixcell-base")  # fmt: skip
                adapter = gr.Dropdown(label="Adapter", choices=[], value=None, allow_custom_value=True,
                                      elem_id="pixcell-adapter")  # fmt: skip
                with gr.Row():
                    sampler = gr.Dropdown(label="Sampler", choices=list(SAMPLERS), value="dpm++")
                    steps = gr.Slider(1, MAX_STEPS, value=20, step=1, label="Steps")
                with gr.Row():
                    guidance = gr.Slider(0, 10, value=1.5, step=0.1, label="Guidance")
                    count = gr.Slider(1, MAX_IMAGES, value=4, step=1, label="Samples (N)")
                seed = gr.Number(label="Seed", value=0, precision=0, minimum=0)
                refresh = gr.Button("↻ Refresh models")
                run = gr.Button("Generate", variant="primary", elem_id="pixcell-run")
            with gr.Column(scale=2):
                base_out = gr.Gallery(label="Base samples", columns=4, height=260, format="png",
                                      elem_id="pixcell-base-samples")  # fmt: skip
                adapted_out = gr.Gallery(label="Adapted samples", columns=4, height=260, format="png",
                                         elem_id="pixcell-adapted-samples")  # fmt: skip
                info = gr.Markdown(elem_id="pixcell-info")
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
        )
    clean_on_shutdown(demo, pixcell.outputs)
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.launch()
