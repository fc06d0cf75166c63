"""ONNX Runtime's static int8 quantisation next to convmixer-edge's, on one ONNX model or on
all the peer models.

Both quantise the same ONNX with the same calibration images; both quantised models then
classify the same labelled images. ONNX Runtime: `quantize_static`, QDQ format, per-channel
int8 weights, uint8 activations, calibration MinMax / Percentile / Entropy (its
`CalibrationMethod`s, default settings), run by ONNX Runtime's CPU provider. Ours: `host-tools
quantize --calibration minmax|percentile|mse|entropy` and `--precision fp16` (rows: OURS below,
plus EXTRA_OURS), run by the runtime as `host-tools classify` runs it (its reference kernels,
bit-identical to the NEON ones). The fp32 reference is ONNX Runtime's fp32 run of the original
ONNX.

Columns: fp32 top-1, the quantised model's top-1, their difference (percentage points),
agreement of the top-1 class with fp32, and max |logit - fp32 logit| over the labelled set.
Our logits come from tools/peers/logits (`peers-logits`, the runtime's public `Model::logits`;
`host-tools classify` prints only softmax probabilities), and then our top-1 is their first
argmax (what classify ranks), checked against `host-tools classify` on the first
CLASSIFY_CHECK images; without it (--logits-tool not given) top-1 comes from classify and the
max-diff column is empty for our rows. Our fp16 blob runs in f32 arithmetic on hosts without
FEAT_FP16 (what `host-tools classify` does here); with --binary16, the row "fp16, binary16
arithmetic" runs the same blob with f16 arithmetic forced on (what a FEAT_FP16 Cortex-A does),
emulated in software here, so slowly.

Usage (tools/peers/run.sh sets up the venv, builds the tools and passes --host-tools and
--logits-tool):
    python ort_compare.py [--model M.onnx --calib DIR --data DIR --mean M --std S]   one model
    python ort_compare.py --all      the shipped MNIST model + target/peers-models/{k9p1-relu,wide,illcond}
                                     (made by tools/fixtures/train_peers.py)
"""

import argparse
import contextlib
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime import quantization as q
from PIL import Image

# ---------------------------------------------------------------------------------------------
# HOOK: more modes of ours. Each (label, extra `host-tools quantize` flags) adds one row per
# model, built as
#     host-tools quantize MODEL --calib CALIB --mean M --std S <flags> -o BLOB
# "{calib}" and "{data}" in the flags are replaced by the calibration and labelled folders.
# For example the mixed-precision mode (note: with "{data}" its budget search sees the very
# images the row is then scored on):
#     ("mixed", ["--accuracy-budget", "0.3", "--data", "{data}"]),
EXTRA_OURS = [
]
# ---------------------------------------------------------------------------------------------

ORT_METHODS = ["MinMax", "Percentile", "Entropy"]
OURS = [
    ("int8 minmax", ["--calibration", "minmax"]),
    ("int8 percentile", ["--calibration", "percentile"]),
    ("int8 mse", ["--calibration", "mse"]),
    ("int8 entropy", ["--calibration", "entropy"]),
    ("fp16", ["--precision", "fp16"]),
] + EXTRA_OURS
# Ours rows (by label) that --binary16 also runs with binary16 arithmetic forced on, as an extra row.
F16_ARITH_ROWS = {"fp16"}
# With the logits tool, our top-1 is the first argmax of its logits; `host-tools classify`
# must agree on this many leading images (a mismatch is reported as an error).
CLASSIFY_CHECK = 100

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
MNIST = os.path.join(ROOT, "examples", "mnist")
PEERS_MODELS = os.path.join(ROOT, "target", "peers-models")
PEER_NAMES = ["k9p1-relu", "wide", "illcond"]
THREADS = int(os.environ.get("PEERS_THREADS", "1"))


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


