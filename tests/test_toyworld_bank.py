"""The toy prior's bank of renders: cached on disk, deterministic from its seed, equal to the renderer."""
import pytest
import torch

from dreamdpo.toyworld.bank import BankConfig, build_bank, cache_dir
from dreamdpo.toyworld.render import render
from dreamdpo.toyworld.vocab import parse_prompt

SMALL = dict(n_cameras=2, resolution=16, supersample=1)  # the smallest bank that tests each rule


def test_second_build_loads_the_cache_and_equals_the_first(tmp_path):
    cfg = BankConfig(**SMALL)
    first = build_bank(cfg, cache=tmp_path, progress=False)
    assert not first.loaded_from_cache and first.path.exists() and first.path.parent == tmp_path
    second = build_bank(cfg, cache=tmp_path, progress=False)
    assert second.loaded_from_cache
    assert torch.equal(first.pair.shaded, second.pair.shaded)
    assert torch.equal(first.cameras.azimuth, second.cameras.azimuth)


@pytest.mark.slow  # builds the bank two or three times
def test_deterministic_from_seed_and_keyed_by_config(tmp_path):
    a = build_bank(BankConfig(**SMALL), cache=tmp_path / "a", progress=False)
    b = build_bank(BankConfig(**SMALL), cache=tmp_path / "b", progress=False)
    c = build_bank(BankConfig(**SMALL, seed=1), cache=tmp_path / "a", progress=False)
    assert torch.equal(a.single.background, b.single.background)
    assert not c.loaded_from_cache and c.path != a.path
    assert not torch.equal(a.cameras.azimuth, c.cameras.azimuth)


@pytest.mark.slow  # builds the bank two or three times
def test_damaged_cache_is_rebuilt(tmp_path):
    bank = build_bank(BankConfig(**SMALL), cache=tmp_path, progress=False)
    bank.path.write_bytes(b"not a torch file")
    again = build_bank(BankConfig(**SMALL), cache=tmp_path, progress=False)
    assert not again.loaded_from_cache and torch.equal(again.single.shaded, bank.single.shaded)


def test_cache_location_follows_dreamdpo_home(monkeypatch, tmp_path):
    monkeypatch.setenv("DREAMDPO_HOME", str(tmp_path))
    assert cache_dir() == tmp_path / "toyworld"


def test_bank_images_are_the_renders_at_the_bank_cameras(tmp_path):
    bank = build_bank(BankConfig(**SMALL), cache=tmp_path, progress=False)
    cam = bank.cameras[1]
    pair_index = bank.pair.shapes.index(("cube", "torus"))
    img = bank.images(2, 1, pair_index, ["red", "blue"])
    ref = render(parse_prompt("a red cube and a blue torus"), cam, 16, 16, supersample=1)[0]
    assert torch.allclose(img, ref, atol=2e-3)  # float16 storage
