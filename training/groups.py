"""Groups of images that show one thing (issue 18): several photos of one product, one icon in
several themes. Images of a group are positives of each other in the loss (losses.NTXentLoss
with `groups`), beside each image's two augmented views.

`--group-by name`: files with the same stem anywhere in the folder form a group
(`papirus/folder.png` and `breeze/folder.svg`). `--group-by FILE.csv`: rows `path,group`, the
path relative to the folder, an optional header row naming a `path` and a `group` column
(other columns are ignored). An image in no group of two or more (a stem seen once, a path the
CSV leaves out, an empty group cell) learns from its augmentations alone.

Group ids are int64 per image, -1 for none. `epoch_order` keeps a group's members together so
that batches hold group-mates.
"""

from __future__ import annotations

import csv
from collections import Counter
from pathlib import Path, PurePosixPath

import numpy as np

CHUNK = 4  # at most this many members of one group side by side in an epoch's order
SHOWN = 5  # missing paths quoted in an error


def group_ids(names: tuple[str, ...], group_by: str, root: Path) -> np.ndarray:
    """Each image's group id (N,) int64 from its path relative to `root`; -1 for none."""
    if group_by == "name":
        keys: list[str | None] = [PurePosixPath(name).stem for name in names]
    else:
        table = read_group_csv(Path(group_by), root, names)
        keys = [table.get(name) for name in names]
    sizes = Counter(key for key in keys if key)
    index = {key: i for i, key in enumerate(sorted(k for k, n in sizes.items() if n >= 2))}
    return np.array([index.get(key, -1) if key else -1 for key in keys], dtype=np.int64)


def check_source(group_by: str) -> None:
    """Refuse a CSV that is not there before the folder is read (which can take minutes)."""
    if group_by != "name" and not Path(group_by).is_file():
        raise FileNotFoundError(
            f"--group-by {group_by}: no such file (give 'name' to group files by their stem, "
            "or a CSV of path,group rows)"
        )


def read_group_csv(path: Path, root: Path, names: tuple[str, ...]) -> dict[str, str]:
    """{path relative to `root`: group} from a CSV; refuses paths that are not in the folder."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [[cell.strip() for cell in row] for row in csv.reader(f) if any(row)]
    known = set(names)

    def in_folder(relative: str) -> bool:  # an image, or a file that failed to decode
        return relative in known or (root / relative).is_file()

    columns = (0, 1)
    if rows and not in_folder(_relative(rows[0][0])):  # not a file of the folder: a header
        header = [cell.lower() for cell in rows.pop(0)]
        if "path" not in header or "group" not in header:
            raise ValueError(
                f"--group-by {path}: the first row ({', '.join(header)}) is neither a header "
                f"naming a 'path' and a 'group' column nor an image of {root}"
            )
        columns = (header.index("path"), header.index("group"))
    table: dict[str, str] = {}
    for row in rows:
        cells = [*row, "", ""]
        relative, group = _relative(cells[columns[0]]), cells[columns[1]]
        if table.setdefault(relative, group) != group:
            raise ValueError(
                f"--group-by {path}: {relative} is in two groups, {table[relative]} and {group}"
            )
    missing = sorted(p for p in table if not in_folder(p))
    if missing:
        raise ValueError(
            f"--group-by {path}: {len(missing)} of its {len(table)} paths are not files in "
            f"{root} (paths are relative to it), e.g. {', '.join(missing[:SHOWN])}"
        )
    return table


def _relative(cell: str) -> str:
    return PurePosixPath(cell.replace("\\", "/")).as_posix()


def summary(groups: np.ndarray, group_by: str) -> dict:
    """What model.json records: the source, groups of two or more, and the images in them.
    Refuses a grouping that groups nothing: the user asked for positives and would get none."""
    sizes = np.unique(groups[groups >= 0], return_counts=True)[1]
    grouped = sizes >= 2
    result = {
        "by": group_by,
        "groups": int(grouped.sum()),
        "grouped_images": int(sizes[grouped].sum()),
        "images": len(groups),
    }
    if not result["groups"]:
        how = "no two images share a file stem" if group_by == "name" else "no group has two images"
        raise ValueError(
            f"--group-by {group_by}: {how} among the {len(groups)} training images, so there "
            "is nothing to pull together; check the names, or drop --group-by"
        )
    return result


def describe(info: dict) -> str:
    """One line for the run's start and the model card."""
    return (
        f"--group-by {info['by']}: {info['groups']} groups hold {info['grouped_images']} of "
        f"the {info['images']} training images; their members are positives of each other, "
        "the rest learn from their own two views alone"
    )


def epoch_order(groups: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every image once, group-mates side by side: the groups' members shuffled and cut into
    chunks of at most CHUNK, each ungrouped image a chunk of its own, the chunks shuffled."""
    chunks = [[i] for i in np.flatnonzero(groups < 0).tolist()]
    grouped = np.flatnonzero(groups >= 0)
    grouped = grouped[np.argsort(groups[grouped], kind="stable")]
    for members in np.split(grouped, np.flatnonzero(np.diff(groups[grouped])) + 1):
        members = rng.permutation(members).tolist()
        chunks += [members[s : s + CHUNK] for s in range(0, len(members), CHUNK)]
    order = rng.permutation(len(chunks))
    return np.array([i for c in order for i in chunks[c]], dtype=np.int64)
