"""Gated delta rule: every path against the token-by-token reference, and that against an independent
per-token loop written here from the paper's math (S as V×K) and against fla's own naive reference."""

from __future__ import annotations

import os

import pytest
import torch
import torch.nn.functional as F

from sleepify.ops.gated_delta_rule import BACKENDS, gated_delta_rule, l2norm
from tests.conftest import fla_interpreter_ok, requires_cuda

NAMES = ("q", "k", "v", "g", "beta", "h0")


def make_inputs(B=2, T=20, H=2, HV=4, K=16, V=8, *, dtype=torch.float32, h0=True, l2=True, device="cpu"):
    q = torch.randn(B, T, H, K, dtype=torch.float64)
    k = torch.randn(B, T, H, K, dtype=torch.float64)
    if not l2:  # keep the un-normalised recurrence well conditioned: ||k|| around 1
        q, k = q * K**-0.5, k * K**-0.5
    v = torch.randn(B, T, HV, V, dtype=torch.float64)
    g = F.logsigmoid(torch.randn(B, T, HV, dtype=torch.float64) + 2.0)
    beta = torch.rand(B, T, HV, dtype=torch.float64)
    state = torch.randn(B, HV, K, V, dtype=torch.float64) * 0.5 if h0 else None
    tensors = [q, k, v, g, beta, state]
    return [None if x is None else x.to(device=device, dtype=dtype).requires_grad_() for x in tensors]


def run(inputs, backend, l2=True, **kw):
    q, k, v, g, beta, h0 = inputs
    return gated_delta_rule(
        q, k, v, g, beta, initial_state=h0, output_final_state=True, use_qk_l2norm=l2, backend=backend, **kw
    )


def outputs_and_grads(inputs, backend, l2=True, seed=1, **kw):
    """Forward, then backward of a random projection of (o, final state); returns o, state and all grads."""
    for x in inputs:
        if x is not None:
            x.grad = None
    o, s = run(inputs, backend, l2, **kw)
    gen = torch.Generator().manual_seed(seed)
    w_o = torch.randn(o.shape, generator=gen, dtype=torch.float64).to(o)
    w_s = torch.randn(s.shape, generator=gen, dtype=torch.float64).to(s)
    ((o * w_o).sum() + (s * w_s).sum()).backward()
    grads = {n: x.grad for n, x in zip(NAMES, inputs, strict=True) if x is not None}
    return o.detach(), s.detach(), grads


def clone_inputs(inputs, dtype=None):
    return [None if x is None else x.detach().to(dtype or x.dtype).clone().requires_grad_() for x in inputs]


def assert_close(a, b, tol, what):
    err = (a.double() - b.double()).abs().max().item()
    assert err <= tol, f"{what}: max abs error {err:.3e} > {tol:.0e}"


def assert_all_close(res_a, res_b, tol):
    o_a, s_a, g_a = res_a
    o_b, s_b, g_b = res_b
    assert_close(o_a, o_b, tol, "output")
    assert_close(s_a, s_b, tol, "final state")
    assert g_a.keys() == g_b.keys()
    for name in g_a:
        assert_close(g_a[name], g_b[name], tol, f"grad {name}")


# ----------------------------------------------------------------------------------------------------------
# chunk vs recurrent


CASES = [
    # T, chunk_size, H, HV, h0, l2
    (1, 64, 2, 4, True, True),
    (7, 64, 2, 4, True, True),
    (64, 64, 2, 4, True, True),
    (100, 64, 2, 4, True, True),
    (130, 64, 2, 4, True, False),
    (130, 64, 1, 1, False, True),
    (100, 16, 2, 4, False, False),
    (100, 32, 2, 2, True, True),
    (37, 10, 1, 3, True, False),
]


@pytest.mark.parametrize("T,chunk_size,H,HV,h0,l2", CASES)
def test_chunk_matches_recurrent(T, chunk_size, H, HV, h0, l2):
    inputs = make_inputs(T=T, H=H, HV=HV, h0=h0, l2=l2)
    ref = outputs_and_grads(clone_inputs(inputs, torch.float64), "recurrent", l2)  # float64 reference
    got = outputs_and_grads(inputs, "chunk", l2, chunk_size=chunk_size)  # float32, as used in training
    assert got[0].dtype == torch.float32 and got[1].dtype == torch.float32
    assert_all_close(got, ref, 1e-5)
    # in float64 the two forms agree to rounding: catches errors hidden by the float32 tolerance
    got64 = outputs_and_grads(clone_inputs(inputs, torch.float64), "chunk", l2, chunk_size=chunk_size)
    assert_all_close(got64, ref, 1e-10)