def pixels(path, shape):
    """u8 HWC pixels, as `host-tools classify` reads the image."""
    c, h, w = shape
    img = Image.open(path).convert("L" if c == 1 else "RGB")
    if img.size != (w, h):
        raise SystemExit(f"{path}: image is {img.size}, the model expects {w}x{h}")
    return np.asarray(img, dtype=np.uint8).reshape(h, w, c)


def tensor(px, mean, std):
    x = px.astype(np.float32) / 255.0
    x = x.transpose(2, 0, 1)
    x = (x - np.array(mean, np.float32).reshape(-1, 1, 1)) / np.array(std, np.float32).reshape(-1, 1, 1)
    return x[None].astype(np.float32)


class Reader(q.CalibrationDataReader):
    def __init__(self, name, tensors):
        self.it = iter([{name: t} for t in tensors])

    def get_next(self):
        return next(self.it, None)


def logits_onnx(path, name, tensors, batch=250):
    so = ort.SessionOptions()
    so.intra_op_num_threads = THREADS
    sess = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = np.concatenate(tensors)
    return np.concatenate([sess.run(None, {name: x[s : s + batch]})[0] for s in range(0, len(x), batch)])


def top1_ours(host_tools, blob, files):
    out = subprocess.run(
        [host_tools, "classify", blob, *files, "--json", "--top", "1"],
        check=True, capture_output=True, text=True,
    ).stdout
    return np.array([json.loads(line)["top"][0]["class"] for line in out.splitlines()])


def logits_ours(tool, blob, px_file, n, tmp, f16_arith="default"):
    out = os.path.join(tmp, "logits.f32")
    subprocess.run([tool, blob, px_file, out, "--f16-arith", f16_arith], check=True, capture_output=True, text=True)
    return np.fromfile(out, dtype="<f4").reshape(n, -1)


def first_argmax(x):
    return np.argmax(x, axis=1)  # first maximum, as the runtime's top-k breaks ties


