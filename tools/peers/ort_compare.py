"""ONNX Runtime's static int8 quantisation next to convmixer-edge's, on one ONNX model.

Both quantise the same ONNX with the same calibration images; both int8 models then
classify the same labelled images. ONNX Runtime: `quantize_static`, QDQ format, per-channel
int8 weights, uint8 activations, calibration MinMax / Percentile / Entropy (its
`CalibrationMethod`s), run by ONNX Runtime's CPU provider. Ours: `host-tools quantize
--calibration minmax|percentile|mse|entropy`, run by `host-tools classify` (the runtime's
reference kernels, bit-identical to the NEON ones). Prints a Markdown table of top-1 and
agreement with the fp32 model (ONNX Runtime's fp32 run of the original ONNX).

Usage (tools/peers/run.sh sets up the venv and passes --host-tools):
    python ort_compare.py [--model M.onnx --calib DIR --data DIR --mean M --std S]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime import quantization as q
from PIL import Image

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MNIST = os.path.join(ROOT, "examples", "mnist")


def image_files(d):
    out = []
    for base, _, files in sorted(os.walk(d)):
        for f in sorted(files):
            if f.lower().endswith((".png", ".jpg", ".jpeg", ".bmp", ".pgm", ".ppm")):
                out.append(os.path.join(base, f))
    return out


def labelled(d):
    """ImageFolder: one sub-folder per class, named by class index."""
    out = []
    for c in sorted(os.listdir(d), key=lambda s: int(s) if s.isdigit() else s):
        for f in image_files(os.path.join(d, c)):
            out.append((f, int(c)))
    return out


def tensor(path, shape, mean, std):
    c, h, w = shape
    img = Image.open(path).convert("L" if c == 1 else "RGB")
    if img.size != (w, h):
        raise SystemExit(f"{path}: image is {img.size}, the model expects {w}x{h}")
    x = np.asarray(img, dtype=np.float32) / 255.0
    x = x.reshape(h, w, c).transpose(2, 0, 1)
    x = (x - np.array(mean, np.float32).reshape(-1, 1, 1)) / np.array(std, np.float32).reshape(-1, 1, 1)
    return x[None].astype(np.float32)


class Reader(q.CalibrationDataReader):
    def __init__(self, name, tensors):
        self.it = iter([{name: t} for t in tensors])

    def get_next(self):
        return next(self.it, None)


def top1_onnx(path, name, tensors):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    return [int(np.argmax(sess.run(None, {name: t})[0])) for t in tensors]


def top1_ours(host_tools, blob, files):
    out = subprocess.run(
        [host_tools, "classify", blob, *files, "--json", "--top", "1"],
        check=True, capture_output=True, text=True,
    ).stdout
    return [json.loads(line)["top"][0]["class"] for line in out.splitlines()]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=os.path.join(MNIST, "convmixer-mnist.torchscript.onnx"))
    ap.add_argument("--calib", default=os.path.join(MNIST, "calib"))
    ap.add_argument("--data", default=os.path.join(MNIST, "heldout"))
    ap.add_argument("--mean", type=float, nargs="+", default=[0.1307])
    ap.add_argument("--std", type=float, nargs="+", default=[0.3081])
    ap.add_argument("--host-tools", required=True)
    args = ap.parse_args()

    model = onnx.load(args.model)
    inp = model.graph.input[0]
    name = inp.name
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    shape = tuple(dims[1:])
    calib_files = image_files(args.calib)
    calib = [tensor(f, shape, args.mean, args.std) for f in calib_files]
    data = labelled(args.data)
    files = [f for f, _ in data]
    labels = np.array([c for _, c in data])
    tensors = [tensor(f, shape, args.mean, args.std) for f in files]
    print(f"model {os.path.basename(args.model)}: {len(calib)} calibration images, {len(data)} labelled images", file=sys.stderr)

    fp32 = np.array(top1_onnx(args.model, name, tensors))
    rows = [("fp32 (ONNX Runtime)", fp32)]
    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        q.quant_pre_process(args.model, pre)
        for method in ["MinMax", "Percentile", "Entropy"]:
            out = os.path.join(tmp, f"ort-{method}.onnx")
            q.quantize_static(
                pre, out, Reader(name, calib),
                quant_format=q.QuantFormat.QDQ, per_channel=True,
                activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                calibrate_method=getattr(q.CalibrationMethod, method),
            )
            rows.append((f"ONNX Runtime int8, {method}", np.array(top1_onnx(out, name, tensors))))
        mean = ",".join(str(v) for v in args.mean)
        std = ",".join(str(v) for v in args.std)
        for method in ["minmax", "percentile", "mse", "entropy"]:
            blob = os.path.join(tmp, f"ours-{method}.cmx")
            subprocess.run(
                [args.host_tools, "quantize", args.model, "--calib", args.calib,
                 "--mean", mean, "--std", std, "--calibration", method, "-o", blob],
                check=True, capture_output=True,
            )
            rows.append((f"convmixer-edge int8, {method}", np.array(top1_ours(args.host_tools, blob, files))))

    print(f"| {os.path.basename(args.model)} | top-1 | agreement with fp32 |")
    print("| --- | ---: | ---: |")
    for label, pred in rows:
        acc = 100.0 * float(np.mean(pred == labels))
        agree = 100.0 * float(np.mean(pred == fp32))
        print(f"| {label} | {acc:.2f}% | {agree:.2f}% |")


if __name__ == "__main__":
    main()
