"""The 2-D MLP: a batch that shares one time (every sampler step) gives what each row would alone."""

import torch

from pipeline.nets.mlp import MLP


def test_shared_time_matches_per_row_times():
    torch.manual_seed(0)
    net = MLP(2, hidden=32, depth=2, time_embedding=16).eval()
    x = torch.randn(64, 2)
    t = torch.full((64,), 0.37)
    with torch.no_grad():
        shared = net(x, t)                      # one time for the batch: the time path runs on one row
        rows = torch.cat([net(x[i:i + 1], t[i:i + 1]) for i in range(len(x))])
        mixed_t = t.clone()
        mixed_t[0] = 0.9                        # distinct times: the time path runs per row
        mixed = net(x, mixed_t)
    torch.testing.assert_close(shared, rows, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(mixed[1:], shared[1:], rtol=1e-5, atol=1e-6)
    assert not torch.allclose(mixed[0], shared[0])


def test_shared_time_keeps_gradients_for_the_divergence():
    net = MLP(2, hidden=16, depth=1, time_embedding=8)
    x = torch.randn(8, 2, requires_grad=True)
    out = net(x, torch.full((8,), 0.5))
    (grad,) = torch.autograd.grad(out[:, 0].sum(), x)
    assert grad.shape == x.shape and grad.abs().sum() > 0
