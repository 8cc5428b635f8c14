"""CUDA kernels of bias_act and upfirdn2d against the reference implementations.

Values and gradients (first and second order) for random shapes, fp32/fp16, resampling factors,
paddings, activations and clamping. Each test runs twice (the `kernel_device` fixture): on a GPU
(marked gpu, skipped without CUDA) and on the CPU with the same kernel source compiled through the
emulator in cuda_emulation/ (marked slow), which checks the kernels' indexing and arithmetic and the
autograd glue on every machine, though not GPU-only concerns such as races or launch limits.
"""

from __future__ import annotations

import itertools

import pytest
import torch

from torch_utils.ops import _cuda
from torch_utils.ops import bias_act as bias_act_mod
from torch_utils.ops import upfirdn2d as upfirdn2d_mod

TOL = {torch.float32: 1e-4, torch.float16: 1e-2, torch.float64: 1e-9}


def _bias_act_ref(x, b, dim, act, alpha, gain, clamp):
    return bias_act_mod.bias_act(x, b, dim, act, alpha, gain, clamp, impl="ref")


def _upfirdn2d_ref(x, f, up, down, padding, flip_filter, gain):
    return upfirdn2d_mod.upfirdn2d(x, f, list(up), list(down), list(padding), flip_filter, gain, impl="ref")


@pytest.fixture(autouse=True)
def _exact_fp32():
    """The reference's convs must not use TF32, or fp32 comparisons measure TF32 rounding."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def _assert_close(a, b, dtype, what):
    scale = max(1.0, b.detach().abs().max().item())
    err = (a.detach().double() - b.detach().double()).abs().max().item() / scale
    assert err <= TOL[dtype], f"{what}: relative max error {err:.3g} > {TOL[dtype]}"


def _compare(fn, ref, inputs, dtype, second_order):
    """Values, first-order grads and (optionally) grads of a gradient penalty, kernel vs reference."""
    device = inputs[0].device
    gen = torch.Generator(device=device).manual_seed(0)
    results = []
    for func in (fn, ref):
        ins = [t.detach().clone().requires_grad_() for t in inputs]
        y = func(*ins)
        # dy takes part in the penalty's gradient: for ops linear in x (upfirdn2d, relu) that is the
        # only second-order path, and the one R1 / path-length regularisation differentiates.
        dy = torch.randn(y.shape, generator=gen, device=device).to(dtype).requires_grad_(second_order)
        gen.manual_seed(0)
        grads = torch.autograd.grad(y, ins, dy, create_graph=second_order)
        out = [y, *grads]
        if second_order:
            penalty = sum((g.double() ** 2).sum() for g in grads)
            wrt = [*ins, dy]
            second = torch.autograd.grad(penalty, wrt, allow_unused=True)
            out += [torch.zeros_like(t) if g is None else g for g, t in zip(second, wrt)]
        results.append(out)
    for i, (a, b) in enumerate(zip(*results)):
        _assert_close(a, b, dtype, f"output {i}")


def test_use_cuda_selects_the_built_kernel(kernel_device):
    x = torch.randn(2, 3, 4, 4, device=kernel_device)
    assert _cuda.use_cuda("bias_act", x, "cuda", reference=_bias_act_ref)
    assert _cuda.use_cuda("upfirdn2d", x, "cuda", reference=_upfirdn2d_ref)
    assert not _cuda.use_cuda("upfirdn2d", x, "ref", reference=_upfirdn2d_ref)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("act", list(bias_act_mod.activation_funcs))
@pytest.mark.parametrize("clamp", [None, 0.5])
def test_bias_act_matches_reference(kernel_device, dtype, act, clamp):
    gen = torch.Generator(device=kernel_device).manual_seed(1)
    spec = bias_act_mod.activation_funcs[act]
    for shape, dim in (([3, 17, 9, 5], 1), ([4, 33], 1), ([2, 6, 7], 2)):
        x = (torch.randn(shape, generator=gen, device=kernel_device) * 2).to(dtype)
        b = torch.randn([shape[dim]], generator=gen, device=kernel_device).to(dtype)
        if clamp is not None and dtype == torch.float16:  # as the self-check: fp16 rounding decides there
            x = _cuda._away_from_clamp(x, b, dim, act, spec.def_alpha, spec.def_gain, clamp, _bias_act_ref)

        def fn(x, b):
            return _cuda.bias_act_cuda(x, b, dim, act, spec.def_alpha, spec.def_gain, clamp)

        def ref(x, b):
            return _bias_act_ref(x, b, dim, act, spec.def_alpha, spec.def_gain, clamp)

        _compare(fn, ref, [x, b], dtype, second_order=dtype == torch.float32)


def test_bias_act_channels_last_and_no_bias(kernel_device):
    x = torch.randn(2, 8, 5, 5, device=kernel_device).to(memory_format=torch.channels_last)
    y = _cuda.bias_act_cuda(x, None, 1, "lrelu", 0.2, 2 ** 0.5, 1.0)
    _assert_close(y, _bias_act_ref(x, None, 1, "lrelu", 0.2, 2 ** 0.5, 1.0), torch.float32, "channels_last")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bias_act_lrelu_backward_reads_only_the_output(kernel_device, dtype):
    """linear/relu/lrelu keep only y for the backward (the next layer holds it anyway), saturate where
    y equals the clamp as stored in y's dtype (0.9 is not exact in fp16), and differentiate to any order."""
    gen = torch.Generator(device=kernel_device).manual_seed(4)
    b = torch.randn([8], generator=gen, device=kernel_device).to(dtype)
    x = (torch.randn([4, 8, 6, 6], generator=gen, device=kernel_device) * 3).to(dtype)
    x = _cuda._away_from_clamp(x, b, 1, "lrelu", 0.2, 2 ** 0.5, 0.9, _bias_act_ref)
    saved = []
    xg = x.clone().requires_grad_()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = _cuda.bias_act_cuda(xg, b, 1, "lrelu", 0.2, 2 ** 0.5, 0.9)
    assert [t.data_ptr() for t in saved] == [y.data_ptr()]  # neither x nor b is held
    assert (y.abs() == torch.tensor(0.9, dtype=dtype)).sum() > 10 and (y < 0).any() and (y.abs() < 0.9).any()

    def third_order(fn):
        xs, dy = x.clone().requires_grad_(), torch.ones_like(x).requires_grad_()
        (g,) = torch.autograd.grad(fn(xs), xs, dy, create_graph=True)
        (h,) = torch.autograd.grad((g.double() ** 2).sum(), dy, create_graph=True)
        (k,) = torch.autograd.grad((h ** 3).sum(), dy)
        return [g, h, k]

    got = third_order(lambda t: _cuda.bias_act_cuda(t, b, 1, "lrelu", 0.2, 2 ** 0.5, 0.9))
    expected = third_order(lambda t: _bias_act_ref(t, b, 1, "lrelu", 0.2, 2 ** 0.5, 0.9))
    assert (got[0] == 0).any() and (got[2] != 0).any()  # saturated entries pass nothing; the rest do
    for i, (a, e) in enumerate(zip(got, expected)):
        _assert_close(a, e, dtype, f"derivative {i + 1}")


