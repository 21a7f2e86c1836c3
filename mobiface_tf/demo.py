"""Make the README's verify / identify demo: photos, two galleries and a model link, in one folder.

    python -m mobiface_tf.demo --output=demo          # or: mobiface-demo --output=demo

From ../shared/data (LFW 112x112 crops + the reference MobileFaceNet) it writes, under --output:
  colin_big_1600x1200.jpg   Colin_Powell_0001 enlarged 2x, pasted off-centre on a 1600x1200 textured canvas
  colin_small_64x64.jpg     Colin_Powell_0002 shrunk to 64x64
  colin_rotated_exif6.jpg   Colin_Powell_0001 enlarged, stored sideways with EXIF Orientation 6 (a phone portrait)
  two_faces_1600x1200.jpg   Colin_Powell_0001 (large, central) and Tony_Blair_0002 (small, in a corner) on a canvas
  tony_big_1600x1200.jpg    Tony_Blair_0001 on another canvas
  query_serena.jpg          Serena_Williams_0001;  query_agassi.jpg  Andre_Agassi_0003 (gallery_90 holds 1-2)
  query_stranger.jpg        Alan_Greer_0001: LFW has one photo of him, so he is in no gallery
  wall.jpg                  a plain grey 640x480 image (no face)
  gallery/                  5 identities x photos 3-5 (Colin_Powell, Tony_Blair, Serena_Williams, ...)
  gallery_90/               the first 90 LFW identities (alphabetical) with >= 3 photos, photos 1-2 of each
  model.tflite              a link to ../shared/data/models/mobilefacenet_insightface_fp32.tflite
Without ../shared/data the same files are drawn from the quickstart's SYNTHETIC faces (mobiface_tf.data.synthetic;
the faces are not real, so expect no meaningful answers) and model.tflite links to the quickstart's export
(quickstart_out/mobiface_quickstart.tflite, made by `make quickstart`) when it exists. With no model of
either kind, model.tflite links to the student this repo ships (models/mobiface_student_fp32.tflite).
Rerunning starts afresh (photos, galleries and their enrolment index are rewritten), so the first identify
run on each gallery prints what the README shows.
"""
from __future__ import annotations

if __name__ == "__main__":  # `python -m mobiface_tf.demo`: the demo command (see mobiface_tf/cli.py)
    from mobiface_tf import cli

    cli.demo()


import re
import shutil
import sys
from pathlib import Path

import numpy as np
from absl import flags
from PIL import Image

from mobiface_tf.atomic import atomic_path, is_temp_name
from mobiface_tf.shipped import STUDENT_TFLITE

GALLERY_5 = ("Colin_Powell", "Tony_Blair", "Serena_Williams", "Gerhard_Schroeder", "Ariel_Sharon")
REFERENCE_MODEL = Path("models") / "mobilefacenet_insightface_fp32.tflite"
QUICKSTART_MODEL = Path("quickstart_out") / "mobiface_quickstart.tflite"


def _canvas(w: int, h: int, seed: int) -> Image.Image:
    """A smooth random texture (a wall, a room) so the photo is not a flat background."""
    r = np.random.default_rng(seed)
    small = r.uniform(40, 220, (6, 8, 3)).astype(np.uint8)
    return Image.fromarray(small).resize((w, h), Image.BICUBIC)


def _paste(canvas: Image.Image, face: Image.Image, scale: float, centre: tuple[float, float]) -> Image.Image:
    face = face.resize((round(face.width * scale), round(face.height * scale)), Image.BICUBIC)
    x, y = round(centre[0] * canvas.width - face.width / 2), round(centre[1] * canvas.height - face.height / 2)
    canvas.paste(face, (x, y))
    return canvas


