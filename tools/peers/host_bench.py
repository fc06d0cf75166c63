"""ONNX Runtime's side of `host-tools bench --host`: on one ONNX model and the same images
our side uses, the time of ONNX Runtime's static int8 quantisation and the per-image time
of its int8 and fp32 models, on a given number of threads.

- `ort_quantize_static_s`: `quantize_static` (QDQ, per-channel int8 weights, uint8
  activations, MinMax calibration: what ONNX Runtime's docs recommend for CNNs) on the
  calibration images, after `quant_pre_process` (not timed); the calibration tensors are
  made before the clock starts. ONNX Runtime's calibrator runs its own session with its
  default threads and offers no setting for them, so for each T of `--threads` the process
  is pinned to T cores (`sched_setaffinity`) while it runs; `ort_quantize_static_all_cores_s`
  is the run on every core of the process (the row whose T is that count, or one run more).
  Each row times the int8 model its own run wrote.
- `ort_int8_s_per_image`, `ort_fp32_s_per_image`: one image per `run` (batch 1, as
  `host-tools eval` classifies), `intra_op_num_threads = T` and `inter_op_num_threads = 1`;
  one warm-up run, then the mean over the images of decoding and normalising the image
  plus the `run` (what `host-tools eval`'s `s_per_image` times on our side), for each T.

Each figure is the best of `--rounds` runs (passes over the images; whole quantisations,
except that one taking `--long` seconds or more is not repeated), as our side's are.

Prints one JSON object on stdout. Run with the venv of tools/peers/requirements.txt
(`host-tools bench --host` makes it).
"""

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime import quantization as q
from PIL import Image


def image_files(d):
    out = []
    for base, _, files in sorted(os.walk(d)):
        for f in sorted(files):
            if f.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm")):
                out.append(os.path.join(base, f))
    return out


def tensor(path, shape, mean, std):
    c, h, w = shape
    img = Image.open(path).convert("L" if c == 1 else "RGB")
    if img.size != (w, h):
        raise SystemExit(f"{path}: image is {img.size}, the model expects {w}x{h}")
    x = np.asarray(img, dtype=np.float32).reshape(h, w, c) / 255.0
    x = x.transpose(2, 0, 1)
    m = np.array(mean, np.float32).reshape(-1, 1, 1)
    s = np.array(std, np.float32).reshape(-1, 1, 1)
    return ((x - m) / s)[None].astype(np.float32)


class Reader(q.CalibrationDataReader):
    def __init__(self, name, tensors):
        self.it = iter([{name: t} for t in tensors])

    def get_next(self):
        return next(self.it, None)


def per_image(path, name, files, prep, threads, rounds):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    sess.run(None, {name: tensor(files[0], *prep)})  # warm-up
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for f in files:
            sess.run(None, {name: tensor(f, *prep)})
        best = min(best, (time.perf_counter() - t0) / len(files))
    return best


def quantize_static(pre, int8, name, calib, rounds, long_s):
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        with contextlib.redirect_stdout(sys.stderr):  # the calibrator prints progress
            q.quantize_static(
                pre, int8, Reader(name, calib),
                quant_format=q.QuantFormat.QDQ, per_channel=True,
                activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                calibrate_method=q.CalibrationMethod.MinMax,
            )
        s = time.perf_counter() - t0
        best = min(best, s)
        if s >= long_s:
            break
    return best


@contextlib.contextmanager
def pinned(cores):
    """The process (and the threads it starts) on the first `cores` of its cores."""
    mask = os.sched_getaffinity(0)
    os.sched_setaffinity(0, sorted(mask)[:cores])
    try:
        yield
    finally:
        os.sched_setaffinity(0, mask)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--calib", required=True)
    ap.add_argument("--images", required=True)
    ap.add_argument("--mean", required=True)
    ap.add_argument("--std", required=True)
    ap.add_argument("--threads", required=True, help="comma-separated thread counts")
    ap.add_argument("--rounds", type=int, default=3, help="runs per figure (the best is kept)")
    ap.add_argument("--long", type=float, default=5.0, help="a quantisation this long (s) is not repeated")
    args = ap.parse_args()
    mean = [float(v) for v in args.mean.split(",")]
    std = [float(v) for v in args.std.split(",")]
    threads = [int(t) for t in args.threads.split(",")]

    model = onnx.load(args.model, load_external_data=False)
    inp = model.graph.input[0]
    name = inp.name
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    shape = tuple(dims[1:])
    prep = (shape, mean, std)
    calib = [tensor(f, *prep) for f in image_files(args.calib)]
    images = image_files(args.images)
    out = {"onnxruntime": ort.__version__, "calib_images": len(calib), "eval_images": len(images)}
    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        q.quant_pre_process(args.model, pre)
        # Pinned to every core of the process is the same as not pinned: that row's run is
        # also the all-cores figure.
        cores = len(os.sched_getaffinity(0))
        if cores not in threads:
            out["ort_quantize_static_all_cores_s"] = quantize_static(
                pre, os.path.join(tmp, "int8.onnx"), name, calib, args.rounds, args.long)
        out["threads"] = {}
        for t in threads:
            int8 = os.path.join(tmp, f"int8-{t}.onnx")
            with pinned(t):
                quantize_s = quantize_static(pre, int8, name, calib, args.rounds, args.long)
            if t == cores:
                out["ort_quantize_static_all_cores_s"] = quantize_s
            out["threads"][str(t)] = {
                "ort_quantize_static_s": quantize_s,
                "ort_int8_s_per_image": per_image(int8, name, images, prep, t, args.rounds),
                "ort_fp32_s_per_image": per_image(args.model, name, images, prep, t, args.rounds),
            }
            print(f"[host_bench] {t} thread(s): {out['threads'][str(t)]}", file=sys.stderr, flush=True)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
