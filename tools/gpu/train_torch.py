"""Continue the shipped student on a GPU with no TensorFlow: Keras 3 on the torch backend (issue 28 item 3).

  KERAS_BACKEND=torch python tools/gpu/train_torch.py --carry=gpu_carry --init=models/mobiface_student.keras \
      --minutes=7 --out=$OUT [--batch_size=256] [--lr=0.05]

The same function-matching recipe as configs/student_online.flags, as far as a TF-free machine allows:
  * the student is the shipped models/mobiface_student.keras (Keras 3 loads it on any backend: the networks are
    plain Keras layers); the teacher is gpu_carry/teacher.keras (the imported reference MobileFaceNet), run in
    the step on the very batch the student sees, under no_grad (consistency, Beyer et al. 2022);
  * augmentations: flip, scale + shift jitter, brightness / contrast, and mixup p=0.5 with lambda folded to >= 1/2
    (a subset of mobiface_tf/data/augment.py, written in torch: that module is TensorFlow ops);
  * loss 1 - cos(student, teacher), SGD with Nesterov momentum 0.9, coupled L2 5e-5 on kernels, a cosine
    learning rate over the time budget (--minutes), with --warmup_steps.
Writes OUT/student.keras (the last step, never a picked checkpoint), OUT/train_log.json (steps, images, loss
curve, img/s, the GPU's name). Export and scoring happen back on the CPU machine (tools/gpu/run.sh says how).
"""
from __future__ import annotations

import argparse
import io
import json
import math
import os
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "torch")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402


class Faces(torch.utils.data.Dataset):
    """The packed JPEG faces (faces.bin + offsets faces.npy) -> uint8 HWC tensors, decoded in the workers."""

    def __init__(self, carry: Path):
        self.offsets = np.load(carry / "faces.npy")
        self.blob = np.memmap(carry / "faces.bin", dtype=np.uint8, mode="r")

    def __len__(self):
        return len(self.offsets) - 1

    def __getitem__(self, i):
        b = bytes(self.blob[self.offsets[i]:self.offsets[i + 1]])
        return torch.from_numpy(np.asarray(Image.open(io.BytesIO(b)).convert("RGB"), dtype=np.uint8).copy())


