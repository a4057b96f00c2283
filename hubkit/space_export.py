"""Space folders ready for Hugging Face Spaces: the README YAML validator and `hubkit space export`.

    problems = validate_space_card("spaces/depth")        # [] when the YAML is valid for Hugging Face Spaces
    export_space("depth", "/tmp/depth-space")              # app.py, README.md, requirements.txt, examples/, hubkit/
    # then: hubkit push /tmp/depth-space me/depth-demo --repo-type space --hub hf

The allowed values follow the Hub's Spaces configuration reference (hub-docs `spaces-config-reference.md`:
colours, SDKs, `app_port` for docker) and its licence list (`repositories-licenses.md`); the hardware flavours are
the installed `huggingface_hub.SpaceHardware` values. Hugging Face shows at most 60 characters of
`short_description`. `sdk_version` must be the version this repository pins (requirements.txt), so the Space runs
what the tests ran.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from .errors import CardError, ConfigError, HubkitError

SDKS = ("gradio", "streamlit", "docker", "static")
COLORS = ("red", "yellow", "green", "blue", "indigo", "purple", "pink", "gray")
MAX_SHORT_DESCRIPTION = 60
REQUIRED = ("title", "emoji", "colorFrom", "colorTo", "sdk", "app_file", "license", "short_description", "tags")
LIST_FIELDS = ("models", "datasets", "tags")
# Hugging Face's licence identifiers (hub-docs repositories-licenses.md).
LICENSES = frozenset({
    "apache-2.0", "mit", "openrail", "bigscience-openrail-m", "creativeml-openrail-m", "bigscience-bloom-rail-1.0",
    "bigcode-openrail-m", "afl-3.0", "artistic-2.0", "bsl-1.0", "bsd", "bsd-2-clause", "bsd-3-clause",
    "bsd-3-clause-clear", "c-uda", "cc", "cc0-1.0", "cc-by-2.0", "cc-by-2.5", "cc-by-3.0", "cc-by-4.0",
    "cc-by-sa-3.0", "cc-by-sa-4.0", "cc-by-nc-2.0", "cc-by-nc-3.0", "cc-by-nc-4.0", "cc-by-nd-4.0",
    "cc-by-nc-nd-3.0", "cc-by-nc-nd-4.0", "cc-by-nc-sa-2.0", "cc-by-nc-sa-3.0", "cc-by-nc-sa-4.0",
    "cdla-sharing-1.0", "cdla-permissive-1.0", "cdla-permissive-2.0", "wtfpl", "ecl-2.0", "epl-1.0", "epl-2.0",
    "etalab-2.0", "eupl-1.1", "agpl-3.0", "gfdl", "gpl", "gpl-2.0", "gpl-3.0", "lgpl", "lgpl-2.1", "lgpl-3.0", "isc",
    "lppl-1.3c", "ms-pl", "mpl-2.0", "odc-by", "odbl", "openrail++", "osl-3.0", "postgresql", "ofl-1.1", "ncsa",
    "unlicense", "zlib", "pddl", "lgpl-lr", "deepfloyd-if-license", "llama2", "gemma", "unknown", "other",
})  # fmt: skip
_FRONT = re.compile(r"\A---\s*\n(.*?)\n---\s*(?:\n|\Z)", re.DOTALL)
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(\[[^\]]*\])?==([^\s;#]+)$")
_REPO_ID = re.compile(r"^(?:[A-Za-z0-9][\w.-]*/)?[A-Za-z0-9][\w.-]*$")  # owner/name, or a legacy name (gpt2)
_PYTHON = re.compile(r"^3\.\d+(\.\d+)?$")
_IGNORE = ("__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", "secrets.toml", ".env")  # never ship secrets


def hardware_flavors() -> tuple[str, ...]:
    """The Space hardware flavours the installed huggingface_hub knows (cpu-basic, t4-small, a10g-small, ...)."""
    from huggingface_hub import SpaceHardware

    return tuple(h.value for h in SpaceHardware)


def repo_root() -> Path:
    """The source checkout that holds this package (its requirements.txt and spaces/)."""
    return Path(__file__).resolve().parent.parent


def default_spaces_dir() -> Path:
    return repo_root() / "spaces"


def read_space_card(folder: str | Path) -> dict:
    """The YAML block at the top of a Space folder's README.md (CardError when missing or not a mapping)."""
    import yaml

    readme = Path(folder) / "README.md"
    try:
        text = readme.read_text(encoding="utf-8")
    except OSError as err:
        raise CardError(f"{readme} cannot be read ({err.strerror}); a Space needs a README.md with its YAML.") from err
    match = _FRONT.match(text)
    if match is None:
        raise CardError(f"{readme} does not start with a '---' YAML block; add the Spaces configuration there.")
    try:
        data = yaml.safe_load(match.group(1))
    except yaml.YAMLError as err:
        raise CardError(f"{readme}: the YAML block does not parse ({str(err).splitlines()[0]}).") from err
    if not isinstance(data, dict):
        raise CardError(f"{readme}: the YAML block is not a mapping of keys to values.")
    return data


