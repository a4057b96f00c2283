"""Segma Space: label an image with SAM + BLIP + an LLM + Grounding DINO, review the regions, push a data set.

Run alone with `python spaces/segma/app.py`, or with every other Space under `hubkit serve`.
Models load on the first Run, not at import; the logic lives in hubkit.segma.demo.SegmaDemo.
"""

from __future__ import annotations

from pathlib import Path

import gradio as gr
from gradio_client import handle_file

from hubkit.errors import HubkitError, InvalidImageError
from hubkit.gradio_fixes import atomic_cache_writes
from hubkit.segma.demo import (
    DOMAIN_CHOICES,
    PRESETS,
    STAGE_TITLES,
    TABLE_HEADERS,
    TINY_NOTE,
    SegmaDemo,
)
from hubkit.spaces_support import back_link, build_time_menus, check_upload, clean_on_shutdown, query_choice

EXAMPLE_URL = "https://raw.githubusercontent.com/gradio-app/gradio/main/test/test_files/bus.png"  # for the API page
EXAMPLES = sorted(str(p) for p in (Path(__file__).parent / "examples").glob("*.png"))
STAGES = tuple(STAGE_TITLES)
NO_ADAPTER = ("none", "")
segma = SegmaDemo()


def _error(err: HubkitError) -> gr.Error:
    if isinstance(err, InvalidImageError):
        return gr.Error(f"{err}", title="Not a usable image")
    return gr.Error(f"{err}")


# -- menus ---------------------------------------------------------------------------------------------
def adapters_for(stage: str, base: str | None, wanted: str | None = None):
    adapters = segma.available_adapters(stage, base)
    return gr.Dropdown(choices=[NO_ADAPTER, *adapters], value=wanted if wanted in adapters else "")


def menus(*current, request=None):
    """A base and an adapter menu per stage, from the store; the note on random-weight models when they are used.
    On page load, `?base=&adapter=` in the URL preselects them in the stages that offer them."""
    updates, chosen = [], []
    for stage, base in zip(STAGES, current or [None] * len(STAGES), strict=True):
        bases = segma.available_bases(stage)
        linked = query_choice(request, "base", bases) if not current else None
        chosen.append(linked or (base if base in bases else bases[0]))
        wanted = query_choice(request, "adapter", segma.available_adapters(stage, chosen[-1])) if not current else None
        updates += [gr.Dropdown(choices=bases, value=chosen[-1]), adapters_for(stage, chosen[-1], wanted)]
    return [*updates, note_for(*chosen)]


def store_menus() -> tuple[list[list[str]], list[list]]:
    """Per stage, the menus' build-time choices (see hubkit.spaces_support.build_time_menus), "none" first."""
    menus = [
        build_time_menus(
            lambda stage=stage: segma.available_bases(stage),
            lambda base, stage=stage: segma.available_adapters(stage, base),
        )
        for stage in STAGES
    ]
    return [bases for bases, _ in menus], [[NO_ADAPTER, *adapters] for _, adapters in menus]


def linked_menus(request: gr.Request = None):
    """The menus on page load, with what the page's URL preselects (gradio injects positional requests only)."""
    return menus(request=request)


def note_for(*bases) -> gr.Markdown:
    tiny = any(str(b or "").startswith("hubkit-tiny/") for b in bases)
    return gr.Markdown(f"⚠️ {TINY_NOTE}" if tiny else "", visible=tiny)


def base_changed(stage: str):
    """The handler for one stage's base menu: that stage's adapters, and the note for the bases now picked."""

    def changed(*bases):
        return adapters_for(stage, bases[STAGES.index(stage)]), note_for(*bases)

    return changed


def preview(image):
    """The upload as the models will see it, or a clear error now."""
    if image is None:
        return None
    try:
        return check_upload(image)
    except InvalidImageError as err:
        raise _error(err) from None


# -- run and review --------------------------------------------------------------------------------------
def _views(run, message: str = "", region=None):
    """Plain values, not component updates: an update makes gradio rebuild the component's config on every request,
    and the browser's run history shows an update's image as a broken thumbnail. Labels, visibility and the review
    menu's choices follow in `view_props`, a browser-only step."""
    adapted, base = segma.overlays(run)
    return run, adapted, base, segma.summary(run), segma.table(run), [str(p) for p in run.files], region, message


