"""Every error hubkit raises. Each also inherits the builtin a caller would catch without hubkit."""

from __future__ import annotations


class HubkitError(Exception):
    """Base class: catch this to handle any hubkit failure."""


class InvalidRepoIdError(HubkitError, ValueError):
    def __init__(self, repo_id: object, reason: str):
        self.repo_id = repo_id
        super().__init__(
            f"Invalid repo id {repo_id!r}: {reason}. Use 'namespace/name' (letters, digits, '-', '_', '.')."
        )


class RepoNotFoundError(HubkitError, FileNotFoundError):
    def __init__(self, repo_id: str, repo_type: str = "model", *, store: str = "", available: list[str] | None = None):
        self.repo_id, self.repo_type, self.store, self.available = repo_id, repo_type, store, available or []
        where = f" in the {store} store" if store else ""
        hint = f" Repos there: {', '.join(self.available[:10])}" if self.available else ""
        more = " ..." if len(self.available) > 10 else ""
        super().__init__(f"No {repo_type} repo {repo_id!r}{where}.{hint}{more}")


class RevisionNotFoundError(HubkitError, LookupError):
    def __init__(self, repo_id: str, revision: str, *, available: list[str] | None = None):
        self.repo_id, self.revision, self.available = repo_id, revision, available or []
        hint = f" Known revisions: {', '.join(self.available[:10])}" if self.available else ""
        super().__init__(f"Repo {repo_id!r} has no revision {revision!r}.{hint}")


class EmptyFolderError(HubkitError, ValueError):
    def __init__(self, path: object, reason: str = "holds no files (after include/exclude filters)"):
        self.path = path
        super().__init__(f"Nothing to push: {str(path)!r} {reason}.")


class FileTooLargeError(HubkitError, ValueError):
    def __init__(self, path: object, size: int, limit: int):
        self.path, self.size, self.limit = path, size, limit
        super().__init__(
            f"{str(path)!r} is {size:,} bytes, over the {limit:,}-byte limit "
            "(raise it with HUBKIT_MAX_FILE_SIZE or --max-file-size)."
        )


class HubUnreachableError(HubkitError, ConnectionError):
    def __init__(self, endpoint: str, reason: str = ""):
        self.endpoint = endpoint
        extra = f" ({reason})" if reason else ""
        super().__init__(
            f"The Hugging Face Hub at {endpoint} is unreachable{extra}. "
            "Work offline with --offline / HF_HUB_OFFLINE=1, or use the local store (--hub local)."
        )


class PushConflictError(HubkitError, RuntimeError):
    def __init__(self, repo_id: str, detail: str):
        self.repo_id = repo_id
        super().__init__(f"Push to {repo_id!r} failed: {detail}")


class NoMatchingFilesError(HubkitError, FileNotFoundError):
    def __init__(self, repo_id: str, revision: str, include, exclude, *, available: list[str] | None = None):
        self.repo_id, self.revision, self.available = repo_id, revision, available or []
        shown = ", ".join(self.available[:8]) + (" ..." if len(self.available) > 8 else "")
        super().__init__(
            f"No file of {repo_id}@{revision[:12]} matches include={include or '*'} exclude={exclude or []}. "
            f"Files: {shown}"
        )


class StoreError(HubkitError, OSError):
    """The store on disk is unusable (unreadable, corrupt metadata)."""


class AuthError(HubkitError, PermissionError):
    def __init__(self, message: str):
        super().__init__(message)


class CardError(HubkitError, ValueError):
    """A model / dataset / Space card is missing fields or does not parse."""


class ConfigError(HubkitError, ValueError):
    """A recipe, CLI override or config value is wrong."""


class DataError(HubkitError, ValueError):
    """A data set cannot be read or holds no usable samples."""


class UnknownTaskError(HubkitError, ValueError):
    def __init__(self, task: str, known: list[str]):
        self.task, self.known = task, known
        super().__init__(f"Unknown task {task!r}. Known tasks: {', '.join(sorted(known))}.")


class AdapterMismatchError(HubkitError, ValueError):
    """An adapter does not fit the base model (base id, shapes or key names)."""


class UnsafeWeightsError(HubkitError, PermissionError):
    """Pickle weights or remote code were refused because the user did not opt in."""


class InvalidImageError(HubkitError, ValueError):
    """An input image cannot be decoded or has an unsupported shape / mode."""


class PushAfterTrainingError(HubkitError, ConnectionError):
    """A run finished and saved its adapter, but the push at the end failed: the message says how to push later."""


