"""Identity folder trees (`root/<identity>/[sub-folders/]<photo>`): which folders are identities, their names
(Unicode NFC, so NFC and NFD spellings of one name are one identity), and finding a photo by its stem.

What is a photo, and what is hidden, is mobiface_tf.images' rule (list_images, hidden_reason).
"""
from __future__ import annotations

import unicodedata
from pathlib import Path

from mobiface_tf.images import IMAGE_EXTENSIONS, MARKER_FILES, Skipped, hidden_reason, list_images


def identity_name(folder_name: str) -> str:
    """An identity's name: its folder name in Unicode NFC (macOS writes NFD, typed and Linux names are NFC)."""
    return unicodedata.normalize("NFC", folder_name)


def _log_merge(name: str, folders: list[str]) -> None:
    import logging
    logging.getLogger("mobiface_tf.images").warning(merge_message(name, folders))


def merge_message(name: str, folders: list[str]) -> str:
    """One line saying which identity folders were merged (names shown with escapes, since they print alike)."""
    return (f"identity folders {' and '.join(ascii(f) for f in folders)} have the same name after Unicode NFC "
            f"normalisation: merged into one identity {name!r}; rename one of them if they are different people")


def list_identity_tree(root, on_merge=_log_merge) -> tuple[list[tuple[str, list[Path]]], list[Skipped]]:
    """`root/<identity>/[sub-folders/]<photo>` -> ([(identity, photos)] sorted by name, skipped entries).

    Each identity is a visible folder directly under `root`; photos in its sub-folders belong to it. Identity
    names are folder names in Unicode NFC (identity_name): folders whose names differ only in normalisation
    (NFC and NFD spellings of "Renée") are one identity, their photos listed together, and
    `on_merge(name, [folder names])` is called once per such identity (default: a logged warning).
    Identity folders without any photo are left out of the list (their files are in `skipped`). Files directly
    under `root` are not inside an identity folder and are skipped (MARKER_FILES excepted: they are not inputs).
    Hidden and litter entries are skipped at every level. Raises ValueError when `root` is not a directory.
    """
    root = Path(root)
    if not root.is_dir():
        raise ValueError(f"not a directory: '{root}'")
    folders: dict[str, list[Path]] = {}
    skipped: list[Skipped] = []
    for entry in sorted(root.iterdir(), key=lambda p: p.name):
        why = hidden_reason(entry.name)
        is_dir = entry.is_dir()
        if why is not None:
            skipped.append(Skipped(entry, f"{why} {'folder' if is_dir else 'file'}, not an identity"))
        elif is_dir:
            folders.setdefault(identity_name(entry.name), []).append(entry)
        elif entry.name not in MARKER_FILES:
            skipped.append(Skipped(entry, "not inside an identity folder (the layout is <identity>/<photo>)"))
    identities: list[tuple[str, list[Path]]] = []
    for name in sorted(folders):
        photos: list[Path] = []
        for folder in folders[name]:
            found, left_out = list_images(folder)
            photos += found
            skipped += left_out
        if len(folders[name]) > 1 and on_merge is not None:
            on_merge(name, [f.name for f in folders[name]])
        if photos:
            identities.append((name, photos))
    return identities, skipped


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