@pytest.mark.parametrize("stride", [0, 2 ** 32])
def test_bias_act_size_one_bias_dim_with_any_stride(kernel_device, stride):
    # A size-1 dimension's stride is arbitrary in a dense tensor; the kernel must not divide by it.
    x = torch.empty_strided((3, 1, 4, 5), (20, stride, 5, 1), device=kernel_device).normal_()
    b = torch.tensor([0.25], device=kernel_device)
    y = _cuda.bias_act_cuda(x, b, 1, "lrelu", 0.2, 2 ** 0.5, None)
    _assert_close(y, _bias_act_ref(x.contiguous(), b, 1, "lrelu", 0.2, 2 ** 0.5, None), torch.float32, "size-1 dim")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_bias_act_packed_unaligned_and_tail_routes(kernel_device, dtype):
    """16-byte packs with one bias per pack (plane size a multiple of the pack) or one per element
    (channels-last), the one-element route for a view that starts off a 16-byte boundary, and a
    numel that leaves a tail after the last pack: values, gradients and second-order terms."""
    gen = torch.Generator(device=kernel_device).manual_seed(5)
    shape = [2, 3, 8, 8]
    views = {  # name -> (flat input size, its view as the op's x); _compare differentiates the flat leaf
        "packed": (128 * 3, lambda t: t.view(shape)),
        "unaligned": (128 * 3 + 1, lambda t: t[1:].view(shape)),
        "channels-last": (128 * 3, lambda t: t.view(2, 8, 8, 3).permute(0, 3, 1, 2)),
        "tail": (5 * 7 * 3, lambda t: t.view(5, 7, 3)),
    }
    for name, (numel, view) in views.items():
        flat = torch.randn([numel], generator=gen, device=kernel_device).to(dtype)
        x = view(flat)
        b = torch.randn([x.shape[1]], generator=gen, device=kernel_device).to(dtype)
        # Off the kink at x + b == 0, where the fp16 reference's rounding (it adds gain * b) picks the side.
        x[(x.double() + b.double().reshape([-1] + [1] * (x.ndim - 2))) == 0] += 0.25
        if name == "unaligned":
            assert x.data_ptr() % 16 != 0
        for act in ("lrelu", "tanh"):
            def fn(t, b, act=act, view=view):
                return _cuda.bias_act_cuda(view(t), b, 1, act, 0.2, 2 ** 0.5, None)

            def ref(t, b, act=act, view=view):
                return _bias_act_ref(view(t), b, 1, act, 0.2, 2 ** 0.5, None)

            _compare(fn, ref, [flat, b], dtype, second_order=True)