class _LFW:
    """Photos by (name, number) from an LFW-style folder <Name>/<Name>_NNNN.jpg."""

    def __init__(self, root: Path):
        self.root = root

    def photo(self, name: str, k: int) -> Image.Image:
        return Image.open(self.root / name / f"{name}_{k:04d}.jpg").convert("RGB")

    def copy(self, name: str, k: int, dst: Path) -> None:
        shutil.copyfile(self.root / name / f"{name}_{k:04d}.jpg", dst)

    def people(self, min_photos: int) -> list[str]:
        return sorted(d.name for d in self.root.iterdir()
                      if d.is_dir() and len(list(d.glob(f"{d.name}_*.jpg"))) >= min_photos)


class _Synthetic:
    """The same interface over mobiface_tf.data.synthetic identities (named after the LFW people they replace)."""

    def __init__(self):
        self.names: dict[str, int] = {}

    def _id(self, name: str) -> int:
        return self.names.setdefault(name, len(self.names))

    def photo(self, name: str, k: int) -> Image.Image:
        from mobiface_tf.data import synthetic

        return Image.fromarray(synthetic.render_identity(seed=7, identity=self._id(name), num_images=k)[k - 1])

    def copy(self, name: str, k: int, dst: Path) -> None:
        self.photo(name, k).save(dst, quality=95)

    def people(self, min_photos: int) -> list[str]:
        del min_photos
        return [f"synthetic_{i:03d}" for i in range(90)]


def demo_folder_problem(output) -> str | None:
    """Why `output` holds something a demo rerun must not delete (one line), or None. A rerun removes gallery/ and
    gallery_90/ and replaces the model.tflite link: only what a demo made is removed, i.e. gallery folders holding
    nothing but identity folders of <Name>_NNNN.jpg photos (and the enrolment index), and a link."""
    out = Path(output)
    for gallery in ("gallery", "gallery_90"):
        root = out / gallery
        if not (root.exists() or root.is_symlink()):
            continue
        if root.is_symlink() or not root.is_dir():
            return f"{root} is not a demo gallery folder"
        for entry in root.iterdir():
            if entry.is_file() and (entry.name == ".mobiface_index.npz" or is_temp_name(entry.name)):
                continue  # identify's enrolment index of the gallery (or a killed write of it)
            photo = re.compile(rf"{re.escape(entry.name)}_\d{{4}}\.jpg")  # what make_demo copies: <Name>_NNNN.jpg
            strays = [entry] if entry.is_symlink() or not entry.is_dir() else \
                [f for f in entry.iterdir() if not (f.is_file() and photo.fullmatch(f.name))]
            if strays:
                return f"{root} holds {strays[0]}, which the demo did not make"
    link = out / "model.tflite"
    if link.exists() and not link.is_symlink():
        return f"{link} is a file, not the demo's link to a model"
    return None