def view_props(run):
    """After Run or a review in the browser: the overlays' titles and visibility, the downloads shown, the review
    menu's regions."""
    compared = run is not None and run.base is not None
    return (
        gr.Image(label="Regions (adapted)" if compared else "Regions"),
        gr.Image(visible=compared),
        gr.File(visible=run is not None),
        gr.Dropdown(choices=segma.region_choices(run)),
    )


def predict(image, preset, domain, classes, *menus_and_thresholds, progress=gr.Progress()):  # noqa: B008
    """Run the pipeline; `menus_and_thresholds`: base and adapter of each stage (STAGES order), then the box and
    text thresholds."""
    *menus, box_threshold, text_threshold = menus_and_thresholds
    try:
        run = segma.run(
            image,
            preset=preset,
            domain=domain,
            bases=dict(zip(STAGES, menus[::2], strict=True)),
            adapters=dict(zip(STAGES, menus[1::2], strict=True)),
            classes=classes,
            box_threshold=box_threshold,
            text_threshold=text_threshold,
            progress=lambda share, what: progress(share, desc=what),
        )
    except HubkitError as err:
        raise _error(err) from None
    note = "Pick a region to accept, reject or relabel it; then add the image to the data set."
    if not run.result.regions:
        note = "No region found: try other classes, a lower box threshold or another preset."
    return _views(run, note)


def run_labelling(image, preset, domain, classes, sam_base, sam_adapter, captioner_base, captioner_adapter,
                  labeler_base, labeler_adapter, detector_base, detector_adapter, box_threshold, text_threshold,
                  progress=gr.Progress()):  # noqa: B008  # fmt: skip
    """The Run event: named parameters (in STAGES order) for the API page, and gradio finds gr.Progress only among
    named parameters."""
    menus = [sam_base, sam_adapter, captioner_base, captioner_adapter, labeler_base, labeler_adapter, detector_base,
             detector_adapter]  # fmt: skip
    return predict(image, preset, domain, classes, *menus, box_threshold, text_threshold, progress=progress)


def _decide(run, region, decision: str):
    try:
        region = None if region in (None, "") else int(region)
    except (TypeError, ValueError):
        raise gr.Error(f"Region ids are numbers; got {region!r}. Pick one in the Region list.") from None
    try:
        run = segma.review(run, {} if region is None else {region: decision})
    except HubkitError as err:
        raise _error(err) from None
    done = {"accept": "accepted", "reject": "rejected"}.get(decision, f"relabelled {decision!r}")
    return _views(run, f"Region {region} {done}.", region=region)


def accept(run, region):
    return _decide(run, region, "accept")


def reject(run, region):
    return _decide(run, region, "reject")


def relabel(run, region, label):
    if not str(label or "").strip():
        raise gr.Error("Type the new label in the box first (e.g. coin).")
    return _decide(run, region, str(label).strip())


def accept_all(run):
    try:
        run = segma.accept_all(run)
    except HubkitError as err:
        raise _error(err) from None
    return _views(run, "Every region not rejected is accepted.")


# -- the session's data set ------------------------------------------------------------------------------
def add(run, dataset):
    try:
        dataset, message = segma.add(run, dataset)
    except HubkitError as err:
        raise _error(err) from None
    return dataset, message


def export(dataset, repo_id, accepted_only):
    try:
        info = segma.export(dataset, repo_id, accepted_only=accepted_only)
    except HubkitError as err:
        raise _error(err) from None
    images = f"{info.images} image{'s' * (info.images != 1)}"
    regions = f"{info.regions} region{'s' * (info.regions != 1)}"
    text = (
        f"Pushed **{images}, {regions}** to the store as data set `{info.repo_id}`, "
        f"revision `{info.revision}`.\n\n"
        f'Load it with `datasets.load_dataset("imagefolder", data_dir=hubkit.hub.pull("{info.repo_id}", '
        f'repo_type="dataset"))`.\n\n```\n$ hubkit ls --repo-type dataset\n{info.listing}\n```'
    )
    return text, gr.File(value=str(info.archive), visible=True)