def read_pins(path: str | Path) -> dict[str, str]:
    """`name==version` lines of a requirements file as {normalised name: version}; other lines are skipped."""
    pins = {}
    for line in _requirement_lines(Path(path)):
        match = _PIN.match(line)
        if match:
            pins[_normalise(match.group(1))] = match.group(3)
    return pins


def _requirement_lines(path: Path) -> list[str]:
    lines = []
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.split(" #", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        if line:
            lines.append(line)
    return lines


def _normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def validate_space_card(folder: str | Path, *, root_requirements: str | Path | None = None) -> list[str]:
    """Problems of a Space folder's README YAML for Hugging Face Spaces, one sentence each; [] when it is valid.

    Checks the required keys, the allowed values (colours, sdk, licence, hardware), `sdk_version` against the pin in
    `root_requirements` (default: this checkout's requirements.txt, when there is one), `app_port` for docker,
    `app_file` existing in the folder, repo ids in `models` / `datasets` and `short_description` <= 60 characters."""
    folder = Path(folder)
    try:
        card = read_space_card(folder)
    except CardError as err:
        return [str(err)]
    problems = [f"missing `{key}`" for key in REQUIRED if card.get(key) in (None, "", [])]
    for key in ("colorFrom", "colorTo"):
        if key in card and card[key] not in COLORS:
            problems.append(f"`{key}: {card[key]}` is not one of {', '.join(COLORS)}")
    sdk = card.get("sdk")
    if sdk is not None and sdk not in SDKS:
        problems.append(f"`sdk: {sdk}` is not one of {', '.join(SDKS)}")
    if sdk in ("gradio", "streamlit"):
        problems += _sdk_version_problems(card, sdk, root_requirements)
    elif "sdk_version" in card:
        problems.append(f"`sdk_version` applies to gradio and streamlit only, not to `sdk: {sdk}`")
    if sdk == "docker":
        port = card.get("app_port")
        if not isinstance(port, int) or isinstance(port, bool) or not 1 <= port <= 65535:
            problems.append(f"`sdk: docker` needs `app_port` (an integer port), got {port!r}")
        if not (folder / "Dockerfile").is_file():
            problems.append("`sdk: docker` needs a Dockerfile in the Space folder")
    elif "app_port" in card:
        problems.append("`app_port` is used with `sdk: docker` only")
    app_file = card.get("app_file")
    if isinstance(app_file, str) and app_file and not (folder / app_file).is_file():
        problems.append(f"`app_file: {app_file}` is not a file in {folder}")
    if "title" in card and not isinstance(card["title"], str):
        problems.append("`title` must be a string")
    emoji = card.get("emoji")
    if isinstance(emoji, str) and (not emoji or any(ch.isascii() and not ch.isspace() for ch in emoji)):
        problems.append(f"`emoji: {emoji}` must be an emoji only")
    description = card.get("short_description")
    if description is not None and (not isinstance(description, str) or len(description) > MAX_SHORT_DESCRIPTION):
        length = len(description) if isinstance(description, str) else "not a string"
        problems.append(f"`short_description` must be at most {MAX_SHORT_DESCRIPTION} characters, got {length}")
    if "license" in card and card["license"] not in LICENSES:
        problems.append(f"`license: {card['license']}` is not a Hugging Face licence identifier (apache-2.0, mit, ...)")
    hardware = card.get("suggested_hardware")
    if hardware is not None and hardware not in hardware_flavors():
        problems.append(f"`suggested_hardware: {hardware}` is not one of {', '.join(hardware_flavors())}")
    python = card.get("python_version")
    if python is not None and not (isinstance(python, str) and _PYTHON.match(python)):
        problems.append(f"`python_version` must be a quoted '3.x' or '3.x.x' string, got {python!r}")
    for key in LIST_FIELDS:
        value = card.get(key)
        if value is None:
            continue
        if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
            problems.append(f"`{key}` must be a list of strings")
        elif key != "tags":
            problems += [f"`{key}` holds {v!r}, not a Hub repo id (owner/name)" for v in value if not _REPO_ID.match(v)]
    return problems


def _sdk_version_problems(card: dict, sdk: str, root_requirements) -> list[str]:
    version = card.get("sdk_version")
    if version in (None, ""):
        return [f"`sdk: {sdk}` needs `sdk_version`"]
    if not isinstance(version, str):
        return [f"`sdk_version` must be a quoted string, got {version!r}"]
    path = Path(root_requirements) if root_requirements else repo_root() / "requirements.txt"
    if not path.is_file():
        return []  # an exported folder: nothing to compare with
    pinned = read_pins(path).get(sdk)
    if pinned is not None and pinned != version:
        return [f"`sdk_version: {version}` differs from the {sdk}=={pinned} pin in {path.name}"]
    return []


def validate_space_requirements(folder: str | Path, *, root_requirements: str | Path | None = None) -> list[str]:
    """Problems of a Space's requirements.txt: each line must be `name==version`, with the version the repository
    pins in `root_requirements` (default: this checkout's requirements.txt) or, for a package pinned there only
    through another (fastapi under gradio), the version installed here."""
    path = Path(folder) / "requirements.txt"
    if not path.is_file():
        return [f"{path} is missing; list the Space's packages there, pinned"]
    root = Path(root_requirements) if root_requirements else repo_root() / "requirements.txt"
    pins = read_pins(root) if root.is_file() else {}
    problems = []
    for line in _requirement_lines(path):
        match = _PIN.match(line)
        if match is None:
            problems.append(f"{path.name}: {line!r} is not pinned as name==version")
            continue
        name, version = _normalise(match.group(1)), match.group(3)
        if not pins:
            continue  # an exported folder: nothing to compare with
        if name in pins:
            if pins[name] != version:
                problems.append(f"{path.name}: {name}=={version} differs from the repository's pin {pins[name]}")
            continue
        # Not pinned at the root (a dependency of a pinned package, e.g. fastapi under gradio): it must be the
        # version installed beside the pinned ones, the one the tests ran with.
        installed = _installed_version(name)
        if installed != version:
            found = f"{installed} is installed" if installed else "it is not installed"
            problems.append(f"{path.name}: {name}=={version} is not pinned in {root.name} and {found}")
    return problems


def _installed_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


def find_space(name: str | Path, *, spaces_dir: str | Path | None = None) -> Path:
    """A Space folder: a folder path as it is, else `spaces_dir/name` (default: spaces/ of this checkout)."""
    path = Path(name)
    if path.is_dir():
        return path
    root = Path(spaces_dir) if spaces_dir else default_spaces_dir()
    source = root / str(name)
    if not (source / "app.py").is_file():
        known = sorted(p.name for p in root.iterdir() if (p / "app.py").is_file()) if root.is_dir() else []
        raise ConfigError(f"No Space {str(name)!r} (no app.py in {source}); Spaces: {', '.join(known) or 'none'}.")
    return source


def export_space(name: str | Path, to: str | Path, *, spaces_dir: str | Path | None = None) -> Path:
    """Copy a Space folder plus the hubkit package into `to`, so it runs on Hugging Face Spaces as it is
    (`hubkit push DIR me/my-space --repo-type space --hub hf`). Refuses (CardError) a Space whose README YAML or
    requirements.txt is not valid, and (ConfigError) a `to` that is not an empty folder."""
    source = find_space(name, spaces_dir=spaces_dir)
    if not (source / "app.py").is_file():
        raise ConfigError(f"{source} holds no app.py; a Space folder needs one.")
    problems = validate_space_card(source) + validate_space_requirements(source)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise CardError(f"Space {source.name} is not valid for Hugging Face Spaces: {problems[0]}{more}.")
    target = Path(to)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        raise ConfigError(f"{target} is not empty (or not a folder); export into a new folder.")
    if target.resolve().is_relative_to(source.resolve()):
        raise ConfigError(f"{target} lies inside the Space folder {source}; export elsewhere.")
    ignore = shutil.ignore_patterns(*_IGNORE)
    try:
        shutil.copytree(source, target, ignore=ignore, dirs_exist_ok=True)
        shutil.copytree(Path(__file__).resolve().parent, target / "hubkit", ignore=ignore)
    except OSError as err:
        raise HubkitError(f"Exporting {source.name} to {target} failed: {err}") from err
    return target
