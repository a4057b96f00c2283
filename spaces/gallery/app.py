"""The hub's gallery and leaderboard: every model, adapter and data set in the store, read from their cards.

Run beside `hubkit serve` (which starts it):  streamlit run spaces/gallery/app.py --server.port 8501
Environment: HUBKIT_HUB / HUBKIT_HOME pick the store (as everywhere in hubkit), HUBKIT_SERVER_URL is the hub
server whose Spaces the links open (default http://127.0.0.1:7860), HUBKIT_GALLERY_NAMESPACE keeps one owner.
All logic lives in `hubkit.gallery`; this file only lays it out.
"""

from __future__ import annotations

import os

import streamlit as st

from hubkit import gallery, hub
from hubkit.errors import HubkitError

ALL = "(all)"
TABS = ["Models & adapters", "Leaderboard", "Card", "Compare"]


def server_url() -> str:
    return (os.environ.get("HUBKIT_SERVER_URL") or "http://127.0.0.1:7860").rstrip("/")


@st.cache_data(ttl=30, show_spinner="Reading the store...")
def load_entries(hub_name: str | None, home: str, namespace: str | None) -> list[gallery.GalleryEntry]:
    """Cached per store (hub name, HUBKIT_HOME) and namespace; `home` is only part of the cache key."""
    return gallery.list_entries(hub_name, namespace=namespace)


def full_link(entry: gallery.GalleryEntry) -> str | None:
    link = gallery.space_link(entry)
    return f"{server_url()}{link}" if link else None


def pick(label: str, options: list[str], key: str) -> str | None:
    choice = st.sidebar.selectbox(label, [ALL, *options], key=key)
    return None if choice == ALL else choice


def entries_table(entries: list[gallery.GalleryEntry]) -> None:
    rows = []
    for e in entries:
        headline = gallery.headline_metric(e)
        rows.append(
            {
                "repo": e.repo_id,
                "space": full_link(e),
                "kind": e.kind,
                "task": e.task or "",
                "domain": e.domain or "",
                "base": e.base or "",
                "metric": headline[0] if headline else "",
                "value": headline[1] if headline else None,
                "parameters": e.parameters,
                "updated": (e.updated or "")[:19].replace("T", " "),
                "revision": (e.revision or "")[:12],
                "warning": e.warning or "",
            }
        )
    st.dataframe(
        rows,
        hide_index=True,
        column_config={
            "space": st.column_config.LinkColumn("Space", display_text="open"),
            "parameters": st.column_config.NumberColumn("parameters", format="localized"),
        },
        key="entries_table",
        placeholder="",  # a missing value (no Space, no metric) shows empty, not "None"
    )


def leaderboard_tab(entries: list[gallery.GalleryEntry]) -> None:
    tasks = sorted({e.task for e in entries if e.task and e.metrics})
    if not tasks:
        st.info(
            "No card here reports evaluation results yet. Adapters trained with hubkit write theirs in the card's "
            "model-index, and they appear here."
        )
        return
    task = st.selectbox("Task", tasks, key="lb_task")
    options = gallery.leaderboard_options(entries, task)
    dataset = st.selectbox("Data set", list(options), key="lb_dataset")
    metric = st.selectbox("Metric", options.get(dataset, []), key="lb_metric")
    try:
        board = gallery.leaderboard(entries, task, dataset=dataset, metric=metric)
    except HubkitError as err:  # a stale widget value after the store changed
        st.warning(str(err))
        return
    arrow = "↑" if board.direction == gallery.HIGHER else "↓"
    st.markdown(f"**{arrow} {board.direction_note}** Best first, on `{board.dataset}`.")
    by_id = {e.repo_id: e for e in entries}
    rows = [
        {
            "rank": r.rank,
            "repo": r.repo_id,
            "kind": r.kind,
            "base": r.base or "",
            board.metric: r.value,
            "split": r.split or "",
            "space": full_link(by_id[r.repo_id]),
        }
        for r in board.rows
    ]
    st.dataframe(
        rows,
        hide_index=True,
        column_config={"space": st.column_config.LinkColumn("Space", display_text="open")},
        key="leaderboard_table",
        placeholder="",
    )