def test_auto_on_cpu_matches_recurrent():
    for T in (1, 9):
        inputs = make_inputs(T=T, dtype=torch.float64)
        assert_all_close(outputs_and_grads(inputs, "auto"), outputs_and_grads(inputs, "recurrent"), 1e-10)


def test_bf16_inputs_keep_dtypes():
    inputs = make_inputs(T=10, dtype=torch.bfloat16)
    inputs[5] = inputs[5].detach().float().requires_grad_()  # states are float32
    o, s = run(inputs, "chunk")
    assert o.dtype == torch.bfloat16 and s.dtype == torch.float32 and o.shape == (2, 10, 4, 8)
    o_ref, s_ref = run(clone_inputs(inputs, torch.float64), "recurrent")
    assert_close(o, o_ref, 2e-2, "bf16 output")
    assert_close(s, s_ref, 1e-5, "bf16 final state")  # computed in float32 from the same bf16 inputs


def test_no_final_state_unless_asked():
    q, k, v, g, beta, _ = make_inputs(T=5)
    for backend in ("chunk", "recurrent"):
        o, s = gated_delta_rule(q, k, v, g, beta, backend=backend)
        assert s is None and o.shape == (2, 5, 4, 8)


# ----------------------------------------------------------------------------------------------------------
# the recurrent reference vs independent references


def paper_loop(q, k, v, g, beta, h0, scale, l2):
    """Literal per-token loop, paper form: S ∈ R^{V×K}, S_t = α S (I − β k kᵀ) + β v kᵀ, o_t = S q_t."""
    B, T, H, K = q.shape
    HV, V = v.shape[2:]
    o = torch.zeros(B, T, HV, V, dtype=torch.float64)
    S_final = torch.zeros(B, HV, K, V, dtype=torch.float64)
    eye = torch.eye(K, dtype=torch.float64)
    for b in range(B):
        for hv in range(HV):
            h = hv // (HV // H)
            S = h0[b, hv].T.clone() if h0 is not None else torch.zeros(V, K, dtype=torch.float64)
            for t in range(T):
                qt, kt = q[b, t, h], k[b, t, h]
                if l2:
                    qt = qt / torch.sqrt((qt * qt).sum() + 1e-6)
                    kt = kt / torch.sqrt((kt * kt).sum() + 1e-6)
                alpha, bt = torch.exp(g[b, t, hv]), beta[b, t, hv]
                S = alpha * S @ (eye - bt * torch.outer(kt, kt)) + bt * torch.outer(v[b, t, hv], kt)
                o[b, t, hv] = S @ (scale * qt)
            S_final[b, hv] = S.T
    return o, S_final


@pytest.mark.parametrize("l2,h0,scale", [(True, True, None), (False, False, 0.3), (True, False, 1.0)])
def test_recurrent_matches_paper_form(l2, h0, scale):
    inputs = [
        None if x is None else x.detach() for x in make_inputs(B=2, T=9, H=2, HV=4, K=5, V=3, h0=h0, l2=l2)
    ]
    inputs = [None if x is None else x.double() for x in inputs]
    q, k, v, g, beta, state = inputs
    o, s = gated_delta_rule(
        q,
        k,
        v,
        g,
        beta,
        scale=scale,
        initial_state=state,
        output_final_state=True,
        use_qk_l2norm=l2,
        backend="recurrent",
    )
    o_ref, s_ref = paper_loop(q, k, v, g, beta, state, 5**-0.5 if scale is None else scale, l2)
    assert_close(o, o_ref, 1e-12, "output")
    assert_close(s, s_ref, 1e-12, "final state")


def test_recurrent_matches_fla_naive():
    fla_gdr = pytest.importorskip("fla.ops.gated_delta_rule")
    q, k, v, g, beta, h0 = make_inputs(B=2, T=23, H=2, HV=4, K=16, V=8)
    o, s = run([q, k, v, g, beta, h0], "recurrent")
    # fla's naive: no GVA, no l2norm, argument order (q, k, v, beta, g)
    qn, kn = (l2norm(x.detach()).repeat_interleave(2, dim=2) for x in (q, k))
    o_ref, s_ref = fla_gdr.naive_recurrent_gated_delta_rule(
        qn,
        kn,
        v.detach(),
        beta.detach(),
        g.detach(),
        scale=16**-0.5,
        initial_state=h0.detach(),
        output_final_state=True,
    )
    assert_close(o, o_ref, 1e-5, "output")
    assert_close(s, s_ref, 1e-5, "final state")