class AdapterConfigError(AdapterMismatchError):
    """adapter_config.json parses but is not a LoRA config hubkit can use (not an object, a field of the wrong type)."""

    def __init__(self, path: object, field: str | None, value: object, expected: str):
        self.path, self.field, self.value = path, field, value
        if field is None:
            what = f"must hold a JSON object of LoRA settings, got {type(value).__name__} {_short(value)}"
        else:
            what = f"field {field!r} must be {expected}, got {_short(value)} ({type(value).__name__})"
        super().__init__(f"{str(path)!r} {what}. Fix it, or save the adapter again with peft's save_pretrained.")


class UnsafePickleError(UnsafeWeightsError):
    """An opted-in pickle (allow_pickle=True) holds objects torch.load(weights_only=True) refuses to build."""

    def __init__(self, path: object, detail: str = ""):
        self.path, self.detail = path, detail
        why = f" ({detail})" if detail else ""
        super().__init__(
            f"{str(path)!r} contains non-tensor objects that torch.load(weights_only=True) refuses{why}, so hubkit "
            "will not load it even with allow_pickle=True (--allow-pickle): unpickling it fully can run arbitrary "
            "code. Convert the weights to safetensors where you trust the file, or get a safetensors copy."
        )

    @classmethod
    def from_unpickling(cls, path: object, err: BaseException) -> UnsafePickleError:
        """Keep the line of torch's message that names the refused object, not its advice to drop weights_only."""
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        for word in ("GLOBAL", "Unsupported"):  # "... unsupported GLOBAL posix.system ...", "Unsupported operand 149"
            named = [line for line in lines if word in line]
            if named:
                return cls(path, named[0])
        return cls(path)


class MissingModelFileError(HubkitError, FileNotFoundError):
    """A base model folder lacks a file its task needs (a processor config, a tokenizer)."""

    def __init__(self, folder: object, names: tuple[str, ...], *, task: str, needed_for: str, hint: str = ""):
        self.folder, self.names, self.task = folder, names, task
        wanted = names[0] + (f" (or {' / '.join(names[1:])})" if len(names) > 1 else "")
        super().__init__(
            f"{str(folder)!r} has no {wanted}, which the {task!r} task needs for its {needed_for}. "
            f"{hint or 'Copy it from the Hub repo the weights came from.'}"
        )


def _short(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class StageError(HubkitError, RuntimeError):
    """A pipeline stage failed; `stage` names it and `error` is what it raised (also the ``__cause__``)."""

    def __init__(self, stage, error: BaseException):
        self.stage, self.task, self.base, self.error = stage.name, stage.task, stage.base, error
        where = f"{stage.task}, base {str(stage.base)!r}" if stage.base else stage.task
        super().__init__(f"Pipeline stage {stage.name!r} ({where}) failed: {type(error).__name__}: {error}")


class UnknownArgumentError(ConfigError, TypeError):
    """A task's predict() got keyword arguments it does not take (a ConfigError, and the TypeError Python raises)."""

    def __init__(self, task: str, unknown, accepted):
        import difflib

        self.task, self.unknown, self.accepted = task, sorted(unknown), tuple(accepted)
        names = ", ".join(repr(name) for name in self.unknown)
        guesses = [m for name in self.unknown for m in difflib.get_close_matches(name, self.accepted, n=1)]
        hint = f" (did you mean {', '.join(repr(g) for g in dict.fromkeys(guesses))}?)" if guesses else ""
        takes = ", ".join(self.accepted) if self.accepted else "none besides the images"
        plural = "s" if len(self.unknown) > 1 else ""
        super().__init__(f"Unknown predict() argument{plural} {names} for task {task!r}{hint}. Its arguments: {takes}.")


class TaskDefinitionError(HubkitError, TypeError):
    """A Task subclass cannot be registered: a required fact of its record is missing or malformed."""

    def __init__(self, task_class: object, problem: str):
        self.task_class = task_class
        where = f"{getattr(task_class, '__module__', '?')}.{getattr(task_class, '__qualname__', task_class)}"
        super().__init__(f"Task class {where} {problem}.")


class DuplicateTaskError(HubkitError, ValueError):
    """register_task got a task whose name, tiny family or architecture a registered task already claims."""

    def __init__(self, what: str, value: str, *, registered: str, new: str):
        self.what, self.value, self.registered, self.new = what, value, registered, new
        super().__init__(
            f"Cannot register {new}: the {what} {value!r} already belongs to {registered}. "
            f"Give {new} its own {what}, or change the registered task instead of adding a second one."
        )