def card_tab(entries: list[gallery.GalleryEntry]) -> None:
    ids = [e.repo_id for e in entries]
    wanted = st.query_params.get("repo")
    repo = st.selectbox("Repo", ids, index=ids.index(wanted) if wanted in ids else 0, key="card_repo")
    entry = next(e for e in entries if e.repo_id == repo)
    if entry.warning:
        st.warning(entry.warning)
    link = full_link(entry)
    if link:
        st.link_button(f"Open in the {gallery.TASK_SPACES[entry.task]} Space", link)
    cols = st.columns(4)
    cols[0].metric("Kind", entry.kind)
    cols[1].metric("Task", entry.task or "unknown")
    cols[2].metric("Parameters", f"{entry.parameters:,}" if entry.parameters is not None else "n/a")
    cols[3].metric("Revision", (entry.revision or "n/a")[:12])
    facts = {
        "repo type": entry.repo_type,
        "base": entry.base,
        "domain": entry.domain,
        "license": entry.license,
        "library": entry.library_name,
        "updated": entry.updated,
        "data sets": ", ".join(entry.datasets) or None,
        "data set revision": entry.dataset_revision or "not recorded",
        "tags": ", ".join(entry.tags) or None,
    }
    st.table([{"field": k, "value": str(v)} for k, v in facts.items() if v])
    if entry.library_versions:
        st.caption("Library versions: " + ", ".join(f"{k} {v}" for k, v in entry.library_versions.items()))
    if entry.config:
        st.subheader("LoRA config" if entry.kind == "adapter" else "Config")
        st.json(entry.config, expanded=True)
    st.subheader("Card")
    st.markdown(entry.card_text or "_This repo has no card._")


def compare_tab(entries: list[gallery.GalleryEntry]) -> None:
    adapters = [e.repo_id for e in entries if e.kind == "adapter"]
    chosen = st.multiselect("Adapters (2 to 4)", adapters, max_selections=4, key="compare_pick")
    if len(chosen) < 2:
        st.info("Pick two to four adapters to see their metrics and LoRA configs side by side.")
        return
    by_id = {e.repo_id: e for e in entries}
    result = gallery.compare([by_id[r] for r in chosen])
    if result.metrics:
        st.subheader("Metrics")
        st.dataframe(result.metrics, hide_index=True, key="compare_metrics", placeholder="")
    else:
        st.caption("None of these adapters reports metrics.")
    st.subheader("Configs")
    config = [{k: ("" if v is None else str(v)) for k, v in row.items()} for row in result.config]
    st.dataframe(config, hide_index=True, key="compare_config")


def main() -> None:
    st.set_page_config(page_title="hubkit gallery", page_icon="🗂️", layout="wide")
    st.title("hubkit gallery")
    st.markdown(f"[← All Spaces]({server_url()}/) · models, adapters and data sets in the store, from their cards")
    hub_name = os.environ.get("HUBKIT_HUB") or None
    namespace = os.environ.get("HUBKIT_GALLERY_NAMESPACE") or None
    if st.sidebar.button("Reload the store"):
        load_entries.clear()
    try:
        store = hub.get_store(hub_name)
        entries = load_entries(hub_name, str(hub.local_home()), namespace)
    except HubkitError as err:
        st.error(f"The store cannot be read: {err}")
        return
    st.sidebar.caption(f"Store: {store.name}" + (f" · namespace {namespace}" if namespace else ""))
    if not entries:
        st.info(
            f"The store ({store.name}) is empty. Run `hubkit bootstrap` to add the tiny offline models and demo "
            "adapters, or push your own with `hubkit push`."
        )
        return
    values = gallery.facets(entries)
    shown = gallery.filter_entries(
        entries,
        task=pick("Task", values["task"], "f_task"),
        base=pick("Base", values["base"], "f_base"),
        domain=pick("Domain", values["domain"], "f_domain"),
        tag=pick("Tag", values["tag"], "f_tag"),
        kind=pick("Kind", values["kind"], "f_kind"),
        text=st.sidebar.text_input("Search repo ids", key="f_text"),
    )
    bad = sum(1 for e in entries if e.warning)
    st.caption(f"{len(shown)} of {len(entries)} repos shown" + (f" · {bad} with card problems" if bad else ""))
    if not shown:
        st.info("No repo matches these filters.")
        return
    tabs = st.tabs(TABS)
    with tabs[0]:
        entries_table(shown)
    with tabs[1]:
        leaderboard_tab(shown)
    with tabs[2]:
        card_tab(shown)
    with tabs[3]:
        compare_tab(shown)


if __name__ == "__main__":  # `streamlit run` and AppTest run the script as __main__
    main()
