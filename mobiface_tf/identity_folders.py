"""Identity folder trees (`root/<identity>/[sub-folders/]<photo>`): which folders are identities, their names,
which folders are one person, and finding a photo by its stem.

One name rule decides identity everywhere (prepare's classes, identify's gallery, evaluate's folders): the rule
of `--exclude_names`, mobiface_tf.data.people.canonical_name (Unicode NFC, any letter case, spaces =
underscores). Folders whose names are equal under it (`Colin_Powell/` and `colin_powell/`, `Tony Blair/` and
`Tony_Blair/`, "Renée" in NFC and NFD) are one identity, their photos listed together, with a warning naming
the folders. A folder name that is not UTF-8 is read, and named by its printable form (`Jos\\xe9_Maria`).

What is a photo, what is hidden and which symlinks are followed is mobiface_tf.images' rule (list_images,
hidden_reason, symlink_reason).
"""
from __future__ import annotations

import os
import unicodedata
from pathlib import Path

from mobiface_tf.data.people import canonical_name
from mobiface_tf.images import (IMAGE_EXTENSIONS, MARKER_FILES, Skipped, hidden_reason, list_images, printable,
                                symlink_reason)


def identity_name(folder_name: str) -> str:
    """An identity folder's name as text: printable (a name that is not UTF-8 gets `\\xNN` escapes) and in
    Unicode NFC (macOS writes NFD, typed and Linux names are NFC)."""
    return unicodedata.normalize("NFC", printable(folder_name))


def identity_key(folder_name: str) -> str:
    """The key that decides which folders are one person: canonical_name of the identity name (the rule of
    --exclude_names: NFC, case-folded, runs of spaces and underscores as one underscore)."""
    return canonical_name(identity_name(folder_name))


def log_merge(name: str, folders: list[str]) -> None:
    """The default on_merge: merge_message as a logged warning."""
    import logging
    logging.getLogger("mobiface_tf.images").warning(merge_message(name, folders))


def merge_message(name: str, folders: list[str]) -> str:
    """One line saying which identity folders were merged (names shown with escapes, since they may print alike)."""
    return (f"identity folders {' and '.join(ascii(f) for f in folders)} are one name under the identity name rule "
            f"(Unicode NFC, any letter case, spaces = underscores; the rule of --exclude_names): merged into one "
            f"identity {name!r}; rename one of them if they are different people")


def list_identity_tree(root, on_merge=log_merge) -> tuple[list[tuple[str, list[Path]]], list[Skipped]]:
    """`root/<identity>/[sub-folders/]<photo>` -> ([(identity, photos)] sorted by name, skipped entries).

    Each identity is a visible folder directly under `root`; photos in its sub-folders belong to it. Folders
    whose names have one `identity_key` (`Colin_Powell` and `colin_powell`, `Tony Blair` and `Tony_Blair`, NFC
    and NFD spellings of "Renée") are one identity, their photos listed together; it is named by the first of
    their `identity_name`s in sorted order (`Colin_Powell` before `colin_powell`), and `on_merge(name, [folder
    names, printable])` is called once per such identity (default: a logged warning). Identity folders without
    any photo are left out of the list (their files are in `skipped`). Files directly under `root` are not
    inside an identity folder and are skipped (MARKER_FILES excepted: they are not inputs). Hidden and litter
    entries are skipped at every level, and so are symlinks that loop, lead nowhere, lead back up to `root` or
    one of its ancestors, or into another folder of the tree (mobiface_tf.images.symlink_reason); a folder
    reached twice is listed once.
    Raises ValueError when `root` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"not a directory: '{printable(root)}'")
    real_root = os.path.realpath(root)
    folders: dict[str, list[Path]] = {}
    skipped: list[Skipped] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        why = hidden_reason(entry.name)
        is_dir = entry.is_dir()
        if why is not None:
            skipped.append(Skipped(entry, f"{why} {'folder' if is_dir else 'file'}, not an identity"))
        elif entry.is_symlink() and (link_why := symlink_reason(entry, real_root, real_root)) is not None:
            skipped.append(Skipped(entry, link_why))
        elif is_dir:
            folders.setdefault(identity_key(entry.name), []).append(entry)
        elif entry.name not in MARKER_FILES:
            skipped.append(Skipped(entry, "not inside an identity folder (the layout is <identity>/<photo>)"))
    identities: list[tuple[str, list[Path]]] = []
    seen: set[str] = set()  # real paths listed so far: a folder reached from two identities is listed once
    groups = sorted(((min(identity_name(f.name) for f in group), group) for group in folders.values()),
                    key=lambda g: g[0])
    for name, group in groups:
        photos: list[Path] = []
        for folder in group:
            found, left_out = list_images(folder, root=root, seen=seen)
            photos += found
            skipped += left_out
        if len(group) > 1 and on_merge is not None:
            on_merge(name, sorted(printable(f.name) for f in group))
        if photos:
            identities.append((name, photos))
    return identities, skipped


def folders_by_key(root) -> dict[str, list[Path]]:
    """{identity_key: [visible folders directly under `root` with that key]}: the folders that hold one
    person's photos under the name rule (for readers that look a person up by name, e.g. LFW pairs)."""
    out: dict[str, list[Path]] = {}
    for entry in sorted(Path(root).iterdir(), key=lambda p: p.name):
        if hidden_reason(entry.name) is None and entry.is_dir():
            out.setdefault(identity_key(entry.name), []).append(entry)
    return out


def find_image(folder, stem: str) -> Path | None:
    """`folder/stem.<ext>` for the first supported extension that exists (lower, then upper case), else None.

    LFW names its photos `<Name>_<NNNN>.jpg`, but converted copies keep the stem with another extension.
    """
    folder = Path(folder)
    for ext in IMAGE_EXTENSIONS:
        for e in (ext, ext.upper()):
            p = folder / (stem + e)
            if p.is_file():
                return p
    return None
