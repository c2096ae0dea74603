"""Where a benchmark's rows come from: the Hugging Face cache (offline) or a local folder.

`--task NAME` reads the dataset's snapshot from the Hugging Face hub cache (what `hf download REPO
--repo-type dataset` writes; nothing is fetched: a missing dataset is a one-line error naming that command).
`--task NAME=FOLDER` reads a local copy: such a snapshot folder, a `Dataset.save_to_disk` /
`DatasetDict.save_to_disk` folder, a folder of parquet / jsonl / csv files named by split
(`test.jsonl`, `validation-00000-of-00001.parquet`), or, for several configs (MMLU's subjects), one such
folder per config (`FOLDER/abstract_algebra/`). Dataset loading scripts are never run.

Parquet and JSONL files are read directly (pyarrow, json): a snapshot's README names each config's files
per split, and nothing is written to the `datasets` cache; other files go through `datasets`.
"""

from __future__ import annotations

import os
from pathlib import Path

from emo_slice.data.sources import load_saved, read_parquet, read_records
from emo_slice.errors import CheckpointError, DataError
from emo_slice.io.safefiles import cache_ref, cache_repo, folder_file, hub_cache_dir
from emo_slice.safejson import read_limited

_REFETCH = "copy the file into the folder, or download the dataset again"
MAX_README_BYTES = 4_000_000


class MissingData(LookupError):
    """The source has no such config or split."""


def _datasets_cache_dir() -> str:
    env = os.environ.get("HF_DATASETS_CACHE")
    if env:
        return str(Path(env).expanduser())
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return str(Path(home).expanduser() / "datasets")


def cached_snapshot(repo: str) -> Path | None:
    """The folder of `repo`'s cached snapshot (refs/main), or None: no network is used."""
    base = cache_repo(repo, "dataset")
    try:
        commit = cache_ref(base)
    except CheckpointError as e:
        raise DataError(str(e)) from None
    if commit is None:
        snaps = sorted((base / "snapshots").glob("*")) if (base / "snapshots").is_dir() else []
        return snaps[-1] if len(snaps) == 1 else None
    snap = base / "snapshots" / commit
    return snap if snap.is_dir() else None


def download_hint(name: str, repo: str) -> str:
    return (
        f"{name}: dataset {repo} is not in the Hugging Face cache ({hub_cache_dir()}); run "
        f"`hf download {repo} --repo-type dataset` where there is network (with the same HF_HOME), or give a "
        f"local copy: --task {name}=FOLDER (a downloaded snapshot, a save_to_disk folder, or parquet/jsonl "
        "files named by split)"
    )


def _is_saved(p: Path) -> bool:
    return p.is_dir() and any((p / f).exists() for f in ("dataset_dict.json", "state.json", "dataset_info.json"))


def _readme_configs(root: Path) -> dict[str, dict]:
    """The configs a snapshot's README declares (its YAML front matter): name -> {split: [path patterns]}
    ({} when a config gives no data_files: `datasets` infers them)."""
    if not os.path.lexists(root / "README.md"):
        return {}
    import yaml

    readme = folder_file(root, "README.md", "dataset card", kind="dataset folder", error=DataError, hint=_REFETCH)
    text = read_limited(readme, MAX_README_BYTES, error=DataError, hint=_REFETCH).decode("utf-8", errors="replace")
    if not text.startswith("---"):
        return {}
    try:
        meta = yaml.safe_load(text.split("---", 2)[1]) or {}
    except (yaml.YAMLError, RecursionError):  # PyYAML's composer recurses (pure Python: a clean RecursionError)
        return {}
    out = {}
    for c in (meta.get("configs") if isinstance(meta, dict) else None) or []:
        if isinstance(c, dict):
            out[str(c.get("config_name", "default"))[:200]] = _config_splits(c.get("data_files") or [])
    return out


def _config_splits(files) -> dict[str, list[str]]:
    """{split: [path patterns]} of a README config's data_files (entries that are not text are left out)."""
    files = [files] if isinstance(files, (str, dict)) else files if isinstance(files, list) else []
    splits: dict[str, list[str]] = {}
    for f in files:
        if isinstance(f, dict) and isinstance(f.get("split"), str):
            paths = f.get("path", [])
            paths = [paths] if isinstance(paths, str) else paths if isinstance(paths, list) else []
            splits[f["split"]] = [p for p in paths if isinstance(p, str)]
    return splits


def _read_files(files: list[Path], label: str) -> list[dict] | None:
    """Rows of parquet / jsonl files read directly (no `datasets` cache written); None for other types."""
    if all(p.suffix == ".parquet" for p in files):
        return [r for p in files for r in read_parquet(p, label)]
    if all(p.suffix == ".jsonl" for p in files):
        return [r for p in files for r in read_records(p, flag=label)]
    return None


