"""`manifest.json`, the one description of a shard directory: its schema, reader and writer.

Every writer (mobiface-prepare through mobiface_tf.data.prepare, its `add_teacher`, the synthetic writer,
tools/research/bench_data.py) and every reader (the tf.data pipeline, the trainer, compare) goes through this module.

Schema (keys every manifest has; writers may add more, e.g. "teacher", "excluded", "aligned_by"):
  num_images    int   examples written to the shards
  num_classes   int   len(class_names)
  class_names   list  label i -> identity name (empty when the writer has no names)
  skipped       list  [{path, reason}] inputs not written
  shards        list  [{file, num_images, bytes}] one per shard, in order
  version       int   MANIFEST_VERSION, stamped by write_manifest. 1 (or no field: manifests written before it
                      existed) hashed a SavedModel teacher's files without separators; 2: "teacher"."sha256" is
                      mobiface_tf.fingerprint.model_fingerprint, the one model fingerprint (the same as identify's
                      index and the threshold sidecar; an ONNX teacher's external data included). Old manifests are
                      read as they are; a SavedModel or external-data teacher of a version-1 manifest is simply
                      embedded again by a rerun of add_teacher. A version above MANIFEST_VERSION is refused.
Invariants checked on write: sum(shards.num_images) == num_images; when present, sum(class_counts) ==
num_images, len(class_counts) == num_classes, and num_images + len(skipped) == num_inputs.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from mobiface_tf.atomic import write_json_atomic

MANIFEST = "manifest.json"
MANIFEST_VERSION = 2
REQUIRED = ("num_images", "num_classes", "class_names", "skipped", "shards")


class ManifestError(ValueError):
    """A manifest that is missing, unreadable or breaks the schema; the message names the file."""


def manifest_path(dir_or_pattern) -> str:
    """The manifest.json beside the shards: from a directory, a shard path or glob, or a list of shard paths."""
    if isinstance(dir_or_pattern, (list, tuple)):
        return os.path.join(os.path.dirname(str(dir_or_pattern[0])), MANIFEST)
    path = str(dir_or_pattern)
    if not os.path.isdir(path):
        path = os.path.dirname(path)
    return os.path.join(path, MANIFEST)


def validate(manifest: dict, where: str = MANIFEST) -> dict:
    """Returns `manifest` unchanged, or raises ManifestError naming `where` and the broken rule."""
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise ManifestError(f"{where} lacks {missing}; re-run mobiface-prepare")
    version = manifest.get("version", 1)
    if not isinstance(version, int) or not 1 <= version <= MANIFEST_VERSION:
        raise ManifestError(f"{where} has version {version!r}; this mobiface_tf reads versions 1 to "
                            f"{MANIFEST_VERSION}: update mobiface_tf, or re-run mobiface-prepare")
    n = int(manifest["num_images"])
    if sum(int(s["num_images"]) for s in manifest["shards"]) != n:
        raise ManifestError(f"{where}: the shards hold {sum(int(s['num_images']) for s in manifest['shards'])} "
                            f"examples but num_images is {n}")
    counts = manifest.get("class_counts")
    if counts is not None and (sum(counts) != n or len(counts) != int(manifest["num_classes"])):
        raise ManifestError(f"{where}: class_counts ({len(counts)} classes, {sum(counts)} images) disagree with "
                            f"num_classes {manifest['num_classes']} / num_images {n}")
    if "num_inputs" in manifest and n + len(manifest["skipped"]) != int(manifest["num_inputs"]):
        raise ManifestError(f"{where}: {n} images + {len(manifest['skipped'])} skipped != "
                            f"{manifest['num_inputs']} inputs")
    return manifest


def read_manifest(dir_or_pattern) -> dict:
    """The manifest beside the shards (see the module docstring), validated.

    Raises ManifestError (a ValueError) when it is missing, is not JSON, or breaks the schema.
    """
    path = manifest_path(dir_or_pattern)
    if not os.path.exists(path):
        raise ManifestError(f"no {MANIFEST} at '{path}'. Run mobiface-prepare to write shards and manifest")
    try:
        with open(path) as f:
            manifest = json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise ManifestError(f"cannot read '{path}' ({e}); re-run mobiface-prepare") from None
    return validate(manifest, path)


def write_manifest(out_dir, manifest: dict) -> Path:
    """Validate and write `out_dir`/manifest.json atomically (temp file + rename), stamped with
    "version": MANIFEST_VERSION (every writer now fingerprints its teacher the current way); returns its path."""
    path = Path(out_dir) / MANIFEST
    manifest["version"] = MANIFEST_VERSION
    validate(manifest, str(path))
    write_json_atomic(path, manifest)
    return path