def augment(x: torch.Tensor, g: torch.Generator, scale=0.05, shift=0.04, colour=0.2, mixup=0.5) -> torch.Tensor:
    """x: float [B, H, W, 3] in 0..255 on the device -> the augmented, mixed batch (same shape and range)."""
    b, h, w, _ = x.shape
    dev = x.device
    flip = torch.rand(b, generator=g, device=dev) < 0.5
    x = torch.where(flip[:, None, None, None], x.flip(2), x)
    s = 1 + (torch.rand(b, generator=g, device=dev) * 2 - 1) * scale
    t = (torch.rand(b, 2, generator=g, device=dev) * 2 - 1) * shift * 2  # in [-1, 1] grid units
    theta = torch.zeros(b, 2, 3, device=dev)
    theta[:, 0, 0] = 1 / s
    theta[:, 1, 1] = 1 / s
    theta[:, :, 2] = t
    grid = torch.nn.functional.affine_grid(theta, (b, 3, h, w), align_corners=False)
    x = torch.nn.functional.grid_sample(x.permute(0, 3, 1, 2), grid, padding_mode="border",
                                        align_corners=False).permute(0, 2, 3, 1)
    bright = 1 + (torch.rand(b, 1, 1, 1, generator=g, device=dev) * 2 - 1) * colour
    contrast = 1 + (torch.rand(b, 1, 1, 1, generator=g, device=dev) * 2 - 1) * colour
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x * bright - mean) * contrast + mean).clamp(0, 255)
    mix = torch.rand(b, generator=g, device=dev) < mixup
    lam = torch.distributions.Beta(1.0, 1.0).sample((b,)).to(dev)
    lam = torch.maximum(lam, 1 - lam)
    lam = torch.where(mix, lam, torch.ones_like(lam))[:, None, None, None]
    partner = (torch.arange(b, device=dev) + 1 + torch.randint(0, b - 1, (1,), generator=g, device=dev)) % b
    return lam * x + (1 - lam) * x[partner]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--carry", default="gpu_carry")
    p.add_argument("--init", default="models/mobiface_student.keras")
    p.add_argument("--out", default=os.environ.get("OUT", "gpu_out"))
    p.add_argument("--minutes", type=float, default=7.0, help="training time budget (the lr schedule spans it)")
    p.add_argument("--max_steps", type=int, default=0, help="stop after N steps too (0: time only)")
    p.add_argument("--batch_size", type=int, default=256)
    p.add_argument("--lr", type=float, default=0.05)
    p.add_argument("--warmup_steps", type=int, default=50)
    p.add_argument("--weight_decay", type=float, default=5e-5)
    p.add_argument("--workers", type=int, default=min(12, os.cpu_count() or 1))
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    carry, out = Path(a.carry), Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(a.seed)
    student = keras.models.load_model(a.init, compile=False)
    teacher = keras.models.load_model(carry / "teacher.keras", compile=False)
    teacher.trainable = False
    weights = [v for v in student.trainable_weights]
    decayed = [v for v in weights if "kernel" in v.path]
    params = [v.value for v in weights]
    opt = torch.optim.SGD(params, lr=a.lr, momentum=0.9, nesterov=True)
    loader = torch.utils.data.DataLoader(Faces(carry), batch_size=a.batch_size, shuffle=True, drop_last=True,
                                         num_workers=a.workers, persistent_workers=a.workers > 0,
                                         generator=torch.Generator().manual_seed(a.seed))
    g = torch.Generator(device=dev).manual_seed(a.seed)
    budget = a.minutes * 60
    t0 = time.time()
    step, images, curve = 0, 0, []
    done = False
    while not done:
        for batch in loader:
            elapsed = time.time() - t0
            if elapsed >= budget or (a.max_steps and step >= a.max_steps):
                done = True
                break
            frac = elapsed / budget
            lr = a.lr * min(1.0, (step + 1) / max(1, a.warmup_steps)) * 0.5 * (1 + math.cos(math.pi * frac))
            for group in opt.param_groups:
                group["lr"] = lr
            x = augment(batch.to(dev, non_blocking=True).float(), g)
            with torch.no_grad():
                target = torch.nn.functional.normalize(teacher(x, training=False), dim=1)
            emb = torch.nn.functional.normalize(student(x, training=True), dim=1)
            kd = (1 - (emb * target).sum(dim=1)).mean()
            l2 = 0.5 * a.weight_decay * sum((v.value ** 2).sum() for v in decayed)
            opt.zero_grad(set_to_none=True)
            (kd + l2).backward()
            opt.step()
            step += 1
            images += len(batch)
            if step % 20 == 0 or step == 1:
                curve.append({"step": step, "seconds": round(time.time() - t0, 1), "distill": float(kd.detach()), "lr": lr})
                print(f"step {step} {curve[-1]['seconds']} s distill {float(kd.detach()):.4f} lr {lr:.4f} "
                      f"{images / (time.time() - t0):.0f} img/s", flush=True)
    seconds = time.time() - t0
    student.save(out / "student.keras")
    log = {"steps": step, "images_seen": images, "seconds": round(seconds, 1), "img_s": round(images / seconds, 1),
           "batch_size": a.batch_size, "lr": a.lr, "device": torch.cuda.get_device_name(0) if dev == "cuda" else
           "cpu", "init": a.init, "keras_backend": keras.backend.backend(), "curve": curve}
    (out / "train_log.json").write_text(json.dumps(log, indent=1))
    print(json.dumps({k: v for k, v in log.items() if k != "curve"}))


if __name__ == "__main__":
    main()