UPFIRDN_CASES = [
    # (filter shape, up, down, padding, flip_filter)
    ([4, 4], (2, 2), (1, 1), (2, 1, 2, 1), False),
    ([4, 4], (1, 1), (2, 2), (1, 1, 1, 1), False),
    ([3, 5], (1, 1), (1, 1), (1, 3, 2, 0), True),
    ([12], (2, 2), (1, 1), (6, 5, 6, 5), False),
    ([12], (1, 1), (2, 2), (5, 5, 5, 5), True),
    ([6], (2, 1), (1, 2), (3, 2, 2, 3), False),
    ([7, 5], (3, 2), (2, 3), (-1, 4, 2, -2), False),
    ([24, 24], (1, 1), (1, 1), (11, 12, 12, 11), False),
    ([1, 1], (4, 4), (1, 1), (0, 0, 0, 0), False),
]


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("case", UPFIRDN_CASES)
def test_upfirdn2d_matches_reference(kernel_device, dtype, case):
    fshape, up, down, padding, flip = case
    gen = torch.Generator(device=kernel_device).manual_seed(2)
    for shape in ([2, 3, 16, 16], [1, 5, 37, 23]):
        x = torch.randn(shape, generator=gen, device=kernel_device).to(dtype)
        f = torch.rand(fshape, generator=gen, device=kernel_device) + 0.1
        f = f / f.sum()

        def fn(x):
            return _cuda.upfirdn2d_cuda(x, f, up, down, padding, flip, 2.0)

        def ref(x):
            return _upfirdn2d_ref(x, f, up, down, padding, flip, 2.0)

        _compare(fn, ref, [x], dtype, second_order=dtype == torch.float32)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_upfirdn2d_paths_agree(kernel_device, dtype):
    gen = torch.Generator(device=kernel_device).manual_seed(3)
    # Several 32x32 output tiles in x and y; fewer channels when emulated (256 fibers per block).
    planes = 70 if kernel_device == "cuda" else 3
    x = torch.randn([2, planes, 45, 67], generator=gen, device=kernel_device).to(dtype)
    x_strided = x.to(memory_format=torch.channels_last)
    fixed_cases = 0
    for (fh, fw), up, down in itertools.product([(4, 4), (1, 12), (5, 3)], [(1, 1), (2, 2), (2, 1)],
                                                [(1, 1), (2, 2)]):
        f = torch.rand([fh, fw], generator=gen, device=kernel_device)
        args = (f, up, down, (2, 1, 1, 2), False, 1.0)
        general = _cuda.upfirdn2d_cuda(x, *args, path=1)
        tiled = _cuda.upfirdn2d_cuda(x_strided, *args, path=2)
        _assert_close(tiled, general, dtype, f"f={fh}x{fw} up={up} down={down}")
        # The fixed variant: a 4x4 filter with up=2, down=2 or neither, the same along both axes.
        if (fh, fw) == (4, 4) and up[0] == up[1] and down[0] == down[1] and up[0] * down[0] <= 2:
            for inp in (x, x_strided):
                fixed = _cuda.upfirdn2d_cuda(inp, *args, path=3)
                _assert_close(fixed, general, dtype, f"fixed: up={up} down={down}")
            fixed_cases += 1
        else:
            with pytest.raises(RuntimeError, match="fixed tiled variant unavailable"):
                _cuda.upfirdn2d_cuda(x, *args, path=3)
    assert fixed_cases == 3  # up=2; down=2; neither