def compare_model(label, model_path, calib_dir, data_dir, mean, std, host_tools, logits_tool, errors, expect_fp32=None,
                  binary16=False):
    """Returns a list of row dicts for one model."""
    t0 = time.time()
    model = onnx.load(model_path)
    inp = model.graph.input[0]
    name = inp.name
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim]
    shape = tuple(dims[1:])
    calib = [tensor(pixels(f, shape), mean, std) for f in image_files(calib_dir)]
    data = labelled(data_dir)
    files = [f for f, _ in data]
    labels = np.array([c for _, c in data])
    px = [pixels(f, shape) for f in files]
    tensors = [tensor(p, mean, std) for p in px]
    print(f"[{label}] {os.path.relpath(model_path, ROOT)}: {len(calib)} calibration images, {len(data)} labelled images",
          file=sys.stderr, flush=True)

    ref = logits_onnx(model_path, name, tensors)
    fp32 = first_argmax(ref)
    fp32_acc = 100.0 * float(np.mean(fp32 == labels))
    if expect_fp32 is not None and abs(fp32_acc - 100.0 * expect_fp32) > 1e-9:
        print(f"[{label}] note: fp32 top-1 {fp32_acc:.2f}% differs from meta.json's {100.0 * expect_fp32:.2f}%",
              file=sys.stderr)
    rows = []
    t_row = [time.time()]

    def row(method, pred, logits, note=""):
        r = {"model": label, "method": method, "fp32": fp32_acc}
        if pred is None:
            r["error"] = note
        else:
            acc = 100.0 * float(np.mean(pred == labels))
            r.update(top1=acc, delta=acc - fp32_acc, agree=100.0 * float(np.mean(pred == fp32)),
                     maxdiff=None if logits is None else float(np.abs(logits - ref).max()), note=note)
        rows.append(r)
        print(f"[{label}] {method}: " + (f"top-1 {r['top1']:.2f}%" if pred is not None else "ERROR")
              + f" ({time.time() - t_row[0]:.0f}s)", file=sys.stderr, flush=True)
        t_row[0] = time.time()

    with tempfile.TemporaryDirectory() as tmp:
        pre = os.path.join(tmp, "pre.onnx")
        q.quant_pre_process(model_path, pre)
        for method in ORT_METHODS:
            out = os.path.join(tmp, f"ort-{method}.onnx")
            try:
                with contextlib.redirect_stdout(sys.stderr):  # the calibrators print progress
                    q.quantize_static(
                        pre, out, Reader(name, calib),
                        quant_format=q.QuantFormat.QDQ, per_channel=True,
                        activation_type=q.QuantType.QUInt8, weight_type=q.QuantType.QInt8,
                        calibrate_method=getattr(q.CalibrationMethod, method),
                    )
                lg = logits_onnx(out, name, tensors)
            except Exception as e:  # report, keep going
                errors.append((label, f"ORT {method}", repr(e)))
                row(f"ORT int8 {method}", None, None, "error")
                continue
            row(f"ORT int8 {method}", first_argmax(lg), lg)

        px_file = os.path.join(tmp, "pixels.u8")
        with open(px_file, "wb") as f:
            for p in px:
                f.write(p.tobytes())
        mean_s = ",".join(str(v) for v in mean)
        std_s = ",".join(str(v) for v in std)
        for i, (method, flags) in enumerate(OURS):
            blob = os.path.join(tmp, f"ours-{i}.cmx")
            flags = [f.replace("{calib}", calib_dir).replace("{data}", data_dir) for f in flags]
            cmd = [host_tools, "quantize", model_path, "--calib", calib_dir, "--mean", mean_s, "--std", std_s,
                   *flags, "-o", blob]
            res = subprocess.run(cmd, capture_output=True, text=True)
            if res.returncode != 0:
                msg = (res.stderr.strip() or res.stdout.strip()).splitlines()
                errors.append((label, f"ours {method}", f"exit {res.returncode}: `{' '.join(cmd[1:-2])}`\n" + "\n".join(msg)))
                row(f"ours {method}", None, None, "error")
                continue
            note = ""
            if logits_tool:
                # One pass: top-1 = first argmax of Model::logits, exactly what classify ranks
                # (classify = logits + top-k); classify itself checks it on the first images.
                lg = logits_ours(logits_tool, blob, px_file, len(files), tmp)
                pred = first_argmax(lg)
                k = min(CLASSIFY_CHECK, len(files))
                mism = int(np.sum(top1_ours(host_tools, blob, files[:k]) != pred[:k]))
                if mism:
                    note = f"classify disagrees on {mism} of the first {k} images"
                    errors.append((label, f"ours {method}", note))
            else:
                lg = None
                pred = top1_ours(host_tools, blob, files)
            row(f"ours {method}", pred, lg, note)
            if logits_tool and binary16 and method in F16_ARITH_ROWS:
                lg16 = logits_ours(logits_tool, blob, px_file, len(files), tmp, "on")
                row(f"ours {method}, binary16 arithmetic", first_argmax(lg16), lg16)
    print(f"[{label}] done in {time.time() - t0:.0f}s", file=sys.stderr, flush=True)
    return rows


def provenance(host_tools, logits_tool):
    """One line naming the binaries and the tree they were built from (a benchmark table is
    only comparable with another made by the same binaries)."""
    def sha(p):
        if not p or not os.path.isfile(p):
            return "-"
        return hashlib.sha256(open(p, "rb").read()).hexdigest()[:12]

    def git(*a):
        r = subprocess.run(["git", "-C", ROOT, *a], capture_output=True, text=True)
        return r.stdout.strip() if r.returncode == 0 else "?"

    dirty = git("status", "--porcelain", "--untracked-files=no")
    built = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(os.path.getmtime(host_tools)))
    return (f"host-tools sha256 {sha(host_tools)} (built {built} UTC), peers-logits sha256 {sha(logits_tool)}; "
            f"tree at run time {git('rev-parse', '--short', 'HEAD')}{' + uncommitted changes' if dirty else ''}; "
            f"onnxruntime {ort.__version__}.")