def test_l2norm_is_fla_convention():
    x = torch.tensor([[3.0, 4.0], [0.0, 0.0], [1e-4, 0.0]], dtype=torch.float64)
    expected = x / torch.sqrt((x * x).sum(-1, keepdim=True) + 1e-6)
    assert_close(l2norm(x), expected, 1e-15, "l2norm")
    assert not torch.allclose(l2norm(x), F.normalize(x, dim=-1))  # differs for small norms
    assert l2norm(x.to(torch.bfloat16)).dtype == torch.bfloat16


# ----------------------------------------------------------------------------------------------------------
# chaining windows through the state


@pytest.mark.parametrize("backend", ["chunk", "recurrent"])
def test_chained_windows_equal_one_pass(backend):
    inputs = make_inputs(T=90, dtype=torch.float64)
    full = outputs_and_grads(inputs, backend, chunk_size=16)

    windowed = clone_inputs(inputs)
    q, k, v, g, beta, state = windowed
    outs, start = [], 0
    for length in (30, 1, 45, 14):
        sl = slice(start, start + length)
        o, state = gated_delta_rule(
            q[:, sl],
            k[:, sl],
            v[:, sl],
            g[:, sl],
            beta[:, sl],
            initial_state=state,
            output_final_state=True,
            backend=backend,
            chunk_size=16,
        )
        outs.append(o)
        start += length
    assert start == 90
    o = torch.cat(outs, dim=1)
    gen = torch.Generator().manual_seed(1)  # the same projection as outputs_and_grads
    w_o = torch.randn(o.shape, generator=gen, dtype=torch.float64)
    w_s = torch.randn(state.shape, generator=gen, dtype=torch.float64)
    ((o * w_o).sum() + (state * w_s).sum()).backward()
    grads = {n: x.grad for n, x in zip(NAMES, windowed, strict=True)}
    assert_all_close((o.detach(), state.detach(), grads), full, 1e-10)


# ----------------------------------------------------------------------------------------------------------
# errors


def test_unknown_backend_names_the_valid_ones():
    inputs = make_inputs(T=4)
    with pytest.raises(ValueError, match="gated_delta_rule: unknown backend 'cunk'") as err:
        run(inputs, "cunk")
    for name in BACKENDS:
        assert name in str(err.value)


def test_value_heads_must_be_multiple_of_qk_heads():
    with pytest.raises(ValueError, match=r"value heads \(3\) must be a multiple .* q/k heads \(2\)"):
        run(make_inputs(T=4, H=2, HV=3), "chunk")


def test_bad_shapes():
    q, k, v, g, beta, h0 = make_inputs(T=4)
    with pytest.raises(ValueError, match="beta must be"):
        gated_delta_rule(q, k, v, g, beta[:, :2])
    with pytest.raises(ValueError, match="initial_state must be"):
        gated_delta_rule(q, k, v, g, beta, initial_state=h0[:, :1])


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error path")
def test_fla_backends_refuse_cpu_tensors(monkeypatch):
    inputs = make_inputs(T=4)
    with pytest.raises(RuntimeError, match="'fla_chunk' .* needs CUDA tensors"):
        run(inputs, "fla_chunk")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(RuntimeError, match="'fla_recurrent' .* needs CUDA tensors"):
        run(inputs, "fla_recurrent")


# ----------------------------------------------------------------------------------------------------------
# fla backends


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="needs the Triton interpreter")
@fla_interpreter_ok
def test_fla_recurrent_under_triton_interpreter():
    pytest.importorskip("fla.ops.gated_delta_rule")
    inputs = [x.detach() for x in make_inputs(B=1, T=12, H=1, HV=2, K=16, V=16)]
    with torch.no_grad():
        o, s = run(inputs, "fla_recurrent")
        o_ref, s_ref = run(inputs, "recurrent")
    assert o.shape == o_ref.shape and s.dtype == torch.float32
    assert_close(o, o_ref, 1e-5, "output")
    assert_close(s, s_ref, 1e-5, "final state")


@requires_cuda
@pytest.mark.parametrize("h0", [True, False])
def test_fla_chunk_matches_chunk_cuda(h0):
    inputs = make_inputs(B=2, T=150, H=2, HV=4, K=64, V=64, h0=h0, device="cuda")
    ref = outputs_and_grads(clone_inputs(inputs), "chunk")
    got = outputs_and_grads(inputs, "fla_chunk")
    assert_all_close(got, ref, 2e-3)  # includes dh0 when h0 is given


@requires_cuda
def test_fla_recurrent_matches_recurrent_cuda():
    inputs = [x.detach() for x in make_inputs(B=2, T=40, H=2, HV=4, K=64, V=64, device="cuda")]
    with torch.no_grad():
        o, s = run(inputs, "fla_recurrent")
        o_ref, s_ref = run(inputs, "recurrent")
    assert_close(o, o_ref, 1e-4, "output")
    assert_close(s, s_ref, 1e-4, "final state")