def test_upfirdn2d_kernel_filters_are_prepared_once_per_filter_version(kernel_device):
    """The flipped, scaled filter the kernel takes is cached on the filter tensor per (flip, gain,
    device), reused by later calls (the backward's included), and rebuilt after an in-place edit."""
    gen = torch.Generator(device=kernel_device).manual_seed(8)
    x = torch.randn([2, 3, 9, 9], generator=gen, device=kernel_device, requires_grad=True)
    f = torch.rand([4, 4], generator=gen, device=kernel_device)

    def kernel_entries():
        return {k: v for k, (_, v) in f._upfirdn2d_cache.items() if k[0] == "kernel"}

    y = _cuda.upfirdn2d_cuda(x, f, (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0)
    (first,) = kernel_entries()[("kernel", False, 4.0, x.device)]
    y.backward(torch.ones_like(y))  # the backward's call flips back: a second entry
    assert len(kernel_entries()) == 2
    again = _cuda.upfirdn2d_cuda(x.detach(), f, (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0)
    assert kernel_entries()[("kernel", False, 4.0, x.device)][0] is first
    _assert_close(again, _upfirdn2d_ref(x.detach(), f, (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0),
                  torch.float32, "cached filter")
    f.mul_(-1)  # in place: a new version, so the kernel must see the new taps
    edited = _cuda.upfirdn2d_cuda(x.detach(), f, (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0)
    _assert_close(edited, -again, torch.float32, "edited filter")
    assert kernel_entries()[("kernel", False, 4.0, x.device)][0] is not first


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.float64])
def test_upfirdn2d_channels_last_kernel(kernel_device, dtype):
    """Inputs whose channels are innermost take the channels-last kernel and give channels-last outputs:
    16-byte packs (8 channels: a whole number of packs for every dtype), one channel at a time (3
    channels; and a channel slice, misaligned with a stride of 9), for the resampling cases of
    UPFIRDN_CASES; values against the general kernel, gradients against the reference."""
    gen = torch.Generator(device=kernel_device).manual_seed(7)
    packed = torch.randn([2, 8, 13, 11], generator=gen, device=kernel_device).to(dtype)
    wide = torch.randn([2, 9, 13, 11], generator=gen, device=kernel_device).to(dtype)
    inputs = {"packed": packed.to(memory_format=torch.channels_last),
              "3 channels": packed[:, :3].contiguous(memory_format=torch.channels_last),
              "channel slice": wide.to(memory_format=torch.channels_last)[:, 1:]}
    assert inputs["channel slice"].stride(1) == 1 and inputs["channel slice"].data_ptr() % 16 != 0
    for (fshape, up, down, padding, flip), (name, x) in itertools.product(UPFIRDN_CASES, inputs.items()):
        f = torch.rand(fshape, generator=gen, device=kernel_device) + 0.1
        args = (f / f.sum(), up, down, padding, flip, 2.0)
        y = _cuda.upfirdn2d_cuda(x, *args)
        assert y.is_contiguous(memory_format=torch.channels_last), name
        _assert_close(y, _cuda.upfirdn2d_cuda(x.contiguous(), *args, path=1), dtype, f"{name} f={fshape} up={up}")
        _assert_close(_cuda.upfirdn2d_cuda(x, *args, path=4), y, dtype, f"{name}: forced path")
    x = inputs["packed"]
    f = torch.rand([4, 4], generator=gen, device=kernel_device)
    _compare(lambda t: _cuda.upfirdn2d_cuda(t, f, (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0),
             lambda t: _upfirdn2d_ref(t, f, (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0), [x], dtype,
             second_order=dtype != torch.float16)
    with pytest.raises(RuntimeError, match="channels-last path needs"):
        _cuda.upfirdn2d_cuda(x.contiguous(), *args, path=4)


def _tiny_networks(device, channel_base: int, channels_last: bool = False):
    """A seeded 16² StyleGAN2 G and D (z/w dim 16, at most 32 channels), fp32 on the GPU too;
    `channels_last`: the top two resolutions' blocks run channels-last (in fp32 all the same)."""
    from training import networks as nets

    torch.manual_seed(0)
    small = dict(channel_base=channel_base, channel_max=32, num_fp16_res=2 if channels_last else 0)
    G = nets.Generator(z_dim=16, c_dim=0, w_dim=16, img_resolution=16, img_channels=3,
                       mapping_kwargs=dict(num_layers=2),
                       synthesis_kwargs=dict(small, fp16_channels_last=channels_last)).to(device)
    D = nets.Discriminator(c_dim=0, img_resolution=16, img_channels=3, **small,
                           block_kwargs=dict(fp16_channels_last=channels_last)).to(device)
    for block in [*G.synthesis.children(), *D.children()]:  # fp32 even on the GPU, channels-last kept
        if getattr(block, "use_fp16", False):
            assert block.channels_last == channels_last
            block.use_fp16 = False
    return G, D


@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "channels-last"])
def test_networks_match_reference_ops(kernel_device, monkeypatch, channels_last):
    """A tiny StyleGAN2 G and D with the kernels vs the reference ops: images, logits, the R1 and
    path-length gradients, and every parameter's gradient of a loss built from all of them; also with
    channels-last blocks, whose resampling filters take the channels-last upfirdn2d kernel."""
    G, D = _tiny_networks(kernel_device, channel_base=256, channels_last=channels_last)
    z = torch.randn(4, 16, device=kernel_device)
    probe = torch.randn(4, 3, 16, 16, device=kernel_device)
    params = [p for p in [*G.parameters(), *D.parameters()] if p.requires_grad]

    def run():
        ws = G.mapping(z, None).detach().requires_grad_()
        img = G.synthesis(ws, noise_mode="const")
        (pl_grad,) = torch.autograd.grad((img * probe).sum(), ws, create_graph=True)
        real = img.detach().requires_grad_()
        logits = D(real, None)
        (r1_grad,) = torch.autograd.grad(logits.sum(), real, create_graph=True)
        loss = logits.sum() + pl_grad.square().sum() + r1_grad.square().sum() + img.square().mean()
        grads = torch.autograd.grad(loss, params, allow_unused=True)
        return [img, logits, pl_grad, r1_grad, *(g for g in grads if g is not None)]

    monkeypatch.setenv("SPATIALGAN_OPS", "ref")
    expected = run()
    monkeypatch.setenv("SPATIALGAN_OPS", "cuda")  # kernels or an error, never a silent fallback
    got = run()
    assert _cuda._status == {"bias_act": None, "upfirdn2d": None}  # both kernels were selected
    assert len(got) == len(expected) > 4
    for i, (a, b) in enumerate(zip(got, expected)):
        _assert_close(a, b, torch.float32, f"tensor {i}")


def test_networks_hold_no_more_for_backward_than_reference_ops(kernel_device, monkeypatch):
    """Bytes autograd keeps for the backward of a G + D forward: the kernels must not add any (the fused
    lrelu keeps its output, which the next layer holds anyway, exactly as the reference does)."""
    G, D = _tiny_networks(kernel_device, channel_base=512)
    z = torch.randn(4, 16, device=kernel_device)

    def saved_bytes():
        storages = {}

        def pack(t):
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            D(G(z, None), None)
        return sum(storages.values())

    monkeypatch.setenv("SPATIALGAN_OPS", "ref")
    reference = saved_bytes()
    monkeypatch.setenv("SPATIALGAN_OPS", "cuda")
    saved_bytes()  # first use: the kernels' self-checks (which keep tensors of their own)
    kernels = saved_bytes()
    assert _cuda._status == {"bias_act": None, "upfirdn2d": None}
    assert 0 < kernels <= reference


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_kernels_beyond_one_grid():
    """More planes than a grid's z limit (65535, tiled upfirdn2d) and more elements than 65536 blocks of
    256 threads (general upfirdn2d, bias_act): the kernels' loops must cover the rest. Too many blocks
    to emulate on the CPU, hence GPU only."""
    gen = torch.Generator(device="cuda").manual_seed(4)
    x = torch.randn([1, 70000, 16, 16], generator=gen, device="cuda")
    f = torch.rand([4, 4], generator=gen, device="cuda")
    args = (f, (2, 2), (1, 1), (2, 1, 2, 1), False, 4.0)  # 32x32 outputs: 72M > 16.8M threads
    ref = _upfirdn2d_ref(x, *args)
    for path in (1, 2, 3):
        _assert_close(_cuda.upfirdn2d_cuda(x, *args, path=path), ref, torch.float32, f"upfirdn2d path {path}")
    x_cl = x.to(memory_format=torch.channels_last)  # 70000 * 32 * 32 / 4 packs: again beyond one grid
    _assert_close(_cuda.upfirdn2d_cuda(x_cl, *args, path=4), ref, torch.float32, "upfirdn2d channels-last")
    b = torch.randn([70000], generator=gen, device="cuda")
    _assert_close(_cuda.bias_act_cuda(x, b, 1, "lrelu", 0.2, 2 ** 0.5, 1.0),
                  _bias_act_ref(x, b, 1, "lrelu", 0.2, 2 ** 0.5, 1.0), torch.float32, "bias_act")


@pytest.mark.slow
def test_bias_act_fast_division_is_exact(emulated_ops):
    """The multiply-high division bias_act uses for its bias index, checked on the CPU through the
    emulator build: edge divisors and dividends, and random ones, up to 2^31 - 1."""
    fast_divmod = emulated_ops.fast_divmod
    top = 2**31 - 1
    divisors = [1, 2, 3, 5, 7, 31, 64, 255, 256, 257, 4095, 65535, 65536, 65537, 2**20 + 3, 2**30 - 1, 2**30,
                2**30 + 1, top - 1, top]
    gen = torch.Generator().manual_seed(5)
    for d in divisors:
        edges = torch.tensor([0, 1, d - 1, d, d + 1, 2 * d - 1, 2 * d, top - 1, top, top - top % d, top - top % d - 1])
        n = torch.cat([edges.clamp(0, top), torch.randint(0, top + 1, [20000], generator=gen)])
        q, r = fast_divmod(n, d)
        assert torch.equal(q, n // d) and torch.equal(r, n % d), f"divisor {d}"


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_upfirdn2d_channels_last_64bit_indices():
    """More than 2^31 output elements (3 channels: one per thread) take the channels-last kernel's 64-bit
    index path; a 1x1 filter makes the exact answer 2 * x everywhere. ~9 GB of GPU memory."""
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs 24 GB of GPU memory")
    x = torch.empty([1, 27000, 27000, 3], device="cuda", dtype=torch.float16).uniform_(-1, 1).permute(0, 3, 1, 2)
    assert x.numel() > 2**31 and x.is_contiguous(memory_format=torch.channels_last)
    y = _cuda.upfirdn2d_cuda(x, torch.ones([1, 1], device="cuda"), (1, 1), (1, 1), (0, 0, 0, 0), False, 2.0)
    assert y.is_contiguous(memory_format=torch.channels_last)
    for r in range(0, 27000, 3000):
        assert torch.equal(y[:, :, r:r + 3000], x[:, :, r:r + 3000] * 2), f"rows from {r}"
    del x, y


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_bias_act_64bit_indices():
    """A tensor of more than 2^31 elements takes bias_act's 64-bit index path: check its first and
    last rows (bias index = channel) against the reference on the same slices. ~9 GB of GPU memory."""
    if torch.cuda.get_device_properties(0).total_memory < 24 * 2**30:
        pytest.skip("needs 24 GB of GPU memory")
    gen = torch.Generator(device="cuda").manual_seed(6)
    x = torch.randn([2, 4, 16384, 16400], generator=gen, device="cuda", dtype=torch.float16)
    assert x.numel() > 2**31
    b = torch.randn([4], generator=gen, device="cuda", dtype=torch.float16)
    y = _cuda.bias_act_cuda(x, b, 1, "lrelu", 0.2, 2 ** 0.5, None)
    for rows in (slice(0, 2), slice(-2, None)):
        _assert_close(y[:, :, rows], _bias_act_ref(x[:, :, rows], b, 1, "lrelu", 0.2, 2 ** 0.5, None),
                      torch.float16, f"rows {rows}")