def print_table(rows):
    print("| model | method | fp32 top-1 | quantised top-1 | Δ (pp) | agreement with fp32 | max \\|logit − fp32\\| |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for r in rows:
        if "error" in r:
            print(f"| {r['model']} | {r['method']} | {r['fp32']:.2f}% | error | | | |")
            continue
        md = "" if r["maxdiff"] is None else f"{r['maxdiff']:.3g}"
        if r.get("note"):
            md += f" ({r['note']})"
        print(f"| {r['model']} | {r['method']} | {r['fp32']:.2f}% | {r['top1']:.2f}% | {r['delta']:+.2f} | "
              f"{r['agree']:.2f}% | {md} |")


def all_models():
    missing = [n for n in PEER_NAMES if not os.path.isfile(os.path.join(PEERS_MODELS, n, "model.onnx"))]
    if missing:
        sys.exit(
            f"{os.path.relpath(PEERS_MODELS, ROOT)}/ lacks {', '.join(missing)}: train the peer models first with\n"
            f"    bash tools/fixtures/run.sh train_peers\n"
            f"(= bash tools/fixtures/setup.sh && target/fixtures-venv/bin/python tools/fixtures/train_peers.py)"
        )
    ref = json.load(open(os.path.join(MNIST, "torch_reference.json")))
    out = [("mnist 48/4 (shipped)", os.path.join(MNIST, "convmixer-mnist.torchscript.onnx"), [ref["mean"]], [ref["std"]], None)]
    for n in PEER_NAMES:
        meta = json.load(open(os.path.join(PEERS_MODELS, n, "meta.json")))
        c = meta["config"]
        label = f"{n} ({c['dim']}/{c['depth']} k{c['kernel_size']} p{c['patch_size']} {c['activation']})"
        out.append((label, os.path.join(PEERS_MODELS, n, "model.onnx"), [meta["mean"]], [meta["std"]],
                    meta.get("heldout_top1_onnxruntime")))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--all", action="store_true",
                    help="the shipped MNIST model and the peer models in target/peers-models/ (ignores --model/--mean/--std)")
    ap.add_argument("--model", default=os.path.join(MNIST, "convmixer-mnist.torchscript.onnx"))
    ap.add_argument("--calib", default=os.path.join(MNIST, "calib"))
    ap.add_argument("--data", default=os.path.join(MNIST, "heldout"))
    ap.add_argument("--mean", type=float, nargs="+", default=[0.1307])
    ap.add_argument("--std", type=float, nargs="+", default=[0.3081])
    ap.add_argument("--host-tools", required=True)
    ap.add_argument("--logits-tool", help="tools/peers/logits binary (peers-logits): our logits for the max-diff column")
    ap.add_argument("--binary16", action="store_true",
                    help="also run our fp16 blob with binary16 arithmetic forced on (as on FEAT_FP16 CPUs); "
                    "emulated in software on other hosts: slow (~0.5 s per image for k9p1-relu)")
    args = ap.parse_args()

    if args.all:
        models = all_models()
    else:
        rel = os.path.relpath(os.path.abspath(args.model), ROOT)
        models = [(os.path.basename(args.model) if rel.startswith("..") else rel, args.model, args.mean, args.std, None)]
    errors = []
    rows = []
    for label, path, mean, std, expect in models:
        rows += compare_model(label, path, args.calib, args.data, mean, std, args.host_tools, args.logits_tool,
                              errors, expect, args.binary16)
    print()
    print(provenance(args.host_tools, args.logits_tool))
    print(f"Calibration: {len(image_files(args.calib))} images from {os.path.relpath(args.calib, ROOT)}; "
          f"labelled set: {os.path.relpath(args.data, ROOT)}. ORT: quantize_static QDQ, per-channel int8 weights, "
          f"uint8 activations, default calibrator settings. Ours: host-tools quantize (percentile = P 99.99).\n")
    print_table(rows)
    if errors:
        print("\nErrors (verbatim):\n")
        for label, what, msg in errors:
            print(f"- {label}, {what}:\n\n```\n{msg}\n```")


if __name__ == "__main__":
    main()