def make_demo(output, data="../shared/data") -> dict:
    """Write the demo photos, galleries and model link under `output`; returns {name: path} of what it made.

    "model.tflite" is the link (absolute target) and "model.source" the model it points at, as given (relative
    to the working directory when `data` is), so printed paths do not depend on where the checkout lives.

    Uses the LFW crops and reference model in `data` when present, else synthetic faces (see module docstring).
    """
    out = Path(output)
    problem = demo_folder_problem(out)
    if problem is not None:  # a rerun deletes only what a demo made
        raise ValueError(f"--output {str(out)!r}: {problem}; pass another --output, or move it away")
    out.mkdir(parents=True, exist_ok=True)
    lfw_root = Path(data) / "lfw" / "lfw-112x112"
    src = _LFW(lfw_root) if lfw_root.is_dir() else _Synthetic()
    made = {}

    def save(name: str, img: Image.Image, **kw) -> None:
        with atomic_path(out / name, keep_suffix=True) as tmp:  # Pillow picks the format from the suffix
            img.save(tmp, quality=95, **kw)
        made[name] = out / name

    colin1, colin2 = src.photo("Colin_Powell", 1), src.photo("Colin_Powell", 2)
    save("colin_big_1600x1200.jpg", _paste(_canvas(1600, 1200, 1), colin1, 2.0, (0.3, 0.4)))
    save("colin_small_64x64.jpg", colin2.resize((64, 64), Image.BICUBIC))
    # Stored sideways: a viewer (and mobiface_tf.images) rotates it 90 degrees clockwise to show it upright.
    upright = _paste(_canvas(600, 800, 2), colin1, 3.0, (0.5, 0.45))
    exif = Image.Exif()
    exif[0x0112] = 6
    save("colin_rotated_exif6.jpg", upright.transpose(Image.Transpose.ROTATE_90), exif=exif)
    two = _paste(_canvas(1600, 1200, 3), colin1, 3.0, (0.5, 0.5))
    save("two_faces_1600x1200.jpg", _paste(two, src.photo("Tony_Blair", 2), 1.2, (0.88, 0.2)))
    save("tony_big_1600x1200.jpg", _paste(_canvas(1600, 1200, 4), src.photo("Tony_Blair", 1), 2.0, (0.65, 0.55)))
    save("query_serena.jpg", src.photo("Serena_Williams", 1))
    save("query_agassi.jpg", src.photo("Andre_Agassi", 3))
    save("query_stranger.jpg", src.photo("Alan_Greer", 1))
    save("wall.jpg", Image.new("RGB", (640, 480), (128, 128, 128)))

    for gallery, people, photos in (("gallery", GALLERY_5, (3, 4, 5)),
                                    ("gallery_90", src.people(min_photos=3)[:90], (1, 2))):
        if (out / gallery).is_dir():
            shutil.rmtree(out / gallery)
        for person in people:
            folder = out / gallery / person
            folder.mkdir(parents=True)
            for k in photos:
                src.copy(person, k, folder / f"{person}_{k:04d}.jpg")
        made[gallery] = out / gallery

    link = out / "model.tflite"
    target = (Path(data) / REFERENCE_MODEL) if isinstance(src, _LFW) else QUICKSTART_MODEL
    if not target.is_file() and STUDENT_TFLITE.is_file():  # no reference model: the student this repo ships
        target = STUDENT_TFLITE
    if link.is_symlink() or link.exists():
        link.unlink()
    if target.is_file():
        link.symlink_to(target.resolve())
        from mobiface_tf.sidecar import drop_stale_sidecar

        drop_stale_sidecar(link)  # a demo/model.tflite.eval.json measured on the model linked before
        made["model.tflite"] = link
        made["model.source"] = target
    return made


FLAGS = flags.FLAGS


def define_flags():
    """Flags are defined only when run as a program (see identify.define_flags)."""
    flags.DEFINE_string("output", "demo", "Folder for the demo photos, galleries and model link.")
    flags.DEFINE_string("data", "../shared/data", "The shared data folder (LFW crops, reference model).")


def main(argv):
    """CLI: write the README demo's photos, galleries and model link under --output; returns the exit status.

    1 on positional arguments or when no model could be linked, else 0. Flags: the module-level `define_flags()`.
    """
    if len(argv) > 1:
        print(f"error: unexpected arguments {argv[1:]}", file=sys.stderr)
        return 1
    from mobiface_tf.outputs import check_output_dir

    check_output_dir(FLAGS.output, "--output")  # before any photo is made (ValueError: one line, exit 2)
    problem = demo_folder_problem(FLAGS.output)
    if problem is not None:
        raise ValueError(f"--output {FLAGS.output!r}: {problem}; pass another --output, or move it away")
    made = make_demo(FLAGS.output, FLAGS.data)
    real = (Path(FLAGS.data) / "lfw" / "lfw-112x112").is_dir()
    photos = sorted(k for k in made if k.endswith(".jpg"))
    print(f"demo in {FLAGS.output}/ from {'LFW (' + FLAGS.data + ')' if real else 'SYNTHETIC faces'}: "
          f"{len(photos)} photos, gallery/ (5 identities), gallery_90/ (90 identities)")
    if "model.tflite" in made:
        print(f"model: {made['model.tflite']} -> {made['model.source']}")
    else:
        print(f"no model linked: {FLAGS.data}/{REFERENCE_MODEL} is absent; run `make quickstart` to make "
              f"{QUICKSTART_MODEL}, then rerun this command", file=sys.stderr)
        return 1
    return 0