def build_demo() -> gr.Blocks:
    atomic_cache_writes()  # concurrent identical answers share a cache file: never hand out a half-written one
    base_choices, adapter_choices = store_menus()
    with gr.Blocks(title="hubkit · segma") as demo:
        gr.HTML(back_link(), elem_id="hubkit-back")
        gr.Markdown(
            "# Segma Vision: label, review, publish\n"
            "Upload a photo or pick an example. BLIP captions it, an LLM names the classes (or give them), "
            "Grounding DINO finds them and SAM outlines them; SAM's automatic masks fill in the rest. Review the "
            "regions, add the image to your data set and push it to the store."
        )
        note = gr.Markdown(label="Note", visible=False, elem_id="segma-note")
        run_state = gr.State(None)
        dataset_state = gr.State([])
        with gr.Row():
            with gr.Column(scale=1, min_width=320):
                # A file input, not gr.Image: gr.Image decodes uploads before our code runs, so a broken file
                # would end in an opaque server error instead of the message check_upload gives.
                image = gr.File(label="Image", file_types=["image"], type="filepath", elem_id="segma-upload")
                image.example_payload = lambda: handle_file(EXAMPLE_URL)  # the API page's example: an image,
                image.example_value = lambda: EXAMPLE_URL  # not gradio's sample PDF
                shown = gr.Image(label="Input", interactive=False, height=200, format="png")
                gr.Examples(examples=EXAMPLES, inputs=image, cache_examples=False)
                with gr.Row():
                    preset = gr.Radio(list(PRESETS), value="general", label="SAM preset", elem_id="segma-preset")
                    domain = gr.Dropdown(list(DOMAIN_CHOICES), value="none", label="Domain", elem_id="segma-domain")
                classes = gr.Textbox(
                    label="Classes (optional)",
                    placeholder="coin, shadow, table: given classes skip the LLM",
                    elem_id="segma-classes",
                )
                menus_out = []
                with gr.Accordion("Models and adapters", open=False):
                    for stage, stage_bases, stage_adapters in zip(STAGES, base_choices, adapter_choices, strict=True):
                        with gr.Row():
                            # allow_custom_value: the menus refill on page load, and gradio 6 checks a value against
                            # the choices its session has seen. What a request may load is checked in hubkit.
                            base = gr.Dropdown(
                                label=f"{STAGE_TITLES[stage]} base",
                                choices=stage_bases,
                                value=None,
                                allow_custom_value=True,
                                scale=3,
                                elem_id=f"segma-{stage}-base",
                            )
                            adapter = gr.Dropdown(
                                label="adapter",
                                choices=stage_adapters,
                                value="",
                                allow_custom_value=True,
                                scale=2,
                                elem_id=f"segma-{stage}-adapter",
                            )
                        menus_out += [base, adapter]
                    with gr.Row():
                        box_threshold = gr.Slider(0, 1, value=0.25, step=0.01, label="Box threshold")
                        text_threshold = gr.Slider(0, 1, value=0.2, step=0.01, label="Text threshold")
                    refresh = gr.Button("↻ Refresh menus", size="sm")
                run = gr.Button("Run", variant="primary", elem_id="segma-run")
            with gr.Column(scale=2):
                with gr.Row():
                    adapted_out = gr.Image(
                        label="Regions", type="pil", format="png", height=420, elem_id="segma-overlay"
                    )
                    base_out = gr.Image(
                        label="Base models (adapters off)",
                        type="pil",
                        format="png",
                        height=420,
                        visible=False,
                        elem_id="segma-base-overlay",
                    )
                info = gr.Markdown(label="Summary", elem_id="segma-summary")
                table = gr.Dataframe(
                    label="Regions table",
                    headers=list(TABLE_HEADERS),
                    interactive=False,
                    wrap=True,
                    max_height=360,
                    elem_id="segma-regions",
                )
                files = gr.File(
                    label="Downloads: COCO JSON, label.json, features CSV",
                    file_count="multiple",
                    interactive=False,
                    visible=False,
                    elem_id="segma-downloads",
                )
                with gr.Group():
                    gr.Markdown("### Review  \nRejected regions leave the overlay and the exports.")
                    with gr.Row():
                        # allow_custom_value: handlers return the picked id as a plain value; `view_props` sets
                        # the choices after them. segma.review checks the id.
                        region = gr.Dropdown(label="Region", choices=[], value=None, allow_custom_value=True, scale=2,
                                             elem_id="segma-region")  # fmt: skip
                        label = gr.Textbox(label="New label", scale=2, elem_id="segma-label")
                    with gr.Row():
                        accept_btn = gr.Button("Accept", elem_id="segma-accept")
                        reject_btn = gr.Button("Reject", variant="stop", elem_id="segma-reject")
                        relabel_btn = gr.Button("Relabel", elem_id="segma-relabel")
                        accept_all_btn = gr.Button("Accept all", elem_id="segma-accept-all")
                    review_info = gr.Markdown(label="Review", elem_id="segma-review-info")
                with gr.Group():
                    gr.Markdown("### Data set")
                    add_btn = gr.Button("Add image to data set", elem_id="segma-add")
                    dataset_info = gr.Markdown(label="Data set", elem_id="segma-dataset-info")
                    with gr.Row():
                        repo = gr.Textbox(
                            label="Data set repo id", placeholder="me/coins-labels", scale=3, elem_id="segma-repo"
                        )
                        accepted_only = gr.Checkbox(label="Accepted regions only", value=False, scale=1)
                        export_btn = gr.Button("Export", variant="primary", scale=1, elem_id="segma-export")
                    export_info = gr.Markdown(label="Export", elem_id="segma-export-info")
                    archive = gr.File(
                        label="The data set as a zip", interactive=False, visible=False, elem_id="segma-archive"
                    )

        bases_in = menus_out[::2]
        for menu in [*menus_out, region]:  # filled at page load: the API page shows them as strings, not Literal[]
            menu.api_info = lambda: {"type": "string", "description": "a value from /menus (repo id; '': the default)"}
            menu.example_payload = menu.example_value = lambda: ""  # works as shown: the default base, no adapter
        image.change(preview, inputs=image, outputs=shown, api_name="preview")
        demo.load(linked_menus, outputs=[*menus_out, note], api_name="menus")
        refresh.click(menus, inputs=bases_in, outputs=[*menus_out, note], api_name="refresh")
        for stage, base, adapter in zip(STAGES, bases_in, menus_out[1::2], strict=True):
            base.input(base_changed(stage), inputs=bases_in, outputs=[adapter, note], api_name=f"base_{stage}")
        views = [run_state, adapted_out, base_out, info, table, files, region, review_info]
        props = dict(fn=view_props, inputs=run_state, outputs=[adapted_out, base_out, files, region], queue=False,
                     api_visibility="private")  # fmt: skip
        if STAGES != ("sam", "captioner", "labeler", "detector"):  # run_labelling's parameter order
            raise RuntimeError(f"run_labelling expects the stages sam, captioner, labeler, detector; got {STAGES}")
        run.click(
            run_labelling,
            inputs=[image, preset, domain, classes, *menus_out, box_threshold, text_threshold],
            outputs=views,
            api_name="run",
            concurrency_limit=2,  # five models per run: more at once only slows every request down
        ).success(**props)
        accept_btn.click(accept, inputs=[run_state, region], outputs=views, api_name="accept").success(**props)
        reject_btn.click(reject, inputs=[run_state, region], outputs=views, api_name="reject").success(**props)
        relabel_btn.click(relabel, inputs=[run_state, region, label], outputs=views, api_name="relabel").success(
            **props
        )
        accept_all_btn.click(accept_all, inputs=run_state, outputs=views, api_name="accept_all").success(**props)
        add_btn.click(add, inputs=[run_state, dataset_state], outputs=[dataset_state, dataset_info], api_name="add")
        export_btn.click(
            export, inputs=[dataset_state, repo, accepted_only], outputs=[export_info, archive], api_name="export"
        )
    clean_on_shutdown(demo, segma.outputs)  # the request folders go when the server stops
    return demo


demo = build_demo()

if __name__ == "__main__":
    demo.launch()