class Source:
    """One dataset root (a snapshot or a local folder); rows by (config, split), each read once."""

    def __init__(self, root: Path, label: str, hint: str = ""):
        self.root, self.label, self.hint = root, label, hint  # hint: how to get the missing data
        self._rows: dict[tuple, list[dict]] = {}
        # datasets runs FOLDER/FOLDER.py as a loading script (older versions) or refuses the folder (newer ones);
        # other .py files (a hub snapshot's folder is named by its commit) are never looked at
        if (root / f"{root.name}.py").is_file():
            raise DataError(
                f"{label}: {root} holds a dataset loading script ({root.name}.py), which emo-slice never runs; "
                "give the data itself (parquet / jsonl files, or a save_to_disk folder)"
            )

    def _file(self, path: Path) -> Path:
        """A data file of the source, checked: a regular file inside the root, a link only to inside it (or, in the
        hub cache, to the blobs of the same repository)."""
        rel = path.relative_to(self.root)
        return folder_file(self.root, str(rel), "data file", kind="dataset folder", error=DataError, hint=_REFETCH)

    def configs(self) -> dict[str, dict]:
        if not hasattr(self, "_configs"):
            self._configs = _readme_configs(self.root)
        return self._configs

    def has_config(self, config: str) -> bool:
        return (self.root / config).is_dir() or config in self.configs()

    def rows(self, config: str | None, split: str, single_ok: bool = False) -> list[dict]:
        """The rows of a split; single_ok: a saved Dataset without split names stands for it (the scored split)."""
        key = (config, split, single_ok)
        if key not in self._rows:
            self._rows[key] = self._load(config, split, single_ok)
        return self._rows[key]

    def _load(self, config: str | None, split: str, single_ok: bool) -> list[dict]:
        d = self.root
        if config and config in self.configs():  # a snapshot whose README declares its configs
            patterns = self.configs()[config]
            if not patterns:
                return self._load_dataset(str(d), config, None, split)
            if split not in patterns:
                raise MissingData(f"config {config!r} has no split {split!r} (splits: {', '.join(patterns)})")
            safe = [pat for pat in patterns[split] if not pat.startswith(("/", "~")) and ".." not in Path(pat).parts]
            files = sorted({self._file(p) for pat in safe for p in d.glob(pat) if p.is_file()})  # inside only
            if not files:
                raise MissingData(
                    f"the files of config {config!r} split {split!r} ({patterns[split][0]}) are not there"
                )
            rows = _read_files(files, self.label)
            return rows if rows is not None else self._load_dataset(str(d), config, None, split)
        if config and self.configs():
            raise MissingData(f"no config {config!r} (configs: {', '.join(self.configs())[:300]})")
        if config and (d / config).is_dir():
            d = d / config
        if _is_saved(d):
            import datasets

            datasets.disable_progress_bars()
            ds = load_saved(d, self.label)
            if not isinstance(ds, datasets.DatasetDict):
                if single_ok:
                    return ds.to_list()
                raise MissingData(f"{d} is one dataset without split names; save a DatasetDict with a {split!r} split")
            if split not in ds:
                raise MissingData(f"{d} has no split {split!r} (splits: {', '.join(ds)})")
            return ds[split].to_list()
        files = [self._file(p) for p in _split_files(d, split)]
        if not files:
            raise MissingData(
                f"{d} has no split {split!r} (no save_to_disk folder, and no {split}.jsonl / "
                f"{split}-*.parquet / {split}/ data files)"
            )
        kinds = {_KIND[p.suffix] for p in files}
        if len(kinds) > 1:
            raise DataError(f"{self.label}: split {split!r} of {d} mixes file types ({', '.join(sorted(kinds))})")
        rows = _read_files(files, self.label)
        return rows if rows is not None else self._load_dataset(kinds.pop(), None, [str(p) for p in files], split)

    def _load_dataset(self, path: str, name: str | None, files: list[str] | None, split: str) -> list[dict]:
        import datasets

        datasets.disable_progress_bars()
        try:
            data_files = {split: files} if files else None
            ds = datasets.load_dataset(path, name, data_files=data_files, split=split, cache_dir=_datasets_cache_dir())
        except ValueError as e:  # an unknown split
            raise MissingData(f"{path}: {str(e).splitlines()[0][:200]}") from None
        except Exception as e:
            raise DataError(f"{self.label}: cannot read {path}: {str(e).splitlines()[0][:200]}{self.hint}") from None
        return ds.to_list()


_KIND = {".parquet": "parquet", ".jsonl": "json", ".json": "json", ".csv": "csv", ".arrow": "arrow"}


def _split_files(d: Path, split: str) -> list[Path]:
    """Data files of one split in a folder: SPLIT.jsonl, SPLIT-00000-of-00001.parquet, SPLIT_x.csv, SPLIT/*.
    (any depth: a Hub layout such as data/test-....parquet)."""
    out = []
    for p in sorted(d.rglob("*")):
        if p.suffix not in _KIND or not p.is_file():
            continue
        rel = p.relative_to(d).parts
        stem = p.name[: -len(p.suffix)]
        if stem == split or stem.startswith((split + "-", split + "_", split + ".")) or split in rel[:-1]:
            out.append(p)
    return out


def open_source(name: str, repo: str, folder: str | None) -> Source:
    """The dataset root of a benchmark: `folder` when given, else the hub cache's snapshot of `repo`."""
    if folder is not None:
        p = Path(folder).expanduser()
        if not p.is_dir():
            raise DataError(
                f"--task {name}={folder}: no such folder; give the folder of a downloaded snapshot, a save_to_disk "
                "folder, or a folder of parquet/jsonl files named by split"
            )
        return Source(p, f"--task {name}={folder}")
    snap = cached_snapshot(repo)
    if snap is None:
        raise DataError(download_hint(name, repo))
    hint = f"; to fetch it whole: `hf download {repo} --repo-type dataset`"
    return Source(snap, f"{name} ({repo} in the Hugging Face cache)", hint)
