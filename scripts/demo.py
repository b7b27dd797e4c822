"""`make demo`: start the service, submit one job of every kind each model serves over
HTTP, save the outputs under ./demo-out/ and print a summary table."""

from __future__ import annotations

import argparse
import base64
import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from PIL import Image
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from service.client import ApiError, Client, ConnectionFailed  # noqa: E402

console = Console()


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def sample_image(model: dict[str, Any], scene: bool = False) -> Image.Image:
    """A held-out digit for 1-channel 32x32 models, else a shapes sample (or scene)."""
    from models.images import to_pil

    inp = model["input"]
    if inp["channels"] == 1:
        from models.data.digits import load_digits_split

        _, _, x, _ = load_digits_split(32)
        return to_pil(x[7])
    from models.data import shapes

    if scene:
        x, _ = shapes.make_scenes(1, seed=4242)
    else:
        x, _ = shapes.make_classification(1, seed=4242)
    return to_pil(x[0])


def side_by_side(paths: list[Path], out: Path, scale: int = 4) -> None:
    images = [Image.open(p).convert("RGB") for p in paths]
    h = max(i.height for i in images) * scale
    images = [i.resize((i.width * h // i.height, h), Image.Resampling.NEAREST) for i in images]
    canvas = Image.new("RGB", (sum(i.width for i in images) + 4 * (len(images) - 1), h), "white")
    x = 0
    for i in images:
        canvas.paste(i, (x, 0))
        x += i.width + 4
    canvas.save(out)


def grid(paths: list[Path], out: Path, ncol: int = 8, scale: int = 2) -> None:
    images = [Image.open(p).convert("RGB") for p in paths]
    w, h = images[0].width * scale, images[0].height * scale
    rows = (len(images) + ncol - 1) // ncol
    canvas = Image.new("RGB", (ncol * (w + 2), rows * (h + 2)), "white")
    for k, im in enumerate(images):
        canvas.paste(im.resize((w, h), Image.Resampling.NEAREST), ((k % ncol) * (w + 2),
                                                                  (k // ncol) * (h + 2)))
    canvas.save(out)


def run_job(c: Client, body: dict[str, Any], out: Path, prefix: str) -> tuple[dict, float, list[Path]]:
    t0 = time.perf_counter()
    try:
        job = c.submit(body["kind"], body["model"], body["input"])
    except ApiError as e:
        return {"status": f"HTTP {e.status}", "error": e.message}, 0.0, []
    job = c.wait(job.id)
    seconds = time.perf_counter() - t0
    paths = c.download(job, out, prefix) if job.status == "succeeded" else []
    return job.model_dump(), seconds, paths


def summary(job: dict[str, Any]) -> str:
    out = job.get("output") or {}
    if job.get("status") != "succeeded":
        return str(job.get("error"))[:80]
    if "predictions" in out:
        return ", ".join(f"{p['label']} {p['score']:.2f}" for p in out["predictions"][:3])
    if "classes" in out:
        return ", ".join(f"{c['label']} {c['fraction']:.2f}" for c in out["classes"] if c["pixels"])
    if "psnr" in out:
        return f"PSNR {out['psnr']:.1f} dB, MSE {out['mse']:.4f}"
    if "images" in out:
        return f"{len(out['images'])} images, seeds {[i.get('seed') for i in out['images']][:4]}"
    return ", ".join(out)[:80]


def half_masked(model: dict[str, Any], out: Path, prefix: str) -> dict[str, Any]:
    """An inpainting input: a held-out digit, its bottom half masked (white = repaint)."""
    image = sample_image(model)
    mask = Image.new("L", image.size, 0)
    mask.paste(255, (0, image.height // 2, image.width, image.height))
    shown = image.convert("L").copy()
    shown.paste(128, (0, image.height // 2, image.width, image.height))
    shown.save(out / f"{prefix}inpaint-input.png")
    return {"image": b64(image), "mask": b64(mask)}


def demo(c: Client, out: Path, only: list[str] | None = None) -> Table:
    table = Table("model", "kind", "status", "seconds", "result")
    models = [m.model_dump() for m in c.models()]
    for m in (m for m in models if not only or m["name"] in only):
        name = m["name"]
        for kind in m["kinds"]:
            prefix = f"{name}-{kind}-"
            if kind in ("classify", "segment", "reconstruct"):
                image = sample_image(m, scene=(kind == "segment"))
                image.save(out / f"{prefix}input.png")
                job, s, paths = run_job(c, {"kind": kind, "model": name,
                                            "input": {"image": b64(image)}}, out, prefix)
                if kind == "reconstruct" and paths:
                    side_by_side([out / f"{prefix}input.png", out / f"{prefix}reconstruction.png"],
                                 out / f"{prefix}side-by-side.png")
                table.add_row(name, kind, job["status"], f"{s:.2f}", summary(job))
            elif kind == "sample":
                inp: dict[str, Any] = {"n": 16, "seed": 0}
                if m["labels"] and m["family"] != "vae":
                    inp["class_label"] = m["labels"][0]
                job, s, paths = run_job(c, {"kind": kind, "model": name, "input": inp}, out, prefix)
                if paths:
                    grid(paths, out / f"{prefix}grid.png")
                table.add_row(name, kind, job["status"], f"{s:.2f}", summary(job))
            elif kind == "generate":
                labels = m["labels"] or [None]
                all_paths: list[Path] = []
                t_total = 0.0
                for i, label in enumerate(labels):
                    inp = {"n": 8, "seed": 100 + i, "steps": 20, "scheduler": "dpmpp"}
                    if label is not None:
                        inp["class_label"] = label
                    if i == 0:
                        inp["preview_every"] = 2
                    job, s, paths = run_job(c, {"kind": kind, "model": name, "input": inp}, out,
                                            f"{prefix}{label}-")
                    t_total += s
                    all_paths += paths
                    if i == 0 and job["status"] == "succeeded":
                        frames = out / f"{prefix}previews"
                        frames.mkdir(exist_ok=True)
                        for event in c.events(job["id"]):
                            if event.type == "preview":
                                frame = event.data["name"]
                                (frames / frame).write_bytes(c.artifact(job["id"], frame))
                images = [p for p in all_paths if "/" not in p.name and "image-" in p.name]
                if images:
                    grid(images, out / f"{prefix}grid-per-class.png", ncol=8)
                table.add_row(name, kind, job["status"], f"{t_total:.2f}",
                              f"{len(labels)} jobs; " + summary(job))
                if m["family"] == "ddpm" and len(labels) > 3:  # finish a half-drawn digit as a 3
                    inp = {"n": 8, "seed": 300, "steps": 20, "scheduler": "dpmpp",
                           "class_label": labels[3], **half_masked(m, out, prefix)}
                    job, s, paths = run_job(c, {"kind": kind, "model": m["name"], "input": inp},
                                            out, f"{prefix}inpaint-")
                    if paths:
                        grid([out / f"{prefix}inpaint-input.png", *paths],
                             out / f"{prefix}inpaint-grid.png", ncol=9)
                    table.add_row(m["name"], f"{kind} (inpaint as {labels[3]})", job["status"],
                                  f"{s:.2f}", summary(job))
    return table


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    parser.add_argument("--url", help="use a running service instead of starting one")
    parser.add_argument("--only", action="append", metavar="MODEL",
                        help="demo only this model (repeatable); default: every model")
    args = parser.parse_args()
    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    proc = None
    url = args.url
    if url is None:
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        env = {**os.environ, "CONVOY_DATA_DIR": tempfile.mkdtemp(prefix="convoy-demo-")}
        env.pop("CONVOY_REDIS_URL", None)
        proc = subprocess.Popen([sys.executable, "-m", "service.cli", "serve", "--port", str(port)],
                                cwd=ROOT, env=env)
    try:
        with Client(url, timeout=600) as c:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if c.ready()["ready"]:
                        break
                except ConnectionFailed:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the service did not become ready")
                time.sleep(0.3)
            table = demo(c, args.out, args.only)
        console.print(table)
        console.print(f"outputs in {args.out}/")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)


if __name__ == "__main__":
    main()
