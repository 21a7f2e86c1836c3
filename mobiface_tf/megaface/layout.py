"""The MegaFace Challenge 1 directory layout (Kemelmacher-Shlizerman et al., CVPR 2016), read by
mobiface_tf/commands/bench_identify.py --megaface=ROOT (see docs/identification.md):

  ROOT/devkit/templatelists/facescrub_features_list.json         {"path": [...], "id": [...]} probe images
  ROOT/devkit/templatelists/megaface_features_list.json_<N>_1    {"path": [...]}, N = 10 ... 1000000
  ROOT/facescrub_images/<path>, ROOT/megaface_images/<path>      aligned 112x112 crops, named as in the lists
  ROOT/facescrub_noises.txt, ROOT/megaface_noises.txt           optional lists of noisy images to remove
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

MEGAFACE_SIZES = (10, 100, 1000, 10_000, 100_000, 1_000_000)
TEMPLATE_LISTS = Path("devkit") / "templatelists"
PROBE_LIST = "facescrub_features_list.json"
DISTRACTOR_LIST = "megaface_features_list.json_{}_1"
PROBE_IMAGES, DISTRACTOR_IMAGES = "facescrub_images", "megaface_images"
PROBE_NOISES, DISTRACTOR_NOISES = "facescrub_noises.txt", "megaface_noises.txt"


@dataclass
class MegaFaceLayout:
    """What a MegaFace Challenge 1 directory holds, with the noisy images already removed."""
    probe_root: Path
    probe_paths: list            # relative to probe_root
    probe_ids: list              # identity of each probe image
    distractor_root: Path
    sets: dict                   # {N: [relative distractor paths]} for each set list present
    removed_probes: list         # noisy probe images left out
    removed_distractors: list    # noisy distractor images left out (union over the sets)


def _read_noise_list(path: Path) -> set[str]:
    if not path.is_file():
        return set()
    out = set()
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            out.add(line.replace("\\", "/"))
    return out


def _is_noise(rel: str, noise: set[str]) -> bool:
    # The published lists name images by relative path or by file name (with or without extension).
    base = rel.rsplit("/", 1)[-1]
    return rel in noise or base in noise or os.path.splitext(base)[0] in noise


def _read_list(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{str(path)!r} is not the devkit's JSON list: {e}") from None
    if not isinstance(data, dict) or not isinstance(data.get("path"), list):
        raise ValueError(f"{str(path)!r} has no 'path' list; expected the devkit's {{\"path\": [...]}} format")
    return data


def read_megaface_layout(root, probe_images=None, distractor_images=None, remove_noise: bool = True) -> MegaFaceLayout:
    """Read a MegaFace Challenge 1 directory (layout above); `probe_images` / `distractor_images` override
    the image folders. With remove_noise, images named in the noise lists are left out of probes and sets."""
    root = Path(root)
    lists = root / TEMPLATE_LISTS
    probe_list = lists / PROBE_LIST
    if not probe_list.is_file():
        raise FileNotFoundError(f"MegaFace layout: {str(probe_list)!r} not found. --megaface=ROOT wants the devkit's "
                                f"template lists under ROOT/{TEMPLATE_LISTS} (see the README's identification section)")
    sets = {n: lists / DISTRACTOR_LIST.format(n) for n in MEGAFACE_SIZES}
    sets = {n: p for n, p in sets.items() if p.is_file()}
    if not sets:
        raise FileNotFoundError(f"MegaFace layout: no distractor set list {DISTRACTOR_LIST.format('<N>')} under "
                                f"{str(lists)!r} (N = {', '.join(map(str, MEGAFACE_SIZES))})")
    probe_noise = _read_noise_list(root / PROBE_NOISES) if remove_noise else set()
    distractor_noise = _read_noise_list(root / DISTRACTOR_NOISES) if remove_noise else set()
    data = _read_list(probe_list)
    paths = [p.replace("\\", "/") for p in data["path"]]
    ids = data.get("id") or [p.split("/", 1)[0] for p in paths]
    if len(ids) != len(paths):
        raise ValueError(f"{str(probe_list)!r}: {len(ids)} ids for {len(paths)} paths")
    keep = [not _is_noise(p, probe_noise) for p in paths]
    removed_d: set[str] = set()
    out_sets = {}
    for n, p in sorted(sets.items()):
        rels = [r.replace("\\", "/") for r in _read_list(p)["path"]]
        out_sets[n] = [r for r in rels if not _is_noise(r, distractor_noise)]
        removed_d.update(r for r in rels if _is_noise(r, distractor_noise))
    return MegaFaceLayout(
        probe_root=Path(probe_images) if probe_images else root / PROBE_IMAGES,
        probe_paths=[p for p, k in zip(paths, keep) if k], probe_ids=[str(i) for i, k in zip(ids, keep) if k],
        distractor_root=Path(distractor_images) if distractor_images else root / DISTRACTOR_IMAGES,
        sets=out_sets, removed_probes=[p for p, k in zip(paths, keep) if not k],
        removed_distractors=sorted(removed_d))
