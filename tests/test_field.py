"""Field: the hash encoding against a plain reference, the blob bias, normals, parameter groups, backgrounds."""
from __future__ import annotations

import torch
import torch.nn.functional as F

from dreamdpo.field import PRIMES, EnvMapBackground, FieldConfig, HashGrid, NeRFField, SolidBackground


def tiny_field(**kw) -> NeRFField:
    cfg = dict(n_levels=2, log2_hashmap_size=8, max_resolution=32, hidden=8)
    return NeRFField(FieldConfig(**{**cfg, **kw}))


def reference_encoding(g: HashGrid, u: torch.Tensor) -> torch.Tensor:
    """One point, one level, one corner at a time: the textbook multi-resolution hash encoding."""
    table_size = g.table_mask + 1
    out = []
    for p in u.tolist():
        feats = []
        for lvl in range(g.n_levels):
            r = int(g.resolution[lvl])
            pos = [min(max(c, 0.0), 1.0) * r for c in p]
            base = [min(int(c // 1), r - 1) for c in pos]
            acc = torch.zeros(g.n_features)
            for corner in range(8):
                bits = [(corner >> k) & 1 for k in range(3)]
                v = [b + d for b, d in zip(base, bits)]
                w = 1.0
                for c, b, d in zip(pos, base, bits):
                    w *= (c - b) if d else (1 - (c - b))
                if (r + 1) ** 3 <= table_size:
                    i = v[0] + v[1] * (r + 1) + v[2] * (r + 1) ** 2
                else:
                    i = ((v[0] * PRIMES[0]) ^ (v[1] * PRIMES[1]) ^ (v[2] * PRIMES[2])) % table_size
                acc = acc + w * g.table[int(g.offset[lvl]) + i]
            feats.append(acc)
        out.append(torch.cat(feats))
    return torch.stack(out)


def test_hash_grid_matches_the_reference_on_dense_and_hashed_levels():
    torch.manual_seed(0)
    g = HashGrid(n_levels=4, n_features=2, log2_hashmap_size=10, base_resolution=4, max_resolution=64)
    assert 0 < g.n_dense < 4  # both kinds of level are exercised
    with torch.no_grad():
        g.table.copy_(torch.randn_like(g.table))
    u = torch.cat([torch.rand(20, 3), torch.tensor([[0.0, 0.0, 0.0], [1.0, 1.0, 1.0], [1.2, -0.1, 0.5]])])
    assert torch.allclose(g(u), reference_encoding(g, u).detach(), atol=1e-5)


def test_hash_grid_is_trilinear_on_a_dense_level():
    g = HashGrid(n_levels=1, n_features=2, log2_hashmap_size=19, base_resolution=4, max_resolution=4)
    with torch.no_grad():
        g.table.copy_(torch.randn_like(g.table))
    corner = torch.tensor([[0.25, 0.5, 0.75]])  # grid vertex (1, 2, 3) of a 4³ grid: exact table entry
    assert torch.allclose(g(corner)[0], g.table[1 + 2 * 5 + 3 * 25], atol=1e-6)
    mid = torch.tensor([[0.125, 0.5, 0.75]])  # halfway between vertices (0,2,3) and (1,2,3)
    want = 0.5 * (g.table[0 + 2 * 5 + 3 * 25] + g.table[1 + 2 * 5 + 3 * 25])
    assert torch.allclose(g(mid)[0], want, atol=1e-6)


def test_table_gradient_equals_embedding_backward_bit_for_bit_and_repeats(monkeypatch):
    """The custom gather's index_add_ backward is reproducible and sums exactly like F.embedding's."""
    import dreamdpo.field as field_module

    torch.manual_seed(0)
    g = HashGrid(n_levels=4, n_features=2, log2_hashmap_size=9, base_resolution=4, max_resolution=64)
    u, up = torch.rand(5000, 3), torch.randn(5000, g.out_dim)

    def table_grad():
        g.zero_grad()
        (g(u) * up).sum().backward()
        return g.table.grad.clone()

    first, second = table_grad(), table_grad()
    monkeypatch.setattr(field_module, "_gather_rows", lambda table, idx: F.embedding(idx, table))
    assert torch.equal(first, second) and torch.equal(first, table_grad())


def test_blob_bias_sets_the_initial_shape():
    f = tiny_field()
    with torch.no_grad():
        centre, edge = f.density(torch.zeros(1, 3)), f.density(torch.tensor([[0.9, 0.0, 0.0]]))
    assert centre > 9.0 and edge < 0.1  # softplus(10 + small) vs softplus(-8 + small)
    flat = tiny_field(density_bias="none")
    assert torch.equal(flat.density_bias(torch.randn(7, 3)), torch.zeros(7))


def test_forward_shapes_and_ranges():
    f = tiny_field()
    sigma, rgb = f(torch.rand(11, 3) * 2 - 1)
    assert sigma.shape == (11,) and rgb.shape == (11, 3)
    assert (sigma >= 0).all() and (rgb > 0).all() and (rgb < 1).all()


def test_blob_normals_point_outward_and_train_through_create_graph():
    torch.manual_seed(0)
    f = tiny_field().eval()
    x = F.normalize(torch.randn(64, 3), dim=-1) * 0.4
    _, _, n = f.forward_with_normals(x)
    assert ((n * x).sum(-1) > 0).float().mean() > 0.95  # the blob's density falls outward
    assert torch.allclose(n.norm(dim=-1), torch.ones(64), atol=1e-4)
    f.train()
    _, _, n = f.forward_with_normals(x)
    n[:, 0].sum().backward()  # a loss on normals alone (the orientation loss) reaches the grid
    assert f.encoding.table.grad is not None and f.encoding.table.grad.abs().sum() > 0


def test_param_groups_cover_every_parameter_once():
    f = tiny_field()
    groups = f.param_groups(lr_grid=0.1, lr_mlp=0.01)
    ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(ids) == sorted(id(p) for p in f.parameters()) and len(ids) == len(set(ids))
    assert {g["name"]: g["lr"] for g in groups} == {"grid": 0.1, "mlp": 0.01}


def test_env_map_augmentation_is_seeded_and_only_in_training():
    torch.manual_seed(0)
    bg = EnvMapBackground(random_solid_prob=1.0)
    dirs = F.normalize(torch.randn(2, 5, 3), dim=-1)
    a = bg(dirs, generator=torch.Generator().manual_seed(3))
    b = bg(dirs, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b) and a.shape == (2, 5, 3)
    assert torch.equal(a, a[0, 0].expand_as(a))  # one solid colour for the whole batch
    bg.eval()
    neural = bg(dirs)
    assert not torch.allclose(neural, neural[0, 0].expand_as(neural))  # the MLP varies with direction
    bg.train()
    bg.random_solid_prob = 0.0
    assert torch.equal(bg(dirs, generator=torch.Generator().manual_seed(3)), neural)


def test_solid_background_is_its_colour_everywhere():
    out = SolidBackground((0.1, 0.2, 0.3))(torch.randn(4, 4, 3))
    assert out.shape == (4, 4, 3) and torch.allclose(out, torch.tensor([0.1, 0.2, 0.3]).expand(4, 4, 3))
